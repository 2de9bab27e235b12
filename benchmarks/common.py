"""Shared helpers for the benchmark scripts: machine description and table printing."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"python {platform.python_version()}")


def alternating_best(*fns, rounds: int = 3) -> list[float]:
    """The best wall time of each of ``fns`` (seconds), run in turn for ``rounds`` rounds after a warm-up
    of each: the machine's drift over minutes (10-20%) touches them all alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for j, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t)
    return best


def timeit(fn, *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def table(rows: list[dict], title: str) -> str:
    if not rows:
        return title
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns, in order; a missing cell is blank
    widths = {k: max(len(k), *(len(_fmt(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [title, "| " + " | ".join(k.ljust(widths[k]) for k in keys) + " |",
             "|" + "|".join("-" * (widths[k] + 2) for k in keys) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")).ljust(widths[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)
