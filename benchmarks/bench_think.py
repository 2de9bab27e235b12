"""Parallel thoughts: N branches in one batched pass against N one-branch generations in turn.

    python benchmarks/bench_think.py            # 8 branches x 200 new tokens, cpu-small-mot
    python benchmarks/bench_think.py --quick

Also checks that each branch of the batch equals its one-branch regeneration (same seed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table, timeit  # noqa: E402

from mixture_of_thoughts.config import ModelConfig, preset  # noqa: E402
from mixture_of_thoughts.data.tokenizer import CharTokenizer  # noqa: E402
from mixture_of_thoughts.generation.autoregressive import think  # noqa: E402
from mixture_of_thoughts.models import Transformer  # noqa: E402


def run(branches: int, new_tokens: int, preset_name: str = "cpu-small-mot") -> list[dict]:
    tok = CharTokenizer([chr(c) for c in range(32, 97)])  # 65 printable characters, as Tiny Shakespeare
    cfg = ModelConfig.from_dict({**preset(preset_name)["model"], "vocab_size": tok.vocab_size})
    model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
    kw = dict(max_new_tokens=new_tokens, creativity=(0.5, 1.5))
    seeds = list(range(1, branches + 1))
    batched = timeit(lambda: think(model, tok, "ROMEO:", branch_seeds=seeds, **kw), repeat=3)

    def one_by_one():
        crea = [0.5 + i / (branches - 1) for i in range(branches)]
        pairs = zip(seeds, crea, strict=True)
        return [think(model, tok, "ROMEO:", branch_seeds=[s], **{**kw, "creativity": c}) for s, c in pairs]

    sequential = timeit(one_by_one, repeat=3)
    res = think(model, tok, "ROMEO:", branch_seeds=seeds, **kw)
    alone = one_by_one()
    same = sum(a.branches[0].text == b.text for a, b in zip(alone, res.branches, strict=True))
    return [{"model": preset_name, "branches": branches, "new tokens": new_tokens,
             "batched s": batched, "one at a time s": sequential, "speed-up": sequential / batched,
             "branches identical alone": f"{same}/{branches}"}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print("machine:", machine())
    rows = run(8, 40 if args.quick else 200)
    print(table(rows, "\nthink: 8 branches in one batched pass vs one at a time (KV cache, creativity 0.5..1.5)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
