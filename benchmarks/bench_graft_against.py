"""Grafted SmolLM2 branches: this checkout's package against another checkout's, in one process.

    python benchmarks/bench_graft_against.py --base ../old-checkout          # k = 2 and k = 1
    python benchmarks/bench_graft_against.py --base ../old-checkout --k 1 --rounds 5

The other checkout's ``src/mixture_of_thoughts`` is copied to a temporary folder under another package
name and imported beside this one (the package imports itself relatively), so that the plain model, the
graft made by the other code and the graft made by this code run in alternation in one process: the
machine's drift over minutes (10-20%) touches all three alike, where two processes would each see their
own. 8 branches x 64 new tokens of one prompt at creativity 1, all 30 layers, the lean float32 step,
every row the full length; the best of ``--rounds`` each. The two grafts' texts are compared and
printed as equal or not.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_best, machine, table  # noqa: E402

import mixture_of_thoughts.hf.generate as G  # noqa: E402
from mixture_of_thoughts.hf.graft import graft  # noqa: E402
from mixture_of_thoughts.hf.registry import load_pretrained  # noqa: E402

PROMPT = "Give me an idea for a short story about a lighthouse."


def import_other(checkout: Path, tmp: Path):
    """The other checkout's package, imported as ``mot_other``: its ``graft`` and ``think_hf``."""
    src = checkout / "src" / "mixture_of_thoughts"
    if not src.is_dir():
        src = checkout / "mixture_of_thoughts" if (checkout / "mixture_of_thoughts").is_dir() else checkout
    if not (src / "hf" / "graft.py").is_file():
        raise SystemExit(f"--base {checkout}: no mixture_of_thoughts package with hf/graft.py found there")
    shutil.copytree(src, tmp / "mot_other")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("mot_other.hf.graft"), importlib.import_module("mot_other.hf.generate")


def compare(k: int, n: int, rounds: int, other_graft, other_gen) -> dict:
    seeds = list(range(8))
    model, tok, _ = load_pretrained("smollm2")
    ours, tok_ours, _ = load_pretrained("smollm2")
    theirs, tok_theirs, _ = load_pretrained("smollm2")
    graft(ours, "all", k=k)
    other_graft.graft(theirs, "all", k=k)
    runs = {"plain": lambda: G.sample_branches(model, tok, PROMPT, seeds, max_new_tokens=n, chat=True),
            "base": lambda: other_gen.think_hf(theirs, tok_theirs, PROMPT, branch_seeds=seeds, creativity=1.0,
                                               max_new_tokens=n),
            "this": lambda: G.think_hf(ours, tok_ours, PROMPT, branch_seeds=seeds, creativity=1.0, max_new_tokens=n)}
    texts = {name: [b.text for b in runs[name]().branches] for name in ("base", "this")}
    best = alternating_best(*runs.values(), rounds=rounds)
    tps = {name: 8 * n / t for name, t in zip(runs, best, strict=True)}
    return {"graft": f"k = {k}", "plain tokens/s": tps["plain"], "base tokens/s": tps["base"],
            "this tokens/s": tps["this"], "base / plain": tps["base"] / tps["plain"],
            "this / plain": tps["this"] / tps["plain"], "this / base": tps["this"] / tps["base"],
            "same texts": texts["base"] == texts["this"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="another checkout (or its src folder)")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args(argv)
    print("machine:", machine())
    real = G.stop_token_ids
    with tempfile.TemporaryDirectory() as tmp:
        other_graft, other_gen = import_other(args.base.resolve(), Path(tmp))
        no_stop = lambda tokenizer, model=None: []  # noqa: E731  every row runs the full length
        G.stop_token_ids = other_gen.stop_token_ids = no_stop
        try:
            rows = [compare(k, args.tokens, args.rounds, other_graft, other_gen) for k in args.k]
        finally:
            G.stop_token_ids = real
    print(table(rows, f"\nGrafted (all 30 layers, c = 1, lean float32): 8 branches x {args.tokens} tokens, "
                      f"best of {args.rounds} in alternation"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
