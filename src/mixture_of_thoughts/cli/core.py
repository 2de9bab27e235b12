"""``mot train``, ``mot sample``, ``mot think`` and ``mot eval``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from ..config import ModelConfig, ThoughtConfig, TrainConfig, load_json, preset
from ..errors import ConfigError
from ..units import to_bits
from . import live
from .common import (
    DATA_HELP,
    DEFAULT_MODEL,  # noqa: F401  (re-exported: tests/test_shipped_model.py imports it from here)
    load_run,
    parse_bool,
    parse_creativity,
    parse_layers,
    read_corpus,
    sampling_flags,
)

MAX_ROUTE_LAYERS = 8  # mot think prints per-layer routes for models with at most this many thought layers

# ----------------------------------------------------------------------------- config flags

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_dataclass_flags(p: argparse.ArgumentParser, cls, skip=()) -> None:
    """A ``--kebab-case`` flag for every field of ``cls`` (default None = not given)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "thoughts":
            continue
        t = hints[f.name]
        if f.name == "thought_layers":
            p.add_argument(_flag(f.name), type=parse_layers, default=None, help="all, none, or indices like 0,2")
            continue
        base = next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
        if base is bool:
            p.add_argument(_flag(f.name), type=parse_bool, default=None, metavar="BOOL",
                           help="true or false (also yes/no, on/off, 1/0)")
        else:
            p.add_argument(_flag(f.name), type=base if base in (int, float, str) else str, default=None)


