"""Mixture-of-Thoughts layer speed: forward + backward against the dense FFN and a naive version.

    python benchmarks/bench_thoughts_layer.py            # 32 x 256 tokens at width 384 (nanoGPT's baby GPT)
    python benchmarks/bench_thoughts_layer.py --quick    # 8 x 64 tokens at width 128, seconds
    python benchmarks/bench_thoughts_layer.py --threads 1  # less sensitive to a busy machine

1. ``ThoughtsFFN`` (E = 8, k = 2, branch hidden 2d, creativity 1, ``GeneratorNoise``, training mode) against
   ``DenseFFN(d, 4d)``: the same active FFN parameters per token. Goal: at most 1.3x the dense time.
2. The same layer against a naive version as first sketched: a Python loop over the samples, 2-3 sampled
   branches per sample, and an attention combiner over all k*T branch positions of a sample.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table, timeit  # noqa: E402

from mixture_of_thoughts.config import ThoughtConfig  # noqa: E402
from mixture_of_thoughts.layers.ffn import DenseFFN, activation  # noqa: E402
from mixture_of_thoughts.layers.thoughts import ThoughtsFFN  # noqa: E402
from mixture_of_thoughts.rng import GeneratorNoise  # noqa: E402


class NaiveThoughts(nn.Module):
    """The first sketch: per sample, draw 2-3 branches, run each on the whole sequence, then attend
    from every position over all k*T branch outputs of that sample (O(T^2 k d) per sample)."""

    def __init__(self, d: int, E: int, h: int):
        super().__init__()
        self.router = nn.Linear(d, E, bias=False)
        self.w_in = nn.Parameter(torch.randn(E, d, h) * 0.02)
        self.w_out = nn.Parameter(torch.randn(E, h, d) * 0.02)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ys = []
        for b in range(x.shape[0]):
            xb = x[b]  # (T, d)
            p = torch.softmax(self.router(xb).mean(0), -1)  # one routing decision per sample
            k = int(torch.randint(2, 4, (), generator=gen))
            sel = torch.multinomial(p, k, generator=gen)
            outs = [activation(xb @ self.w_in[e]) @ self.w_out[e] * p[e] for e in sel.tolist()]
            kv = torch.cat(outs)  # (k*T, d)
            q = self.q(xb)
            att = torch.softmax(q @ self.k(kv).T / math.sqrt(xb.shape[-1]), -1)  # (T, k*T)
            ys.append(att @ self.v(kv))
        return torch.stack(ys)


def _fwd_bwd(module, x, call):
    def step():
        module.zero_grad(set_to_none=True)
        out = call(x)
        out.float().pow(2).mean().backward()
    return step


def run(quick: bool) -> list[dict]:
    """Median forward + backward times; one row per implementation."""
    torch.manual_seed(0)
    B, T, d = (8, 64, 128) if quick else (32, 256, 384)
    repeat = 5 if quick else 11
    cfg = ThoughtConfig(n_branches=8, k=2, creativity=1.0)
    x = torch.randn(B, T, d, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    dense = DenseFFN(d, 4 * d).train()
    mot = ThoughtsFFN(d, cfg).train()
    mot_attn = ThoughtsFFN(d, ThoughtConfig(n_branches=8, k=2, creativity=1.0, combine="attention")).train()
    naive = NaiveThoughts(d, 8, 2 * d).train()

    def mot_call(layer):
        def call(inp):
            out = layer(inp, noise=GeneratorNoise(gen, B))
            return out.y + 0 * out.aux_loss
        return call

    def quiet_call(inp):  # creativity 0: the same layer with every random draw off (the noise's share)
        out = mot(inp, noise=None)
        return out.y + 0 * out.aux_loss

    steps = {"dense": _fwd_bwd(dense, x, dense), "mot": _fwd_bwd(mot, x, mot_call(mot)),
             "quiet": _fwd_bwd(mot, x, quiet_call),
             "attn": _fwd_bwd(mot_attn, x, mot_call(mot_attn)),
             "naive": _fwd_bwd(naive, x, lambda inp: naive(inp, gen))}
    # round-robin single runs, then medians: a shared machine's load shifts over seconds and would
    # otherwise favour whichever implementation ran in a quiet moment
    times = {name: [] for name in steps}
    for fn in steps.values():
        fn()  # warm-up
    for _ in range(repeat):
        for name, fn in steps.items():
            times[name].append(timeit(fn, repeat=1, warmup=0))
    t_dense, t_mot, t_quiet, t_attn, t_naive = (statistics.median(times[n])
                                                for n in ("dense", "mot", "quiet", "attn", "naive"))
    shape = f"{B}x{T}x{d}"
    return [
        {"layer": "DenseFFN(d, 4d)", "tokens x width": shape, "fwd+bwd ms": 1e3 * t_dense, "vs dense": 1.0,
         "vs naive": t_dense / t_naive},
        {"layer": "ThoughtsFFN weighted E8 k2", "tokens x width": shape, "fwd+bwd ms": 1e3 * t_mot,
         "vs dense": t_mot / t_dense, "vs naive": t_mot / t_naive},
        {"layer": "ThoughtsFFN weighted E8 k2, no noise (c = 0)", "tokens x width": shape,
         "fwd+bwd ms": 1e3 * t_quiet, "vs dense": t_quiet / t_dense, "vs naive": t_quiet / t_naive},
        {"layer": "ThoughtsFFN attention E8 k2", "tokens x width": shape, "fwd+bwd ms": 1e3 * t_attn,
         "vs dense": t_attn / t_dense, "vs naive": t_attn / t_naive},
        {"layer": "naive (per-sample loop, k*T attention)", "tokens x width": shape, "fwd+bwd ms": 1e3 * t_naive,
         "vs dense": t_naive / t_dense, "vs naive": 1.0},
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("machine:", machine())
    print(table(run(args.quick), "\nThoughtsFFN forward + backward, float32, training mode, creativity 1 "
                                 "(goal: ThoughtsFFN weighted <= 1.3x dense)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
