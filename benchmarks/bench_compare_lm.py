"""One setting of ``mot compare lm`` on SmolLM2, its padded decode through the lean step or the model's forward.

    python benchmarks/bench_compare_lm.py             # 8 prompts x 8 branches x 32 tokens, 3 settings
    python benchmarks/bench_compare_lm.py --pairs 2   # two alternating pairs a setting

A setting's rows (8 prompts x 8 seeds, left-padded in one pass) decode through
``hf.fast.PaddedLean`` (static cache, prepacked weights, each row's own positions and key mask) or,
as before it, through ``hf.vary.PaddedLM`` (the model's own forward). Everything else is the
comparison's own code (``experiments.compare_lm._run_contender``: generation, reference NLL, MiniLM
metrics). The two sides alternate, and the texts of the two are compared: the float32 lean path is
meant to keep every text.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table  # noqa: E402

from mixture_of_thoughts.experiments import compare_lm as C  # noqa: E402
from mixture_of_thoughts.hf import fast  # noqa: E402
from mixture_of_thoughts.hf.generate import prompt_ids, uses_chat  # noqa: E402
from mixture_of_thoughts.hf.registry import load_pretrained  # noqa: E402
from mixture_of_thoughts.metrics.semantic import get_embedder  # noqa: E402

SETTINGS = {
    "sampling, T = 1": C.Contender("temperature", "temperature", temperature=1.0),
    "primary thought (greedy, persistent, c = 2, all layers)": C.PRIMARY,
    "repel (held-out primary; beams of one prompt)": C.HELDOUT_PRIMARY,
}


@contextlib.contextmanager
def model_forward():
    """The padded decode through the model's own forward (the lean step refused, as before it existed)."""
    real = fast.fast_blocker
    fast.fast_blocker = lambda model: "benchmark: the model's own forward"
    try:
        yield
    finally:
        fast.fast_blocker = real


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8)
    args = ap.parse_args(argv)
    cfg = C.LMCompareConfig(model="smollm2", limit=args.prompts, seeds=1)
    prompts = C.load_prompts(cfg.prompts, cfg.limit)
    ref, tok, _ = load_pretrained("smollm2")
    ref.eval()
    chat = uses_chat(tok, None)
    ids_list = [prompt_ids(tok, p["prompt"], chat) for p in prompts]
    embedder = get_embedder()
    dev = torch.device("cpu")
    rows = []
    for name, c in SETTINGS.items():
        model = ref if not C._graft_key(c) else C._graft_copy(ref, c, cfg).eval()
        times = {"model's forward": [], "lean": []}
        texts = {}
        for _ in range(args.pairs):
            for side in times:
                ctx = model_forward() if side == "model's forward" else contextlib.nullcontext()
                with ctx:
                    t = time.perf_counter()
                    res = C._run_contender(c, model, ref, tok, prompts, ids_list, cfg, embedder, dev)
                    times[side].append(time.perf_counter() - t)
                texts[side] = [t for ex in res["example"] for t in ex]
        same = sum(a == b for a, b in zip(texts["model's forward"], texts["lean"], strict=True))
        before, after = min(times["model's forward"]), min(times["lean"])
        rows.append({"setting": name, "model's forward (s)": before, "lean (s)": after,
                     "speed-up": before / after, "same texts": f"{same} / {len(texts['lean'])}"})
        print(rows[-1], flush=True)
    print()
    print(table(rows, f"{machine()}; {args.prompts} prompts x {cfg.branches} branches x {cfg.max_new_tokens} "
                      f"tokens, best of {args.pairs}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
