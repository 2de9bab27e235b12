"""Parallel thoughts: N branches in one batched pass against N one-branch generations in turn.

    python benchmarks/bench_think.py            # 8 branches x 200 new tokens, cpu-small-mot
    python benchmarks/bench_think.py --quick

Also checks that each branch of the batch equals its one-branch regeneration (same seed). The
batched and one-at-a-time runs alternate (5 pairs): times are medians, the speed-up is the median of
the pairs' ratios, and "pairs" gives their range.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table, timeit  # noqa: E402

from mixture_of_thoughts.config import ModelConfig, preset  # noqa: E402
from mixture_of_thoughts.data.tokenizer import CharTokenizer  # noqa: E402
from mixture_of_thoughts.generation.autoregressive import think  # noqa: E402
from mixture_of_thoughts.models import Transformer  # noqa: E402


def run(branches: int, new_tokens: int, preset_name: str = "cpu-small-mot", repeat: int = 5) -> list[dict]:
    tok = CharTokenizer([chr(c) for c in range(32, 97)])  # 65 printable characters, as Tiny Shakespeare
    cfg = ModelConfig.from_dict({**preset(preset_name)["model"], "vocab_size": tok.vocab_size})
    model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
    seeds = list(range(1, branches + 1))
    crea = [0.5 + i / (branches - 1) for i in range(branches)]
    rows = []
    for compile in (False, True):
        kw = dict(max_new_tokens=new_tokens, creativity=(0.5, 1.5), compile=compile)

        def batched(kw=kw):
            return think(model, tok, "ROMEO:", branch_seeds=seeds, **kw)

        def one_by_one(kw=kw):
            pairs = zip(seeds, crea, strict=True)
            return [think(model, tok, "ROMEO:", branch_seeds=[s], **{**kw, "creativity": c}) for s, c in pairs]

        t = time.perf_counter()
        res, alone = batched(), one_by_one()  # the first calls compile (both shapes)
        first = time.perf_counter() - t
        # pairs (batched, one at a time) back to back: each ratio compares runs seconds apart, so a drift
        # of the machine's speed over minutes moves both sides of it
        pairs = [(timeit(batched, repeat=1, warmup=0), timeit(one_by_one, repeat=1, warmup=0))
                 for _ in range(repeat)]
        ratios = sorted(ts / tb for tb, ts in pairs)
        tb, ts = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        same = sum(a.branches[0].text == b.text for a, b in zip(alone, res.branches, strict=True))
        rows.append({"model": preset_name, "decode step": "compiled" if compile else "eager",
                     "batched s": tb, "batched tokens/s": branches * new_tokens / tb, "one at a time s": ts,
                     "speed-up": statistics.median(ratios), "pairs": f"{ratios[0]:.2f}-{ratios[-1]:.2f}",
                     "branches identical alone": f"{same}/{branches}", "first calls s": first})
        rows[-1]["texts"] = [b.text for b in res.branches]
    same_texts = rows[0].pop("texts") == rows[1].pop("texts")
    rows[1]["decode step"] += f" (same texts as eager: {same_texts})"
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print("machine:", machine())
    rows = run(8, 40 if args.quick else 200, repeat=2 if args.quick else 5)
    print(table(rows, "\nthink: 8 branches in one batched pass vs one at a time (KV cache, creativity 0.5..1.5)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
