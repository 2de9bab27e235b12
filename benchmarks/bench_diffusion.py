"""Masked-diffusion benchmarks: training throughput vs AR, sampler speed vs a per-row loop, ELBO bpc vs AR bpc.

    python benchmarks/bench_diffusion.py                   # everything (quality trains 2 x 2000 steps: ~10 min)
    python benchmarks/bench_diffusion.py --skip-quality    # throughput and sampling only (~2 min)
    python benchmarks/bench_diffusion.py --quick           # small versions, seconds

Needs the corpus: MOT_DATA_DIR=../shared/data or a cached/downloaded copy. ``--run DIR`` samples from
a trained diffusion run instead of a random model (a random model is the confidence sampler's worst
case: nothing is confident, so it reveals one position per step).
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
from mixture_of_thoughts.data.batches import CharDataset  # noqa: E402
from mixture_of_thoughts.data.corpus import load_corpus  # noqa: E402
from mixture_of_thoughts.generation.diffusion import denoise  # noqa: E402
from mixture_of_thoughts.metrics.quality import ar_nll  # noqa: E402
from mixture_of_thoughts.models import Transformer  # noqa: E402
from mixture_of_thoughts.models.diffusion import MaskSchedule, diffusion_nll  # noqa: E402
from mixture_of_thoughts.rng import RowNoise  # noqa: E402
from mixture_of_thoughts.training.checkpoint import load_checkpoint  # noqa: E402
from mixture_of_thoughts.training.objectives import DiffusionObjective  # noqa: E402
from mixture_of_thoughts.training.trainer import train  # noqa: E402
from mixture_of_thoughts.units import LN2  # noqa: E402

SAMPLER_KW = {"ancestral": {"steps": 64}, "topk": {"k": 4}, "confidence": {"threshold": 0.9}}


def training_throughput(steps: int) -> list[dict]:
    rows = []
    for objective in ("ar", "diffusion"):
        p = preset("cpu-small")
        with tempfile.TemporaryDirectory() as d:
            tc = TrainConfig.from_dict({**p["train"], "objective": objective, "max_steps": steps + 5,
                                        "eval_interval": 5, "eval_batches": 1, "warmup_steps": 0})
            train("shakespeare", d, ModelConfig.from_dict(p["model"]), tc)
            recs = [json.loads(line) for line in open(Path(d) / "metrics.jsonl")]
        tps = sum(r["tokens_per_s"] for r in recs[1:]) / max(1, len(recs) - 1)  # skip start-up
        rows.append({"objective": objective, "preset": "cpu-small", "batch x block": f"{tc.batch_size} x 64",
                     "tokens/s": tps})
    rows.append({"objective": "diffusion / ar", "preset": "", "batch x block": "",
                 "tokens/s": rows[1]["tokens/s"] / rows[0]["tokens/s"]})
    return rows


# ----------------------------------------------------------------------------- per-row reference samplers

@torch.no_grad()
def reference_sampler(model, x, known, seeds, sampler, *, steps=64, k=4, threshold=0.9):
    """The same samplers written the straightforward way: one row at a time, one position at a time.

    Uses ``torch.Generator`` draws per row (not bit-compatible with the batched samplers; what is
    compared is speed at equal work).
    """
    mask = model.config.vocab_size - 1
    sched = MaskSchedule()
    out = []
    for b in range(x.shape[0]):
        g = torch.Generator().manual_seed(seeds[b])
        row = x[b].clone()
        masked = [i for i in range(len(row)) if not known[b, i]]
        for i in masked:
            row[i] = mask
        step = 0
        while masked:
            t_in = torch.tensor([max(sched.eps, len(masked) / len(row))])
            logits = model(row[None], time=t_in).logits[0].float()
            logits[:, mask] = float("-inf")
            probs = torch.softmax(logits, -1)
            cand, conf = {}, {}
            for i in masked:
                tok = int(torch.multinomial(probs[i], 1, generator=g))
                cand[i], conf[i] = tok, float(probs[i, tok])
            if sampler == "ancestral":
                t, s = 1 - step / steps, 1 - (step + 1) / steps
                chosen = [i for i in masked if float(torch.rand((), generator=g)) < sched.unmask_prob(t, s)]
            elif sampler == "topk":
                chosen = sorted(masked, key=lambda i: -conf[i])[:k]
            else:
                chosen = [i for i in masked if conf[i] > threshold] or [max(masked, key=lambda i: conf[i])]
            for i in chosen:
                row[i] = cand[i]
            masked = [i for i in masked if i not in chosen]
            step += 1
        out.append(row)
    return torch.stack(out)


def sampling_speed(model, length: int, batch: int, repeat: int) -> list[dict]:
    prompt_len = 8
    x = torch.zeros(batch, length, dtype=torch.long)
    known = torch.zeros(batch, length, dtype=torch.bool)
    known[:, :prompt_len] = True
    seeds = list(range(batch))
    new = batch * (length - prompt_len)
    rows = []
    for sampler, kw in SAMPLER_KW.items():
        info = {}

        def batched(info=info, sampler=sampler, kw=kw):
            info["out"] = denoise(model, x, RowNoise(seeds), known=known, sampler=sampler, **kw)

        def per_row(sampler=sampler, kw=kw):
            reference_sampler(model, x, known, seeds, sampler, **kw)

        tb = timeit(batched, repeat=repeat)
        tr = timeit(per_row, repeat=1, warmup=0)
        rows.append({"sampler": f"{sampler} {kw}", "length": length, "batch": batch, "steps": info["out"].steps,
                     "forwards": info["out"].forwards, "batched tok/s": new / tb, "per-row loop tok/s": new / tr,
                     "speed-up": tr / tb})
    return rows


def quality(steps: int, draws: int) -> list[dict]:
    p = preset("cpu-small")
    ds = None
    rows = []
    for objective in ("ar", "diffusion"):
        with tempfile.TemporaryDirectory() as d:
            tc = TrainConfig.from_dict({**p["train"], "objective": objective, "max_steps": steps,
                                        "eval_interval": steps, "eval_batches": 20})
            t0 = time.perf_counter()
            train("shakespeare", d, ModelConfig.from_dict(p["model"]), tc)
            wall = time.perf_counter() - t0
            ck = load_checkpoint(d, which="latest")
        ds = ds or CharDataset(load_corpus("shakespeare"), ck.model.config.block_size, ck.tokenizer)
        if objective == "ar":
            total, n = ar_nll(ck.model, ds.val)
            bound = "exact"
        else:
            total, n, _ = diffusion_nll(ck.model, ds.val, draws=draws, seed=0)
            bound = f"ELBO bound, K={draws}"
        rows.append({"objective": objective, "steps": steps, "batch": tc.batch_size, "val nats": total / n,
                     "val bpc": total / n / LN2, "bound": bound, "train wall s": wall})
    rows.append({"objective": "diffusion / ar", "steps": steps, "batch": "", "val nats": rows[1]["val nats"] /
                 rows[0]["val nats"], "val bpc": "", "bound": "goal <= 1.15", "train wall s": ""})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--run", default=None, help="a trained diffusion run to sample from (block >= --length)")
    ap.add_argument("--draws", type=int, default=4, help="K draws of t for the ELBO bound")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    print("machine:", machine())
    print(table(training_throughput(5 if q else 30), "\nTraining throughput, cpu-small, float32"))
    length, batch = (64, 2) if q else (256, 8)
    if args.run:
        if load_checkpoint(args.run).model.config.block_size < length:
            raise SystemExit(f"--run needs a block size >= {length}")
        model = load_checkpoint(args.run).model
        desc = f"trained model {args.run}"
    else:
        cfg = DiffusionObjective().model_config(ModelConfig.from_dict({**preset("cpu-small")["model"],
                                                                       "block_size": length}), 65)
        model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
        desc = "random cpu-small-sized model, block 256"
    print(table(sampling_speed(model, length, batch, 1 if q else 3),
                f"\nSampling speed ({desc}): batched vectorised vs per-row Python loop"))
    if not args.skip_quality:
        print(table(quality(50 if q else 2000, args.draws), "\nQuality, cpu-small, shakespeare validation split"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
