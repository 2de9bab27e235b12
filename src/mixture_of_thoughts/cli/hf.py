"""``mot graft``, ``mot experts``, ``mot steer`` and ``mot cost`` (pretrained models, DESIGN §6).

``transformers`` is imported inside the commands only, so ``mot --help`` and ``mot cost`` work
without it; the other commands say what to install when it is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, DataError
from .common import DATA_HELP, load_hf, read_corpus


def _read_lines(path: str, what: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file {path} is not readable UTF-8 text: {e}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{what} file {path} holds no prompt (one prompt per non-empty line)")
    return lines


# ----------------------------------------------------------------------------- graft


def _empty_out(path: str, force: bool) -> Path:
    """``--out``: a directory that does not exist or is empty, unless ``--force``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory to write")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is not empty; choose another directory or pass --force")
    return out


def _token_ids(tok, text: str, data: str):
    import torch

    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < 2:
        raise DataError(f"--data {data} holds fewer than 2 tokens")
    return ids


def _fine_tune(model, ids, args, log) -> list[float]:
    """Train the thought parameters on ``ids``; a progress bar on stderr unless ``--quiet``; every
    ``--log-every`` steps a record of steps, tokens and wall time goes to ``log``."""
    import time

    from ..hf.finetune import train_graft

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="graft", file=sys.stderr)
    t0 = time.perf_counter()
    recent: list[float] = []

    def progress(step, loss):
        recent.append(loss)
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            wall = time.perf_counter() - t0
            log({"step": done, "tokens": done * args.batch_size * args.block_size, "wall_s": round(wall, 3),
                 "s_per_step": round(wall / done, 4), "loss": sum(recent) / len(recent)})
            recent.clear()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

    try:
        return train_graft(model, ids, steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
                           lr=args.lr, seed=args.seed, branches=args.train_branches, creativity=args.creativity,
                           progress=progress)
    finally:
        if bar is not None:
            bar.close()


def _evaluate(model, heldout, args, when: str, log) -> dict[float, float]:
    from ..hf.finetune import heldout_nll

    res = heldout_nll(model, heldout, args.eval_creativities, block_size=args.block_size,
                      windows=args.eval_windows, seed=args.seed)
    for c, nll in res.items():
        log({"eval": when, "creativity": c, "nll_per_token": round(nll, 5)})
    return res


def cmd_graft(args) -> int:
    """Graft Mixture-of-Thoughts layers into a Hugging Face causal LM and fine-tune only them.

    Every chosen MLP becomes E branches copied from it, under a zero (uniform) router; the thought
    parameters are trained on random windows of --data (a text file or 'shakespeare', as for mot
    train), everything else stays frozen. The output directory holds the base model
    (save_pretrained), the tokenizer, graft.json and thoughts.safetensors; load it with
    mixture_of_thoughts.hf.graft.load_grafted or `mot think DIR`.

    The last 10% of --data is held out: its NLL per token at several creativities before and after
    training, and the wall time per step, go into OUT/metrics.jsonl (mot cost --measured reads it).

    Example: mot graft --model smollm2 --data shakespeare --steps 100 --batch-size 4 --block-size 64 --out runs/smol
    """
    from ..hf.graft import freeze_except_thoughts, graft, save_grafted
    from ..hf.registry import load_pretrained

    out = _empty_out(args.out, args.force)
    if args.steps < 1 or args.log_every < 1:
        raise ConfigError("--steps and --log-every must be >= 1")
    text = read_corpus(args.data)  # resolved as by every --data: a path or 'shakespeare'
    model, tok, _ = load_pretrained(args.model, args.device)
    graft(model, args.layers, n_branches=args.branches, k=args.k, creativity=args.creativity,
          route=args.route, noise_init=args.noise_init, seed=args.seed)
    trainable, total = freeze_except_thoughts(model, branches=args.train_branches)
    ids = _token_ids(tok, text, args.data)
    cut = int(ids.numel() * 0.9)  # the last 10% is held out for the NLL before and after
    train_ids, heldout = ids[:cut], ids[cut:]
    records: list[dict] = [{
        "event": "start", "model": args.model, "model_type": model.config.model_type, "n_params": total,
        "trainable_params": trainable, "layers": model.mot_graft.spec.layers,
        "device": str(next(model.parameters()).device), "cpu": _cpu_name(),
        "batch_size": args.batch_size, "block_size": args.block_size, "creativity": args.creativity,
        "train_tokens": int(train_ids.numel()), "heldout_tokens": int(heldout.numel())}]
    print(f"grafted {args.model} ({model.config.model_type}): layers {model.mot_graft.spec.layers}, "
          f"E={args.branches}, k={args.k}; trainable {trainable:,} of {total:,} parameters "
          f"({trainable / total:.2%}); {train_ids.numel():,} training tokens, {heldout.numel():,} held out")
    before = _evaluate(model, heldout, args, "before", records.append)
    losses = _fine_tune(model, train_ids, args, records.append)
    after = _evaluate(model, heldout, args, "after", records.append)
    save_grafted(model, out, tok, overwrite=args.force)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    step_s = next(r["s_per_step"] for r in reversed(records) if "s_per_step" in r)
    print("held-out NLL per token (before -> after): " + ", ".join(
        f"c={c:g}: {before[c]:.4f} -> {after[c]:.4f}" for c in before))
    print(f"{args.steps} steps, {step_s:.2f} s a step; LM loss {losses[0]:.4f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.4f}; saved {out} (metrics in {out / 'metrics.jsonl'})")
    return 0


