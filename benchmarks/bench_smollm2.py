"""SmolLM2-135M-Instruct offline: load time, generation speed, grafting's cost, batched branches.

    python benchmarks/bench_smollm2.py            # 8 branches x 64 new tokens
    python benchmarks/bench_smollm2.py --quick    # 8 x 16

1. Load time: the first load dequantises the GGUF and writes the cache (a fresh cache directory);
   the second reads the cached safetensors.
2. Generation, 8 branches x N new tokens in one batch (every row runs N tokens: no token ends a row
   early, so all contenders do the same work): our sampler on the plain model through the model's own
   forward (the reference) and through the lean step (``hf/fast.py``) in float32 and bfloat16,
   transformers' ``model.generate(do_sample=True, num_return_sequences=8)``, and the grafted model at
   creativity 1 (all 30 layers, and the upper half; and all 30 layers with k = 1, one slot a token),
   each through both steps.
   The grafted model's floor: its thought layers reduced to each token's k = 2 slots through the MLP
   (no router, no noise), what any fusion of the rest could at best reach.
3. 8 branches in one batch vs 8 one-branch runs (grafted, all layers, creativity 1).
4. The memory-bound ceiling: the weights' bytes read once a step at the machine's read bandwidth.
5. Side by side (when llama-cpp-python is installed): llama.cpp on the same GGUF, as shipped (Q4_1)
   and re-encoded as BF16 and F32, 8 parallel sequences of the same prompt; the ratio of ours to it.

    python benchmarks/bench_smollm2.py --side-by-side   # 5 (and the plain rows of 2) only
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_best, machine, table  # noqa: E402

import mixture_of_thoughts.hf.generate as G  # noqa: E402
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


@contextlib.contextmanager
def _no_eos():
    """Make every row run the full length: no token ends a row (the decoders' stop ids are emptied)."""
    real = G.stop_token_ids
    G.stop_token_ids = lambda tokenizer, model=None: []
    try:
        yield
    finally:
        G.stop_token_ids = real


@contextlib.contextmanager
def _mlp_only():
    """A grafted layer reduced to what no implementation of it can skip: each token's k slots through the
    shared MLP (k rows of the gate and up products, combined before the down one), with no router, no
    noise and no routing statistics. Its speed bounds what fusing the rest could reach (texts not used)."""
    from mixture_of_thoughts.hf.graft import GraftedThoughts
    from mixture_of_thoughts.layers.thoughts import ThoughtOutput

    real = GraftedThoughts._shared_forward

    def floor(self, x, noise, positions, creativity, c_draws=None):
        B, T, d = x.shape
        N, K, E = B * T, self.cfg.k, self.cfg.n_branches
        hid, up = self._shared_in(x.reshape(N, 1, d).expand(N, K, d).reshape(N * K, d))
        out = self._grouped((self.act(hid) * up).view(N, K, -1).sum(1), self.w_out, None)
        stats = {"load": x.new_full((E,), 1 / E), "row_load": x.new_full((B, E), 1 / E),
                 "active_k": x.new_full((), float(K))}
        return ThoughtOutput(out.view(B, T, d), x.new_zeros(()), stats)

    GraftedThoughts._shared_forward = floor
    try:
        yield
    finally:
        GraftedThoughts._shared_forward = real


def _timed(fn, repeat: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_bandwidth() -> float:
    """GB/s of one pass summing a 1 GiB float32 tensor (every byte read once from memory)."""
    x = torch.ones(256 * 1024 * 1024)
    t = _timed(lambda: x.sum(), repeat=3)
    return x.numel() * 4 / t / 1e9


def generation(n: int, grafted: bool = True) -> list[dict]:
    model, tok, _ = load_pretrained("smollm2")
    seeds = list(range(8))
    rows = []
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                   return_tensors="pt")
    ids = chat["input_ids"] if not torch.is_tensor(chat) else chat
    weights_gb = sum(p.numel() for p in model.parameters()) * 4 / 1e9
    with _no_eos():
        t_ref = _timed(lambda: sample_branches(model, tok, PROMPT, seeds, max_new_tokens=n, chat=True, lean=False))
        rows.append({"contender": "plain, model's own forward (the reference; before the lean step)",
                     "tokens/s": 8 * n / t_ref, "vs reference": 1.0})
        for prec in ("float32", "bfloat16"):
            t = _timed(lambda prec=prec: sample_branches(model, tok, PROMPT, seeds, max_new_tokens=n, chat=True,
                                                         precision=prec))
            rows.append({"contender": f"plain, lean step, {prec}", "tokens/s": 8 * n / t, "vs reference": t_ref / t})

    def hf_generate():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.generate(ids, do_sample=True, num_return_sequences=8, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=tok.eos_token_id)

    t_hf = _timed(hf_generate)
    rows.append({"contender": "plain, model.generate (float32)", "tokens/s": 8 * n / t_hf,
                 "vs reference": t_ref / t_hf})
    grafts = (("grafted, all 30 layers, c = 1", "all", 2), ("grafted, upper 15 layers, c = 1", list(range(15, 30)), 2),
              ("grafted, all 30 layers, k = 1 (one slot a token), c = 1", "all", 1))

    def plain_lean():
        sample_branches(model, tok, PROMPT, seeds, max_new_tokens=n, chat=True)

    for name, layers, k in grafts[:3 if grafted else 0]:
        m, tk, _ = load_pretrained("smollm2")
        graft(m, layers, k=k)
        with _no_eos():
            t = _timed(lambda m=m, tk=tk: think_hf(m, tk, PROMPT, branch_seeds=seeds, creativity=1.0,
                                                   max_new_tokens=n, lean=False))
            rows.append({"contender": f"{name}, model's own forward", "tokens/s": 8 * n / t, "vs reference": t_ref / t})

            def grafted_lean(m=m, tk=tk):
                think_hf(m, tk, PROMPT, branch_seeds=seeds, creativity=1.0, max_new_tokens=n)

            t_plain, t_graft = alternating_best(plain_lean, grafted_lean)
            rows.append({"contender": f"{name}, lean step, float32", "tokens/s": 8 * n / t_graft,
                         "vs reference": t_ref / t_graft, "vs plain lean (paired)": t_plain / t_graft})
            if layers == "all" and k == 2:
                with _mlp_only():
                    t_plain, t = alternating_best(plain_lean, grafted_lean)
                rows.append({"contender": "grafted all, the floor: each token's k = 2 slots through the MLP, "
                                          "no router, no noise (lean)",
                             "tokens/s": 8 * n / t, "vs reference": t_ref / t, "vs plain lean (paired)": t_plain / t})
                t_one = _timed(lambda m=m, tk=tk: [think_hf(m, tk, PROMPT, branch_seeds=[s], creativity=1.0,
                                                             max_new_tokens=n) for s in seeds], repeat=1)
                rows.append({"contender": "grafted all, 8 one-branch runs in turn (lean)", "tokens/s": 8 * n / t_one,
                             "vs reference": t_ref / t_one})
                rows.append({"contender": "=> 8 branches batched vs one at a time", "tokens/s": t_one / t_graft,
                             "vs reference": float("nan")})
    bw = read_bandwidth()
    rows.append({"contender": f"memory-bound ceiling: {weights_gb:.2f} GB of float32 weights a step at {bw:.0f} GB/s "
                              "(read bandwidth, sum of 1 GiB)", "tokens/s": 8 * bw / weights_gb,
                 "vs reference": float("nan")})
    rows.append({"contender": "  the same in bfloat16 (half the bytes)", "tokens/s": 16 * bw / weights_gb,
                 "vs reference": float("nan")})
    return rows


LLAMA_CPP_HINT = ("llama-cpp-python is not installed: `pip install --no-binary llama-cpp-python "
                  "llama-cpp-python==0.3.36` compiles it from source (~15 min on 2 cores)")


_KEEP: list = []  # the log callback must outlive every call into llama.cpp


def _quiet(L):
    if not _KEEP:
        _KEEP.append(L.llama_log_callback(lambda level, text, user_data: None))
    return _KEEP[0]


def _gguf_as(src: Path, ftype: int, out: Path) -> Path:
    """``src`` re-encoded by llama.cpp's quantizer as ``ftype`` (F32 from Q4_1: the dequantised weights,
    exactly the float32 weights our side loads)."""
    import llama_cpp as L

    params = L.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
    if L.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not re-encode {src} as ftype {ftype}")
    return out


def _llama_cpp_decode(L, ctx, batch, V: int, ids: list[int], n: int, S: int) -> None:
    """S sequences of the prompt ``ids`` decoded in parallel for n tokens (one batch of S tokens a step)."""
    import numpy as np

    T0 = len(ids)

    def fill(entries):
        for k, (t, pos, seq, want) in enumerate(entries):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = t, pos, 1
            batch.seq_id[k][0], batch.logits[k] = seq, want
        batch.n_tokens = len(entries)

    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    rng = np.random.default_rng(0)
    fill([(t, j, s, j == T0 - 1) for s in range(S) for j, t in enumerate(ids)])
    assert L.llama_decode(ctx, batch) == 0
    out = [s * T0 + T0 - 1 for s in range(S)]  # the batch index of each sequence's logits
    for i in range(n):
        logits = np.stack([np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, k), shape=(V,)) for k in out])
        nxt = (logits - np.log(-np.log(rng.random(logits.shape)))).argmax(-1)
        if i == n - 1:
            break
        fill([(int(t), T0 + i, s, True) for s, t in enumerate(nxt)])
        assert L.llama_decode(ctx, batch) == 0
        out = list(range(S))


