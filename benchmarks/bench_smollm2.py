"""SmolLM2-135M-Instruct offline: load time, generation speed, grafting's cost, batched branches.

    python benchmarks/bench_smollm2.py            # 8 branches x 64 new tokens
    python benchmarks/bench_smollm2.py --quick    # 8 x 16

1. Load time: the first load dequantises the GGUF and writes the cache (a fresh cache directory);
   the second reads the cached safetensors.
2. Generation, 8 branches x N new tokens in one batch (every row runs N tokens: EOS is not allowed to
   end a row early, so all contenders do the same work): our sampler on the plain model, transformers'
   ``model.generate(do_sample=True, num_return_sequences=8)``, and the grafted model at creativity 1
   (all 30 layers, and the upper half).
3. 8 branches in one batch vs 8 one-branch runs (grafted, all layers, creativity 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table  # noqa: E402

from mixture_of_thoughts.hf.generate import sample_branches, think_hf  # noqa: E402
from mixture_of_thoughts.hf.graft import graft  # noqa: E402
from mixture_of_thoughts.hf.registry import load_pretrained  # noqa: E402

PROMPT = "Give me an idea for a short story about a lighthouse."


def load_times() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("MOT_CACHE_DIR")
        os.environ["MOT_CACHE_DIR"] = d
        try:
            for what in ("first load (GGUF -> float32, writes the cache)", "second load (cached safetensors)"):
                t = time.perf_counter()
                load_pretrained("smollm2")
                rows.append({"load": what, "s": time.perf_counter() - t})
        finally:
            if old is None:
                del os.environ["MOT_CACHE_DIR"]
            else:
                os.environ["MOT_CACHE_DIR"] = old
    return rows


def _no_eos(model):
    """Make every row run the full length: EOS ids get -inf (a logits hook on the LM head)."""
    eos = sorted({int(model.config.eos_token_id), int(model.generation_config.eos_token_id)})

    def hook(module, inp, out):
        out[..., eos] = float("-inf")
        return out

    return model.lm_head.register_forward_hook(hook)


def _timed(fn, repeat: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def generation(n: int) -> list[dict]:
    model, tok, _ = load_pretrained("smollm2")
    handle = _no_eos(model)
    seeds = list(range(8))
    rows = []
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                   return_tensors="pt")
    ids = chat["input_ids"] if not torch.is_tensor(chat) else chat
    t_ours = _timed(lambda: sample_branches(model, tok, PROMPT, seeds, max_new_tokens=n, chat=True))
    rows.append({"contender": "plain model, our sampler", "tokens/s": 8 * n / t_ours, "vs ours plain": 1.0})

    def hf_generate():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.generate(ids, do_sample=True, num_return_sequences=8, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=tok.eos_token_id)

    t_hf = _timed(hf_generate)
    rows.append({"contender": "plain model, model.generate", "tokens/s": 8 * n / t_hf, "vs ours plain": t_ours / t_hf})
    handle.remove()
    for name, layers in (("grafted, all 30 layers, c = 1", "all"), ("grafted, upper 15 layers, c = 1",
                                                                      list(range(15, 30)))):
        m, tk, _ = load_pretrained("smollm2")
        graft(m, layers)
        h = _no_eos(m)
        t = _timed(lambda m=m, tk=tk: think_hf(m, tk, PROMPT, branch_seeds=seeds, creativity=1.0, max_new_tokens=n))
        rows.append({"contender": name, "tokens/s": 8 * n / t, "vs ours plain": t_ours / t})
        if layers == "all":
            t_one = _timed(lambda m=m, tk=tk: [think_hf(m, tk, PROMPT, branch_seeds=[s], creativity=1.0,
                                                         max_new_tokens=n) for s in seeds], repeat=1)
            rows.append({"contender": "grafted all, 8 one-branch runs in turn", "tokens/s": 8 * n / t_one,
                         "vs ours plain": t_ours / t_one})
            rows.append({"contender": "=> 8 branches batched vs one at a time", "tokens/s": t_one / t,
                         "vs ours plain": float("nan")})
        h.remove()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 16 if args.quick else 64
    print("machine:", machine())
    print(table(load_times(), "\nSmolLM2-135M-Instruct: load time"))
    print(table(generation(n), f"\nGeneration: 8 branches x {n} new tokens in one batch (float32, KV cache)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
