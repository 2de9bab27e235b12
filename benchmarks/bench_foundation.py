"""Foundation benchmarks: training throughput, KV-cache generation speed, cpu-small quality.

    python benchmarks/bench_foundation.py            # all three (the quality run takes ~2 min)
    python benchmarks/bench_foundation.py --quick    # small versions, seconds

Needs the corpus: MOT_DATA_DIR=../shared/data or a cached/downloaded copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table, timeit  # noqa: E402

from mixture_of_thoughts.config import ModelConfig, TrainConfig, preset  # noqa: E402
from mixture_of_thoughts.generation.autoregressive import generate  # noqa: E402
from mixture_of_thoughts.models import Transformer  # noqa: E402
from mixture_of_thoughts.rng import RowNoise  # noqa: E402
from mixture_of_thoughts.training.trainer import train  # noqa: E402


def training_throughput(names: list[str], steps: int) -> list[dict]:
    rows = []
    for name in names:
        p = preset(name)
        with tempfile.TemporaryDirectory() as d:
            mc = ModelConfig.from_dict(p["model"])
            tc = TrainConfig.from_dict({**p["train"], "max_steps": steps + 5, "eval_interval": 5,
                                        "eval_batches": 1, "warmup_steps": 0})
            train("shakespeare", d, mc, tc)
            recs = [json.loads(line) for line in open(Path(d) / "metrics.jsonl")]
        # the first interval includes start-up; report the later ones
        tps = sum(r["tokens_per_s"] for r in recs[1:]) / max(1, len(recs) - 1)
        rows.append({"preset": name, "batch x block": f"{tc.batch_size} x {mc.block_size}", "steps": steps,
                     "tokens/s": tps})
    return rows


def kv_cache_speed(name: str, new_tokens: int, batch: int) -> list[dict]:
    """Eager KV cache, the compiled decode step, and recomputing the context, in turn (round-robin,
    median of 3 each); the compiled step is compiled before timing (its one-off cost is reported)."""
    cfg = ModelConfig.from_dict(preset(name)["model"])
    model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
    prompt = torch.zeros(batch, 1, dtype=torch.long)
    noise = RowNoise(list(range(batch)))
    t = time.perf_counter()
    compiled = generate(model, prompt, new_tokens, noise, compile=True)
    compile_s = time.perf_counter() - t
    ways = {"KV cache": dict(use_cache=True), "KV cache, compiled step": dict(compile=True),
            "recompute the context": dict(use_cache=False)}
    times = {w: [] for w in ways}
    for _ in range(3):
        for w, kw in ways.items():
            times[w].append(timeit(lambda kw=kw: generate(model, prompt, new_tokens, noise, **kw), repeat=1, warmup=0))
    tps = {w: batch * new_tokens / sorted(ts)[1] for w, ts in times.items()}
    same = torch.equal(generate(model, prompt, new_tokens, noise).tokens, compiled.tokens)
    rows = [{"model": name, "decoding": w, "new tokens": new_tokens, "batch": batch, "tokens/s": v,
             "x recompute": v / tps["recompute the context"]} for w, v in tps.items()]
    rows[1]["decoding"] += f" (compile {compile_s:.1f} s; same tokens as eager: {same})"
    return rows


def quality(steps: int) -> list[dict]:
    p = preset("cpu-small")
    with tempfile.TemporaryDirectory() as d:
        tc = TrainConfig.from_dict({**p["train"], "max_steps": steps, "eval_interval": steps, "eval_batches": 200})
        t = time.perf_counter()
        res = train("shakespeare", d, ModelConfig.from_dict(p["model"]), tc)
        wall = time.perf_counter() - t
    return [{"preset": "cpu-small", "steps": steps, "batch": tc.batch_size, "val loss (nats)": res.last_val_loss,
             "val bpc": res.last_val_loss / 0.6931471805599453, "wall s": wall, "goal": "<= 1.88 nats"}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print("machine:", machine())
    q = args.quick
    print(table(training_throughput(["cpu-small", "shakespeare-char"] if not q else ["cpu-small"], 10 if q else 30),
                "\nTraining throughput (forward + backward + AdamW), float32"))
    print(table(kv_cache_speed("shakespeare-char" if not q else "cpu-small", 64 if q else 256, 1),
                "\nGeneration: KV cache vs recomputing the context at every step"))
    print(table(quality(100 if q else 2000), "\nQuality: nanoGPT's CPU recipe (eval on 200 x 12 validation windows)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