def _build_configs(args) -> tuple[ModelConfig, TrainConfig]:
    """Preset, then ``--config FILE``, then individual flags."""
    d = preset(args.preset)
    if args.config:
        f = load_json(args.config)
        if "model" in f or "train" in f:
            d["model"].update(f.get("model", {}))
            d["train"].update(f.get("train", {}))
        else:
            d["model"].update(f)
    th = dict(d["model"].get("thoughts", {}))
    for f in dataclasses.fields(ThoughtConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            th[f.name] = v
    for f in dataclasses.fields(ModelConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name != "thoughts":
            d["model"][f.name] = v
    d["model"]["thoughts"] = th
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            d["train"][f.name] = v
    try:
        return ModelConfig.from_dict(d["model"]), TrainConfig.from_dict(d["train"])
    except TypeError as e:
        raise ConfigError(f"invalid config: {e}") from None


# ----------------------------------------------------------------------------- commands

def cmd_train(args) -> int:
    """Train a model on a character corpus, or resume a run.

    Example: mot train --data shakespeare --preset cpu-small --max-steps 2000 --out runs/base
    """
    from ..training.trainer import train
    from .progress import TqdmTrainProgress

    progress = None if args.quiet else TqdmTrainProgress()
    if args.resume:
        res = train(args.data, args.resume, None, None, resume=True, device=args.device, dtype=args.dtype,
                    progress=progress, max_steps=args.max_steps)
    else:
        if not args.out:
            raise ConfigError("--out is required (the run directory to create), or --resume RUN_DIR")
        if not args.data:
            raise ConfigError("--data is required: a path to a UTF-8 text file or 'shakespeare'")
        model_cfg, train_cfg = _build_configs(args)
        res = train(args.data, args.out, model_cfg, train_cfg, force=args.force, device=args.device,
                    dtype=args.dtype, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 130 if res.interrupted else 0  # under torchrun, rank 0 alone reports
    if res.interrupted:
        print(f"interrupted at step {res.step}; saved {res.run_dir / 'latest'}. "
              f"Continue with: mot train --resume {res.run_dir}", file=sys.stderr)
        return 130
    print(f"trained to step {res.step}: val loss {res.last_val_loss:.4f} nats "
          f"({to_bits(res.last_val_loss):.4f} bpc), best {res.best_val_loss:.4f}; run in {res.run_dir}")
    return 0


def cmd_sample(args) -> int:
    """Sample continuations from an autoregressive run, batched, with the KV cache.

    Example: mot sample runs/base --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40
    --top-p 0.95 --num-samples 3 --seed 7
    """
    from ..generation.autoregressive import think

    ck = load_run(args.run, expect="ar", which=args.checkpoint, device=args.device)
    res = think(ck.model, ck.tokenizer, args.prompt, branches=args.num_samples, seed=args.seed,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, stop=args.stop, unknown_chars=args.unknown_chars,
                use_cache=not args.no_cache, compile=args.compile, creativity=args.creativity)
    if args.json:
        print(json.dumps({"prompt": res.prompt, "samples": [{"seed": b.seed, "text": b.text} for b in res.branches]}))
        return 0
    for b in res.branches:
        print(f"--- sample seed={b.seed}")
        print(res.prompt + b.text)
    return 0


def cmd_think(args) -> int:
    """Generate N thought branches for one prompt in one batched pass.

    Example: mot think runs/mot --prompt "ROMEO:" --branches 8 --creativity 0.5:1.5 --max-new-tokens 200 --seed 1
    Without RUN_DIR, uses the small MoT model that ships with the package. With --model smollm2, a real
    instruct model (SmolLM2-135M-Instruct, offline), grafted on the fly, answers through its chat template:
    mot think --model smollm2 --prompt "Give me an idea for a short story about a lighthouse." --branches 8
    With --learned DIR (from mot train-branches), row i decodes with learned branch i mod B (--branches
    defaults to B) and seed SEED+i; --branch-seed S alone regenerates branch (S - SEED) mod B:
    mot think --learned branches/smollm2-4 --prompt "Give me an idea for a short story." --temperature 0
    """
    from ..generation.autoregressive import think

    if args.branches is None and not args.learned:
        args.branches = 8
    seeds = [args.branch_seed] if args.branch_seed is not None else None
    grafted = think_pretrained(args, seeds, parse_creativity(args.creativity))  # None for char runs
    unit = "nats/char"
    if grafted is not None:
        res, path, kind = grafted
        unit = "nats/token"  # a Hugging Face tokenizer's tokens, not characters
    else:
        if args.precision != "float32":
            raise ConfigError("--precision sets a pretrained model's decode step: give --model (char runs decode "
                              "in float32)")
        if args.k != 2:
            raise ConfigError("--k shapes a graft made on the fly for --model; a run keeps the k it was trained "
                              "with: drop it")
        ck = load_run(args.run, expect="ar", which=args.checkpoint, device=args.device)
        res = think(ck.model, ck.tokenizer, args.prompt, branches=args.branches, seed=args.seed, branch_seeds=seeds,
                    creativity=parse_creativity(args.creativity), max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    stop=args.stop, unknown_chars=args.unknown_chars, use_cache=not args.no_cache,
                    compile=args.compile)
        path, kind = ck.path, ("MoT" if ck.model.config.has_thoughts else "dense")
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    print(f"{len(res.branches)} branches from {path} ({kind}); prompt {res.prompt!r}")
    chat = grafted is not None and "chat template" in kind
    for i, b in enumerate(res.branches):
        crea = "n/a" if b.creativity is None else f"{b.creativity:.2f}"
        # the top branches per layer (a few layers only: a 30-layer trace is in --json)
        top = "  ".join(f"L{layer}:{_top_branches(load)}" for layer, load in b.routing.items()) \
            if len(b.routing) <= MAX_ROUTE_LAYERS else ""
        route = f"  routes {top}" if top else ""
        if args.learned and b.routing:  # a learned-branch row's routing is the one-hot of its branch
            route = f"  learned branch {_top_branches(next(iter(b.routing.values())), 1)}"
        print(f"\n=== branch {i}  seed={b.seed}  creativity={crea}  mean loglik={b.mean_loglik:.3f} {unit}{route}")
        print(b.text if chat else res.prompt + b.text)
    d = res.diversity
    if len(res.branches) < 2:
        return 0  # the diversity of a set needs two branches
    print(f"\ndiversity of the set: distinct-2 {d['distinct_2']:.3f}  distinct-3 {d['distinct_3']:.3f}  "
          f"self-BLEU {d['self_bleu']:.1f}")
    return 0


def think_pretrained(args, branch_seeds, creativity):
    """``mot think --model NAME|DIR`` (or ``mot think GRAFTED_DIR``): ``(ThinkResult, path, kind)``, or
    ``None`` when neither is given (then ``mot think`` loads a char run as usual). An ungrafted model is
    grafted on the fly, training-free (every branch a copy of the MLP, router zero), on ``--layers``.
    With ``--learned DIR`` the model (default: the one the branches were trained on) decodes with them."""
    from ..api import load
    from ..hf.generate import think_hf, uses_chat
    from ..hf.graft import is_grafted_dir

    if args.learned:
        return _think_learned(args, branch_seeds, creativity)
    name = args.model or (args.run if args.run and is_grafted_dir(args.run) else None)
    if name is None:
        return None
    if args.compile:
        raise ConfigError("--compile decodes the project's own models (a run directory); drop it for --model")
    th = load(name, graft=args.layers, noise_mode=args.noise_mode, k=args.k, device=args.device)
    model, tok, kind = th.model, th.tokenizer, th.source
    if args.k != 2 and not th.grafted_now:
        raise ConfigError(f"--k shapes a graft made on the fly: {name} is grafted already (with the k in its "
                          "graft.json): drop it")
    if th.grafted_now:
        kind += f", grafted on the fly on {args.layers} layers, {args.noise_mode} noise"
        kind += f", k = {args.k}" if args.k != 2 else ""
    chat = uses_chat(tok, False if args.no_chat else None)
    kw = dict(branches=args.branches, seed=args.seed, branch_seeds=branch_seeds, creativity=creativity,
              max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, min_p=args.min_p, stop=args.stop, chat=chat, noise_tokens=args.noise_tokens,
              precision=args.precision)
    if live.wanted(args):
        n = 1 if branch_seeds else args.branches
        seeds = branch_seeds or [args.seed + i for i in range(n)]
        with live.live_branches(lambda t: tok.decode(t, skip_special_tokens=True), n,
                                [f"branch {i} (seed {s})" for i, s in enumerate(seeds)]) as on_token:
            res = think_hf(model, tok, args.prompt, on_token=on_token, **kw)
    else:
        res = think_hf(model, tok, args.prompt, **kw)
    return res, name, kind + (", chat template" if chat else "")


def _think_learned(args, branch_seeds, creativity):
    """``mot think --learned DIR``: ``(ThinkResult, path, kind)`` of the learned branches of ``hf.learned``."""
    from ..hf.generate import uses_chat
    from ..hf.learned import load_branches, read_branches_config, think_learned
    from ..hf.registry import load_pretrained

    if creativity is not None or args.noise_tokens is not None:
        raise ConfigError("--creativity and --noise-tokens set the thought noise of a grafted model; learned "
                          "branches have none: drop them (vary --temperature instead)")
    if args.compile:
        raise ConfigError("--compile decodes the project's own models (a run directory); drop it for --learned")
    if args.precision != "float32":
        raise ConfigError("--precision sets a grafted model's decode step; learned branches decode in float32: "
                          "drop it for --learned")
    if args.k != 2:
        raise ConfigError("--k shapes a graft made on the fly; learned branches are not grafted: drop it")
    if args.run:
        raise ConfigError("--learned decodes a pretrained model: give it with --model (default: the model the "
                          "branches were trained on), not as RUN")
    if args.branches is not None and args.branches < 1:
        raise ConfigError(f"--branches must be >= 1, got {args.branches}")
    cfg = read_branches_config(args.learned)
    name = args.model or cfg.model
    model, tok, src = load_pretrained(name, args.device)
    if hasattr(model, "mot_graft"):
        raise ConfigError(f"--learned needs the plain model the branches were trained on, not the grafted {name}")
    module = load_branches(args.learned, model)
    B = module.n_branches
    chat = uses_chat(tok, False if args.no_chat else None)
    kw = dict(branches=args.branches or B, seed=args.seed, branch_seeds=branch_seeds,
              max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              min_p=args.min_p, stop=args.stop, chat=chat)
    if live.wanted(args):
        seeds = branch_seeds or [args.seed + i for i in range(kw["branches"])]
        with live.live_branches(lambda t: tok.decode(t, skip_special_tokens=True), len(seeds),
                                [f"branch {i} (seed {s}, learned {(s - args.seed) % B})"
                                 for i, s in enumerate(seeds)]) as on_token:
            res = think_learned(model, tok, args.prompt, module, on_token=on_token, **kw)
    else:
        res = think_learned(model, tok, args.prompt, module, **kw)
    kind = (f"{src.kind} {model.config.model_type}, {B} learned branches from {args.learned} on layers "
            f"{','.join(map(str, module.layers))} (row i: branch i mod {B})")
    return res, name, kind + (", chat template" if chat else "")


def _top_branches(load: list[float], n: int = 2) -> str:
    order = sorted(range(len(load)), key=lambda e: -load[e])[:n]
    return ",".join(f"{e}" for e in order)


def cmd_eval(args) -> int:
    """Validation loss and bits per character of a run on the last 10% of its corpus.

    Example: mot eval runs/base --json
    """
    from ..data.batches import CharDataset
    from ..metrics.quality import ar_nll

    ck = load_run(args.run, which=args.checkpoint, device=args.device)
    data = args.data or ck.meta.get("data")
    if not data:
        raise ConfigError("this checkpoint does not record its corpus; pass --data PATH")
    ds = CharDataset(read_corpus(data), ck.model.config.block_size, ck.tokenizer)
    if ck.objective == "diffusion":
        from ..models.diffusion import diffusion_nll

        total, count, k = diffusion_nll(ck.model, ds.val, draws=args.draws, seed=args.seed)
        res = {"objective": "diffusion", "val_loss": total / count, "val_bpc": to_bits(total / count),
               "bound": "ELBO upper bound", "t_draws": k}
    else:
        total, count = ar_nll(ck.model, ds.val, seed=args.seed)
        res = {"objective": "ar", "val_loss": total / count, "val_bpc": to_bits(total / count), "bound": "exact"}
    res.update({"characters": count, "checkpoint": str(ck.path), "data": str(data)})
    if args.json:
        print(json.dumps(res))
    else:
        extra = f" (upper bound, K={res['t_draws']} draws of t)" if ck.objective == "diffusion" else ""
        print(f"{ck.path}: val loss {res['val_loss']:.4f} nats/char, {res['val_bpc']:.4f} bpc{extra} "
              f"over {count} characters of {data}")
    return 0


def register(add) -> None:
    """Add this module's subcommands; ``add(name, fn)`` returns the new subparser."""

    t = add("train", cmd_train)
    t.add_argument("--data", default=None, help=DATA_HELP)
    t.add_argument("--out", default=None, help="run directory to create")
    t.add_argument("--preset", default="cpu-small",
                   help="cpu-small, cpu-small-mot, shakespeare-char, shakespeare-char-mot")
    t.add_argument("--config", default=None, help="JSON file with model (and train) fields")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    t.add_argument("--force", action="store_true", help="overwrite the run files in an existing --out")
    t.add_argument("--device", default=None)
    t.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    g = t.add_argument_group("model")
    _add_dataclass_flags(g, ModelConfig)
    g = t.add_argument_group("thought layers")
    _add_dataclass_flags(g, ThoughtConfig)
    g = t.add_argument_group("training")
    _add_dataclass_flags(g, TrainConfig)

    s = add("sample", cmd_sample)
    s.add_argument("run", help="run or checkpoint directory")
    sampling_flags(s, temperature=1.0)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED+i")
    s.add_argument("--creativity", type=float, default=None, help="thought-layer creativity (MoT models)")

    th = add("think", cmd_think)
    th.add_argument("run", nargs="?", default=None, help="run or checkpoint directory (default: the shipped model)")
    sampling_flags(th)
    th.add_argument("--branches", type=int, default=None, help="default 8 (with --learned: its B)")
    th.add_argument("--creativity", default=None, help="a value, LO:HI spread over the branches, or a list a,b,c")
    th.add_argument("--seed", type=int, default=0, help="branch i uses seed SEED+i")
    th.add_argument("--branch-seed", type=int, default=None, help="regenerate the one branch with this seed")
    _think_model_flags(th)
    th.add_argument("--learned", default=None, metavar="DIR",
                    help="decode with the learned branches of mot train-branches (row i: branch i mod B); "
                         "--model defaults to the model they were trained on")

    e = add("eval", cmd_eval)
    e.add_argument("run", nargs="?", default=None, help="run or checkpoint directory (default: the shipped model)")
    e.add_argument("--data", default=None, help=DATA_HELP + "; default: the corpus the run was trained on")
    e.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    e.add_argument("--device", default=None)
    e.add_argument("--seed", type=int, default=0, help="seed of thought-layer noise and diffusion t draws")
    e.add_argument("--draws", type=int, default=4, help="diffusion: draws of t per sequence (K)")
    e.add_argument("--json", action="store_true")


def _think_model_flags(th) -> None:
    """``mot think``'s flags for a pretrained model (``--model``) and the graft made on the fly."""
    th.add_argument("--model", default=None,
                    help="a pretrained causal LM: smollm2 (offline), a Hugging Face or grafted directory, or a hub id")
    th.add_argument("--layers", default="all", help="--model: decoder layers to graft: all, lower, upper, or 0,2,5")
    th.add_argument("--no-chat", action="store_true", help="--model: continue the raw prompt (no chat template)")
    th.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                    help="--model: the lean decode step's weights; bfloat16 is faster on CPUs with AVX512-BF16 "
                         "and gives other texts than float32 (the reference)")
    th.add_argument("--noise-mode", choices=["token", "persistent", "orthogonal"], default="token",
                    help="--model: fresh branch noise per token, one direction per branch (persistent), or "
                         "persistent directions orthogonal across the branches")
    th.add_argument("--k", type=int, default=2,
                    help="--model: branches of 4 each token uses in a graft made on the fly (1: one MLP row a "
                         "token, the cheaper graft)")
    th.add_argument("--noise-tokens", type=int, default=None,
                    help="--model: thought noise for the prompt and the first N new tokens only")