def llama_cpp_rows(n: int, ours: dict[str, float]) -> list[dict]:
    """llama.cpp (through llama-cpp-python's C API) on the same GGUF: 8 sequences of the same chat
    prompt decoded in parallel (one batch of 8 tokens a step, its KV cache per sequence), n tokens each,
    EOS ignored, each token drawn by Gumbel-max in numpy from the returned logits; 2 threads."""
    try:
        import llama_cpp as L
    except ImportError:
        print(LLAMA_CPP_HINT)
        return []
    from mixture_of_thoughts.hf.generate import prompt_ids
    from mixture_of_thoughts.hf.registry import gguf_path

    _, tok, _ = load_pretrained("smollm2")
    ids = prompt_ids(tok, PROMPT, chat=True)
    T0, S = len(ids), 8
    L.llama_log_set(_quiet(L), ctypes.c_void_p())  # llama.cpp logs every tensor it loads otherwise
    L.llama_backend_init()
    rows = []
    src = gguf_path("smollm2")
    with tempfile.TemporaryDirectory() as d:
        files = {"Q4_1 (the shipped GGUF)": src,
                 "BF16 (re-encoded)": _gguf_as(src, L.LLAMA_FTYPE_MOSTLY_BF16, Path(d) / "bf16.gguf"),
                 "F32 (re-encoded: our float32 weights)": _gguf_as(src, L.LLAMA_FTYPE_ALL_F32, Path(d) / "f32.gguf")}
        for name, path in files.items():
            model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
            cp = L.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = S * (T0 + n) + 64, S * T0, S * T0, S
            cp.n_threads = cp.n_threads_batch = torch.get_num_threads()
            ctx = L.llama_init_from_model(model, cp)
            V = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
            batch = L.llama_batch_init(S * T0, 0, S)
            t = _timed(lambda ctx=ctx, batch=batch, V=V: _llama_cpp_decode(L, ctx, batch, V, ids, n, S))
            tps = S * n / t
            row = {"contender": f"llama.cpp, {name}", "tokens/s": tps}
            for k, v in ours.items():
                row[f"ours {k} / it"] = v / tps
            rows.append(row)
            L.llama_batch_free(batch)
            L.llama_free(ctx)
            L.llama_model_free(model)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side-by-side", action="store_true",
                    help="only the plain model (reference, lean float32, lean bfloat16) and llama.cpp")
    args = ap.parse_args(argv)
    n = 16 if args.quick else 64
    print("machine:", machine())
    if not args.side_by_side:
        print(table(load_times(), "\nSmolLM2-135M-Instruct: load time"))
    rows = generation(n, grafted=not args.side_by_side)
    print(table(rows, f"\nGeneration: 8 branches x {n} new tokens in one batch (KV cache)"))
    ours = {r["contender"].rsplit(", ", 1)[1]: r["tokens/s"] for r in rows if r["contender"].startswith("plain, lean")}
    side = llama_cpp_rows(n, ours)
    if side:
        print(table(side, f"\nSide by side: llama.cpp, 8 parallel sequences x {n} tokens, same prompt and machine"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
