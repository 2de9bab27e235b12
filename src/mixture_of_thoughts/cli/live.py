"""Branches growing live on a terminal (``rich``): one panel per branch, refreshed as tokens arrive.

Used by ``mot think`` when standard output is a terminal and ``--json`` is not given; piped output
stays plain text. The callback receives every decoding step (``generation.decoder.decode``'s
``on_token``) and re-decodes each live row's text, which is cheap next to a model step.
"""

from __future__ import annotations

import contextlib
import sys


def wanted(args) -> bool:
    return not args.json and sys.stdout.isatty()


def _console():
    from rich.console import Console

    return Console()


def last_texts(on_token) -> list[str]:
    """The texts shown so far by a ``live_branches`` callback."""
    return on_token.texts()


@contextlib.contextmanager
def live_branches(detokenize, n_rows: int, labels: list[str]):
    """Yields an ``on_token(i, tokens, done)`` callback that shows each row's text in its own panel."""
    from rich.columns import Columns
    from rich.live import Live
    from rich.panel import Panel

    rows: list[list[int]] = [[] for _ in range(n_rows)]
    finished = [False] * n_rows

    console = _console()

    def render():
        width = max(30, (console.width - 4) // min(n_rows, 4) - 2)
        return Columns([Panel(detokenize(rows[b]) or "…", title=labels[b] + (" ✓" if finished[b] else ""),
                              width=width) for b in range(n_rows)])

    with Live(render(), console=console, refresh_per_second=8, transient=True) as live:
        def on_token(i, tokens, done):
            for b, (t, d) in enumerate(zip(tokens.tolist(), done.tolist(), strict=True)):
                if not finished[b]:
                    rows[b].append(t)
                finished[b] = finished[b] or d
            live.update(render())

        on_token.texts = lambda: [detokenize(r) for r in rows]
        yield on_token