# ----------------------------------------------------------------------------- experts and steer


def cmd_experts(args) -> int:
    """Expert specialisation of an MoE model: activation rate per expert and layer on two prompt sets.

    Prints, per MoE layer, the experts most specific to each set (difference of activation rates) and
    writes a heatmap (rates on A, on B, and A − B) with --out. Works on Hugging Face MoE models
    (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS), grafted models and MoT runs.

    Example: mot experts mistralai/Mixtral-8x7B-v0.1 --prompts-a code.txt --prompts-b poems.txt --out experts.png
    """
    from ..hf.specialise import expert_specialisation, plot_specialisation

    a = _read_lines(args.prompts_a, "--prompts-a")
    b = _read_lines(args.prompts_b, "--prompts-b")
    model, tok = load_hf(args.model, args.device)
    spec = expert_specialisation(model, tok, a, b)
    if args.out:
        plot_specialisation(spec, args.out, labels=(Path(args.prompts_a).stem, Path(args.prompts_b).stem))
    if args.json:
        print(json.dumps(spec.to_dict(args.top)))
        return 0
    print(spec.format(args.top))
    if args.out:
        print(f"heatmap written to {args.out}")
    return 0


def _parse_profile(s: str):
    """``force=1,3;ban=0;boost=2;suppress=5;delta=2;name=x`` -> ExpertProfile."""
    from ..steering.experts import ExpertProfile

    kw = {}
    for part in s.split(";"):
        if not part.strip():
            continue
        key, _, val = part.partition("=")
        key = key.strip()
        if key in ("force", "ban", "boost", "suppress"):
            try:
                kw[key] = [int(v) for v in val.split(",") if v.strip()]
            except ValueError:
                raise ConfigError(f"--profile {s!r}: {key} takes comma-separated expert ids") from None
        elif key == "delta":
            try:
                kw["delta"] = float(val)
            except ValueError:
                raise ConfigError(f"--profile {s!r}: delta takes a number, got {val!r}") from None
        elif key == "name":
            kw["name"] = val
        else:
            raise ConfigError(f"--profile {s!r}: unknown key {key!r}; use force, ban, boost, suppress, delta, name")
    kw.setdefault("name", s)
    return ExpertProfile(**kw)


def cmd_steer(args) -> int:
    """Branches with expert profiles: one continuation per --profile, all in one batched pass.

    A profile is `force=IDS`, `ban=IDS`, `boost=IDS` or `suppress=IDS` (SteerMoE shift by delta),
    joined by `;`, e.g. --profile "force=1,3" --profile "ban=0;boost=2;delta=2" --profile "" (plain).

    Example: mot steer allenai/OLMoE-1B-7B-0924 --prompt "Once upon a time" --profile "" --profile "ban=3,7"
    """
    from ..hf.specialise import think_experts

    profiles = [_parse_profile(p) for p in (args.profile or [""])]
    model, tok = load_hf(args.model, args.device)
    res = think_experts(model, tok, args.prompt, profiles, seed=args.seed, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.json:
        d = res.to_dict()
        for br, p in zip(d["branches"], profiles, strict=True):
            br["profile"] = p.name
        print(json.dumps(d))
        return 0
    for p, b in zip(profiles, res.branches, strict=True):
        print(f"=== profile {p.name or '(none)'!r}  seed={b.seed}  mean loglik={b.mean_loglik:.3f}")
        print(res.prompt + b.text)
    return 0


# ----------------------------------------------------------------------------- cost


def cmd_cost(args) -> int:
    """Compute, GPU-hours and price of full training (6·N·D) versus grafting.

    Grafting: 2·N·D forward + 2·N_bp·D activation gradients (N_bp = --backprop-fraction·N, the layers
    from the lowest trainable one up; 1 when every layer is grafted) + 2·N_t·D weight gradients
    (N_t = --trainable-fraction·N). See mixture_of_thoughts.hf.cost for the assumptions.

    With --measured RUN (the --out directory of mot graft): the run's logged tokens and wall time,
    scaled to --tokens (default: the run's) on the GPU, beside both formulas for the same tokens, with
    the run's throughput implied by the grafting formula. N and N_t/N default to the run's records.

    Example: mot cost --preset llama-7b --tokens 1T --graft-tokens 1B --trainable-fraction 0.1
    Example: mot cost --measured runs/gpt2-mot --tokens 1B --measured-tflops 2
    """
    from ..hf.cost import (
        CHINCHILLA_TOKENS_PER_PARAM,
        PRESETS,
        Hardware,
        compare_measured,
        estimate,
        format_measured,
        format_table,
        measured_to_dict,
        parse_count,
        read_measured_run,
        to_dict,
    )

    hw = Hardware(args.gpu_tflops, args.mfu, args.gpu_hour_usd)
    params = (parse_count(args.params, "--params") if args.params is not None
              else PRESETS[args.preset] if args.preset is not None else None)
    if args.measured is not None:
        if args.graft_tokens is not None:
            raise ConfigError("--graft-tokens does not apply with --measured; --tokens sets the tokens to "
                              "extrapolate to")
        run = read_measured_run(args.measured)
        c = compare_measured(run, hw, params=params, params_source="--params" if args.params else "--preset",
                             tokens=parse_count(args.tokens, "--tokens") if args.tokens is not None else None,
                             trainable_fraction=args.trainable_fraction, backprop_fraction=args.backprop_fraction,
                             run_peak_tflops=args.measured_tflops)
        print(json.dumps(measured_to_dict(c)) if args.json else format_measured(c))
        return 0
    if args.measured_tflops is not None:
        raise ConfigError("--measured-tflops needs --measured RUN")
    if params is None:
        raise ConfigError(f"give --params (e.g. 124M), --preset ({', '.join(PRESETS)}) or --measured RUN")
    tokens = (parse_count(args.tokens, "--tokens") if args.tokens is not None
              else CHINCHILLA_TOKENS_PER_PARAM * params)
    rows = estimate(params, tokens, hw,
                    trainable_fraction=0.1 if args.trainable_fraction is None else args.trainable_fraction,
                    graft_tokens=parse_count("1B" if args.graft_tokens is None else args.graft_tokens,
                                             "--graft-tokens"),
                    backprop_fraction=args.backprop_fraction)
    if args.json:
        print(json.dumps({"params": params, "hardware": vars(hw), "estimates": to_dict(rows)}))
    else:
        print(format_table(params, hw, rows))
    return 0


# ----------------------------------------------------------------------------- flags


def register(add) -> None:
    """Add this module's subcommands; ``add(name, fn)`` returns the new subparser."""
    _graft_flags(add("graft", cmd_graft))
    _experts_flags(add("experts", cmd_experts))
    _steer_flags(add("steer", cmd_steer))
    _cost_flags(add("cost", cmd_cost))


def _graft_flags(g) -> None:
    from ..hf.graft import GRAFT_NOISE_INIT
    from ..hf.registry import DEFAULT

    g.add_argument("--model", default=DEFAULT,
                   help=f"a causal LM: {DEFAULT} (offline, the default), a local Hugging Face directory or a hub id")
    g.add_argument("--layers", default="all", help="decoder layers to graft: all, lower, upper, or 0,2,5")
    g.add_argument("--branches", type=int, default=4, help="E, branches per grafted layer")
    g.add_argument("--k", type=int, default=2, help="branches active per token")
    g.add_argument("--creativity", type=float, default=1.0,
                   help="creativity of the grafted layers, and of the branch noise while training")
    g.add_argument("--route", choices=["token", "sequence"], default="token")
    g.add_argument("--noise-init", type=float, default=GRAFT_NOISE_INIT,
                   help="initial branch noise scales (relative to each row's RMS)")
    g.add_argument("--train-branches", action="store_true",
                   help="also train the branch weights (unties them: E copies of each MLP); default: only the "
                        "router, its temperature and the noise scales")
    g.add_argument("--data", default="shakespeare", help="text to fine-tune on: " + DATA_HELP)
    g.add_argument("--steps", type=int, default=200)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--block-size", type=int, default=128, help="tokens per training window")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--eval-creativities", type=_floats, default=[0.0, 0.5, 1.0, 2.0],
                   help="creativities of the held-out NLL before and after (default 0,0.5,1,2)")
    g.add_argument("--eval-windows", type=int, default=16, help="held-out windows of --block-size tokens")
    g.add_argument("--log-every", type=int, default=10, help="steps between records in metrics.jsonl")
    g.add_argument("--seed", type=int, default=0, help="seeds the windows and the training noise")
    g.add_argument("--out", required=True, help="directory to write")
    g.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    g.add_argument("--device", default=None)
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _cpu_name() -> str:
    """The processor's model name (for the run's record), e.g. 'AMD EPYC'."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _experts_flags(e) -> None:
    e.add_argument("model", help="Hugging Face MoE model (hub id or directory), grafted directory, or MoT run")
    e.add_argument("--prompts-a", required=True, help="file with one prompt per line (set A)")
    e.add_argument("--prompts-b", required=True, help="file with one prompt per line (set B)")
    e.add_argument("--out", default=None, help="heatmap PNG to write")
    e.add_argument("--top", type=int, default=3, help="experts to list per layer and set")
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")


def _steer_flags(s) -> None:
    s.add_argument("model", help="Hugging Face MoE model, grafted directory, or MoT run")
    s.add_argument("--prompt", required=True)
    s.add_argument("--profile", action="append", help="expert profile of one branch (repeat for more)")
    s.add_argument("--max-new-tokens", type=int, default=50)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0, help="branch i uses seed SEED+i")
    s.add_argument("--device", default=None)
    s.add_argument("--json", action="store_true")


def _cost_flags(c) -> None:
    from ..hf.cost import PRESETS

    c.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="fill in --params (gpt2 124M, llama-7b 6.74B)")
    c.add_argument("--params", default=None,
                   help="parameters N, e.g. 124M, 6.74B (with --measured: default the run's n_params)")
    c.add_argument("--tokens", default=None,
                   help="full-training tokens D, e.g. 10B (default 20·N, Chinchilla); with --measured: the tokens "
                        "to extrapolate to (default the run's)")
    c.add_argument("--graft-tokens", default=None, help="grafting tokens (default 1B; not with --measured)")
    c.add_argument("--trainable-fraction", type=float, default=None,
                   help="N_t / N, the trained share when grafting (default 0.1; with --measured: the run's "
                        "trainable_params / n_params)")
    c.add_argument("--backprop-fraction", type=float, default=1.0,
                   help="N_bp / N, the share the activation gradients pass through (1 = all layers grafted)")
    c.add_argument("--gpu-tflops", type=float, default=989.0, help="dense peak TFLOP/s per GPU (H100 SXM BF16: 989)")
    c.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation achieved")
    c.add_argument("--gpu-hour-usd", type=float, default=2.5, help="price of one GPU-hour")
    c.add_argument("--measured", default=None, metavar="RUN",
                   help="a mot graft output directory (graft.json, metrics.jsonl): extrapolate its logged tokens "
                        "and wall time to --tokens on the GPU")
    c.add_argument("--measured-tflops", type=float, default=None,
                   help="with --measured: dense peak TFLOP/s of the device the run ran on, for its MFU")
    c.add_argument("--json", action="store_true")
