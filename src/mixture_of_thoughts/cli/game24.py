"""``mot game24``: data, training, solving and evaluation on Game of 24."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from .common import typed_command

DEFAULT_DATA = "runs/game24/train.txt"
KINDS = {"ar": "game24", "mot": "game24-mot", "diffusion": "game24", "mgdm": None, "modes": None, "codes": None}


def cmd_game24(args) -> int:
    """Game of 24: make training traces, train a model, solve a puzzle, evaluate methods at equal budgets.

    Examples:
      mot game24 data --out runs/game24/train.txt
      mot game24 train --kind ar --out runs/game24-ar
      mot game24 train --kind mgdm --out runs/game24-mgdm
      mot game24 train --kind modes --out runs/game24-modes
      mot game24 train --kind codes --out runs/game24-codes
      mot game24 train-value --out runs/game24-value
      mot game24 solve "4 5 6 10" --budget 1800              # distinct-value@0.7: sampled without replacement,
                                                             # the beam pruned by the learned value
      mot game24 solve "4 5 6 10" --method solver
      mot game24 solve "4 5 6 10" --method beam --budget 1800  # ranked by the model's likelihood alone
      mot game24 solve "4 5 6 10" --method mgdm --budget 1800
      mot game24 eval --methods sample,sample@0.7,beam,mcts,random --budgets 450,1800,7200
      mot game24 export runs/game24-ar --out my-models/ar

    solve and eval use the models (and the value) shipped in the package unless --model, --mot-model,
    --diffusion-model, --mgdm-model, --modes-model or --value name your own.
    """
    return {"data": _data, "train": _train, "train-value": _train_value, "solve": _solve, "eval": _eval,
            "export": _export}[args.action](args)


def _data(args) -> int:
    from ..tasks import game24

    train, val, test = game24.split(game24.load_puzzles())
    extra = [] if args.synthetic_up_to is None else game24.synthetic_puzzles(args.synthetic_up_to, val + test)
    text = game24.training_text(train + extra, per_solution=args.per_solution, seed=args.seed)
    out = Path(args.out or DEFAULT_DATA)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    more = f" and {len(extra):,} synthetic ones (numbers up to {args.synthetic_up_to})" if extra else ""
    print(f"wrote {out}: {text.count(chr(10) + chr(10)) + 1:,} traces of {len(train)} training puzzles{more} "
          f"({len(text):,} characters); the {len(val)} validation (rows 800-899) and {len(test)} test puzzles "
          "(rows 900-999) are left out")
    return 0


def _train(args) -> int:
    from ..config import ModelConfig, TrainConfig, preset
    from ..training.trainer import train
    from .progress import TqdmTrainProgress

    if args.kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {args.kind!r}")
    if args.limit is not None and args.kind not in ("modes", "codes"):
        raise ConfigError(f"--limit caps the puzzles of train --kind modes or codes (and of eval and train-value), "
                          f"not of --kind {args.kind}: drop --limit")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.kind == "mgdm":
        return _train_mgdm(args)
    if args.kind in ("modes", "codes"):
        return _train_modes(args)
    data = Path(args.data or DEFAULT_DATA)
    if not data.is_file():
        raise ConfigError(f"no training traces at {data}: make them with mot game24 data --out {data}")
    if args.init:
        return _continue(args, data)
    d = preset(KINDS[args.kind])
    if args.steps is not None:
        d["train"]["max_steps"] = args.steps
    if args.kind == "diffusion":
        d["train"]["objective"] = "diffusion"
    if not args.out:
        raise ConfigError("--out is required (the run directory to create)")
    res = train(str(data), args.out, ModelConfig.from_dict(d["model"]), TrainConfig.from_dict(d["train"]),
                force=args.force, device=args.device, progress=None if args.quiet else TqdmTrainProgress())
    print(f"trained to step {res.step}: val loss {res.last_val_loss:.4f} nats; run in {res.run_dir}")
    return 0


def _continue(args, data: Path) -> int:
    """``train --init RUN``: a copy of RUN (weights, optimiser, schedule, history) trained on ``data``
    up to ``--steps`` steps in all, in a new run directory; RUN itself is left as it was (its own
    configuration decides the model; ``--kind`` is not read). This is how the synthetic puzzles are
    used: a run trained on them first, then on the 24.csv traces."""
    import shutil

    from ..training.checkpoint import is_run
    from ..training.trainer import prepare_out_dir, train
    from .progress import TqdmTrainProgress

    init = Path(args.init)
    if not is_run(init):
        raise ConfigError(f"--init {init}: not a run directory (no latest/ checkpoint); train one with "
                          f"mot game24 train --kind {args.kind} --out {init}")
    if args.steps is None:
        raise ConfigError("--init needs --steps: the total number of steps, counting the run's own")
    if not args.out:
        raise ConfigError("--out is required (the run directory to create)")
    out = Path(args.out)
    if out.resolve() == init.resolve():
        raise ConfigError("--out must differ from --init (the run started from is kept as it is)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise ConfigError(f"--out {out} is not empty: pass --force to overwrite it, or choose another directory")
        prepare_out_dir(out, resume=False, force=True)  # removes the run files only, as training does
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp)  # a whole copy first: an interrupted copy never looks like a run
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(tmp.iterdir()):
        item.replace(out / item.name)
    tmp.rmdir()
    res = train(str(data), out, None, None, resume=True, max_steps=args.steps, device=args.device,
                progress=None if args.quiet else TqdmTrainProgress())
    print(f"trained {init} on to step {res.step}: val loss {res.last_val_loss:.4f} nats; run in {res.run_dir}")
    return 0


def _train_mgdm(args) -> int:
    """The masked-diffusion model that solves alone (MGDM's recipe): its data come from the solver on
    the training puzzles, so it needs no --data."""
    from ..tasks import game24
    from ..tasks.mgdm import MGDMConfig, train_mgdm

    if not args.out:
        raise ConfigError("--out is required (the run directory to create)")
    if args.data:
        raise ConfigError("--kind mgdm makes its own traces from the training puzzles: drop --data")
    init = None
    if args.adapt or args.init:
        from ..experiments.game24_eval import SHIPPED_RUNS

        init = str(args.init or SHIPPED_RUNS["model"])
    cfg = MGDMConfig(init=init, suffix=args.suffix, anneal=args.anneal, tie_values=args.tie_values,
                     minutes=args.minutes)
    steps = {} if args.steps is None else {"max_steps": args.steps}
    cfg.train = dataclasses.replace(cfg.train, seed=args.seed, **steps)
    train, val, _ = game24.split(game24.load_puzzles())

    def log(row):
        if not args.quiet:
            print(f"step {row['step']}: loss {row['train_loss']:.4f}, validation puzzles solved by one greedy "
                  f"decode {row['val_solved']:.2f}, first step's result written with the rest masked "
                  f"{row['val_first_result']:.2f} ({row['minutes']:.1f} min)", flush=True)

    res = train_mgdm(train, val, cfg, args.out, log=log, force=args.force)
    print(f"trained {res['steps']} steps in {res['minutes']:.1f} min on {res['traces']:,} traces; best at step "
          f"{res['best_step']} ({res['val_solved']:.2f} of the validation puzzles with one decode); run in {args.out}")
    return 0


def _train_modes(args) -> int:
    """Modes that divide each puzzle's solutions among them (winner-takes-all over modes): the MoT
    model's branches (--kind modes) or the autoregressive model with learned mode codes (--kind codes);
    --init (default the shipped MoT or autoregressive model) is where they start."""
    from ..experiments.game24_eval import SHIPPED_RUNS
    from ..tasks import game24
    from ..tasks.modes import ModesConfig, train_modes

    if not args.out:
        raise ConfigError("--out is required (the run directory to create)")
    if args.data:
        raise ConfigError(f"--kind {args.kind} makes its own answers from the training puzzles: drop --data")
    codes = args.kind == "codes"
    eps = {} if args.eps is None else {"eps": args.eps}
    cfg = ModesConfig(modes=args.modes, kind="codes" if codes else "branches", minutes=args.minutes, **eps)
    steps = {} if args.steps is None else {"max_steps": args.steps}
    cfg.train = dataclasses.replace(cfg.train, seed=args.seed, **steps)
    train, val, _ = game24.split(game24.load_puzzles())
    if args.limit is not None:
        train, val = train[:args.limit], val[:args.limit]  # a quick run: N puzzles' answers to train and validate on

    def log(row):
        if not args.quiet:
            wins = " ".join(f"{w:.2f}" for w in row["val_wins"])
            print(f"step {row['step']}: validation NLL per answer character: mixture {row['val_mixture_nll']:.4f}, "
                  f"best mode {row['val_best_mode_nll']:.4f}; answers each mode wins: {wins} "
                  f"({row['minutes']:.1f} min)", flush=True)

    init = args.init or SHIPPED_RUNS["model" if codes else "mot_model"]
    res = train_modes(init, train, val, cfg, args.out, log=log, force=args.force)
    print(f"trained {res['steps']} steps in {res['minutes']:.1f} min on {res['answers']:,} answers; best at step "
          f"{res['best_step']} (validation mixture NLL {res['val_mixture_nll']:.4f}); run in {args.out}")
    return 0


def _train_value(args) -> int:
    from ..tasks import game24
    from ..tasks.value import ValueConfig, train_value, value_puzzles

    if not args.out:
        raise ConfigError("--out is required (the folder to write value.safetensors and value.json into)")
    out = Path(args.out)
    if (out / "value.safetensors").exists() and not args.force:
        raise ConfigError(f"{out} already holds a value: pass --force to overwrite it")
    cfg = ValueConfig(epochs=args.epochs, seed=args.seed)
    train, val, test = game24.split(game24.load_puzzles())
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {args.limit}")
        train, val = train[:args.limit], val[:args.limit]  # a quick run: its AUC and threshold read N puzzles
    if args.kind == "head":
        if args.synthetic_up_to is not None:
            raise ConfigError("train-value --kind head learns from the training puzzles' step lines: leave out "
                              "--synthetic-up-to (it adds puzzles to the network of its own)")
        return _train_value_head(args, train, val, out)
    if args.kind != "ar":
        raise ConfigError(f"train-value --kind {args.kind!r}: use head (a value head on --model's hidden states) "
                          "or leave it out (a network of its own)")
    if args.synthetic_up_to is not None:
        more = value_puzzles(train, args.synthetic_up_to, exclude=val + test)
        train = more if args.limit is None else more[:len(train) + args.limit]  # N of the extra multisets too

    def log(row):
        if not args.quiet:
            print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                  f"val accuracy {row['val_accuracy']:.3f}, val AUC {row['val_auc']:.3f} "
                  f"(three numbers left: {row['val_auc_3']:.3f})", flush=True)

    value = train_value(train, val, cfg, log=log)
    value.save(out, force=args.force)
    d, v = value.meta["data"], value.meta["val"]
    print(f"wrote {out}: trained on {d['train_states']:,} states of {d['train_puzzles']} training puzzles "
          f"({d['train_solvable']:.1%} solvable) in {value.meta['seconds']:.0f} s; on the {d['val_states']:,} states "
          f"of the validation puzzles AUC {v['val_auc']:.3f}; pruning threshold {value.threshold:.3f} loses "
          f"{v['live_pruned']:.1%} of live states and keeps {v['dead_kept']:.1%} of dead ones")
    return 0


def _knobs(args) -> dict:
    """The models and the methods' knobs, as solve and eval share them."""
    names = ("model", "mot_model", "diffusion_model", "mgdm_model", "mgdm_steps", "diffusion_steps", "repairs",
             "depth", "modes_model", "value", "threshold", "twist", "width", "proposals", "temperature",
             "creativity", "seed", "device")
    return {n: getattr(args, n) for n in names}


def _solve(args) -> int:
    from ..experiments.game24_eval import Game24EvalConfig, load_line_models, parse_method, run_method
    from ..tasks import game24, mgdm

    if not args.puzzle:
        raise ConfigError('give the puzzle: mot game24 solve "4 5 6 10"')
    puzzle = game24.parse_puzzle(" ".join(args.puzzle))
    method = args.method
    if args.budget < 1:
        raise ConfigError(f"--budget must be a whole number of token positions >= 1, got {args.budget}")
    if method != "solver":
        parse_method(method)  # one-line error for an unknown method or a bad knob
    cfg = Game24EvalConfig(methods=(method,) if method != "solver" else (), budgets=(args.budget,), **_knobs(args))
    models = load_line_models(cfg) if method != "solver" else None
    r = run_method(method, puzzle, args.budget, models=models, cfg=cfg)
    if args.json:
        print(json.dumps({"puzzle": puzzle, "method": method, "solutions": list(r.solutions.values()),
                          "positions": r.positions, "attempts": r.attempts, "seconds": r.seconds}))
        return 0
    head = f"{' '.join(map(str, puzzle))}: {method}"
    size = f"{r.attempts} attempts, {r.positions} positions of a budget of {args.budget}" if method != "solver" \
        else f"{r.attempts} step sequences"
    print(f"{head}: {len(r.solutions)} distinct solution(s); {size}; {r.seconds:.2f} s")
    for text in r.solutions.values():
        ans = game24.answer_of(text) or mgdm.replay(puzzle, text).expression().text()  # mgdm: step lines only
        print(f"  {ans} = 24")
    return 0 if r.solutions else 1


def _eval(args) -> int:
    from ..experiments.game24_eval import Game24EvalConfig, run_eval
    from .progress import tqdm_track

    try:
        budgets = tuple(int(x) for x in args.budgets.split(","))
    except ValueError:
        raise ConfigError(f"--budgets takes whole numbers separated by commas, got {args.budgets!r}") from None
    cfg = Game24EvalConfig(methods=tuple(args.methods.split(",")), split=args.split, c_puct=args.c_puct,
                           budgets=budgets, limit=args.limit, thoughts_temperature=args.thoughts_temperature,
                           out=args.out or "reports/game24", command=typed_command("game24"), **_knobs(args))
    res = run_eval(cfg, track=None if args.quiet else tqdm_track)
    print(f"report: {cfg.out}/report.md ({res['n_puzzles']} puzzles, {res['seconds']:.0f} s)")
    for r in res["rows"]:
        print(f"- {r['method']} @ {r['budget']}: {r['success']:.2f} solved, {r['distinct_correct']:.2f} distinct")
    return 0


def _export(args) -> int:
    from ..training.checkpoint import export_half

    if len(args.puzzle) != 1 or not args.out:
        raise ConfigError("usage: mot game24 export RUN --out DIR (a half-precision copy of RUN's best checkpoint)")
    dest = export_half(args.puzzle[0], args.out, force=args.force)
    size = (dest / "model.safetensors").stat().st_size
    print(f"wrote {dest} ({size / 2**20:.1f} MiB of float16 weights; loads as float32)")
    return 0


def _train_value_head(args, train, val, out: Path) -> int:
    from ..experiments.game24_eval import SHIPPED_RUNS
    from ..experiments.report import file_digest
    from ..tasks.value import train_value_head
    from ..training.checkpoint import load_checkpoint

    ck = load_checkpoint(args.model or SHIPPED_RUNS["model"], expect="ar")

    def log(row):
        if not args.quiet:
            print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val AUC {row['val_auc']:.3f} "
                  f"(three numbers left: {row['val_auc_3']:.3f}, two: {row['val_auc_2']:.3f})", flush=True)

    value = train_value_head(ck.model, ck.tokenizer, file_digest(ck.path / "model.safetensors"), train, val,
                             epochs=args.epochs, seed=args.seed, log=log)
    value.save(out, force=args.force)
    d, v = value.meta["data"], value.meta["val"]
    print(f"wrote {out}: a value head on {args.model or 'the shipped model'}, trained on {d['train_states']:,} step "
          f"lines of {d['train_puzzles']} training puzzles in {value.meta['seconds']:.0f} s; on the validation "
          f"puzzles' {d['val_states']:,} AUC {v['val_auc']:.3f} (three numbers left: {v['val_auc_3']:.3f})")
    return 0


def register(add) -> None:
    """Add ``game24``; ``add(name, fn)`` returns the new subparser."""
    g = add("game24", cmd_game24)
    g.add_argument("action", choices=("data", "train", "train-value", "solve", "eval", "export"))
    g.add_argument("puzzle", nargs="*", help="solve: the four numbers, e.g. \"4 5 6 10\"; export: the run")
    g.add_argument("--out", default=None, help="data: the text file; train: the run; train-value: the value's folder; "
                   "eval: the report folder")
    g.add_argument("--data", default=None, help=f"train: the traces (default {DEFAULT_DATA})")
    g.add_argument("--per-solution", type=int, default=2, help="data: step orders written per distinct solution")
    g.add_argument("--synthetic-up-to", type=int, default=None,
                   help="data: also every puzzle with numbers up to this (one above 13) that can make 24; "
                        "train-value: every multiset up to this, solvable or not; less the held-out multisets")
    g.add_argument("--kind", default="ar", help="train: ar (autoregressive), mot (its thought twin), diffusion, "
                   "mgdm (MGDM's recipe), modes (the MoT model's branches trained winner-takes-all) or codes (the "
                   "autoregressive model with learned mode codes, trained the same way); "
                   "train-value: head (on --model's hidden states, for the -value methods)")
    g.add_argument("--steps", type=int, default=None, help="train: steps (default: the preset's)")
    g.add_argument("--init", default=None,
                   help="train: a run to continue on --data up to --steps in all, in a new --out (kind modes / codes: "
                        "the MoT / autoregressive run to start from, default: shipped; kind mgdm: the autoregressive "
                        "run to adapt)")
    g.add_argument("--adapt", action="store_true", help="train --kind mgdm: start the denoiser from the "
                   "autoregressive model (--init, default the shipped one): bidirectional, shifted logits")
    g.add_argument("--anneal", type=int, default=0, help="train --kind mgdm --adapt: steps over which "
                   "attention opens from causal to bidirectional (default 0: at once)")
    g.add_argument("--tie-values", action="store_true", help="train --kind mgdm: mask each intermediate number "
                   "whole and everywhere it is written (its result and its later uses together)")
    g.add_argument("--suffix", type=float, default=0.0, help="train --kind mgdm: share of training rows that "
                   "mask a suffix of the answer instead of random positions (default 0)")
    g.add_argument("--modes", type=int, default=8, help="train --kind modes / codes: modes (mode b forces branch b / "
                   "is code b)")
    g.add_argument("--eps", type=float, default=None,
                   help="train --kind modes / codes: the relaxed winner-takes-all's share for the modes that lost "
                   "(default 0.1; (M - 1) / M assigns every answer a mode uniformly at random, the ablation)")
    g.add_argument("--minutes", type=float, default=None, help="train --kind modes / codes / mgdm: stop after this "
                   "many minutes")
    g.add_argument("--epochs", type=int, default=12, help="train-value: epochs over the training states")
    g.add_argument("--force", action="store_true",
                   help="train, train-value, export: overwrite an existing run, value or copy")
    g.add_argument("--method", default="distinct-value@0.7",
                   help="solve: distinct-value@0.7 (traces sampled without replacement at T = 0.7, the beam "
                   "pruned by the learned value: best on the validation rows), distinct, beam-value, beam, sample, "
                   "thoughts, modes, mcts, mcts-value, hybrid, hybrid-value, mgdm, random or solver (@ sets a knob: "
                   "sample@0.7)")
    g.add_argument("--methods", default="sample,beam,random", help="eval: methods, comma-separated")
    g.add_argument("--split", default="test", help="eval: test (rows 900-999) or val (rows 800-899, for tuning)")
    _method_arguments(g)
    g.add_argument("--limit", type=int, default=None,
                   help="eval: the first N test puzzles; train --kind modes/codes: the first N training and N "
                   "validation puzzles; train-value: those, and N of --synthetic-up-to's (a quick run)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--creativity", type=float, default=1.0, help="thoughts: the MoT model's creativity")
    g.add_argument("--thoughts-temperature", type=float, default=None,
                   help="eval: the MoT model's temperature (default: --temperature)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true", help="solve: one JSON line")
    g.add_argument("--device", default=None)
    g.add_argument("--quiet", action="store_true")


def _method_arguments(g) -> None:
    """The models ``solve`` and ``eval`` read, and the methods' knobs."""
    g.add_argument("--width", type=int, default=5, help="beam: states kept per level (the widest pass)")
    g.add_argument("--proposals", type=int, default=None,
                   help="beam, mcts, hybrid: next lines asked per state (default: chosen on the validation rows, "
                        "2 for beam and beam-value, 8 for mcts, mcts-value and hybrid)")
    g.add_argument("--budget", type=int, default=1800, help="solve: model token positions to spend")
    g.add_argument("--budgets", default="450,1800,7200", help="eval: budgets, comma-separated")
    g.add_argument("--model", default=None, help="an autoregressive run (sample, beam, mcts; default: shipped)")
    for flag, what in (("mot", "a MoT run (thoughts"), ("diffusion", "a diffusion run (hybrid, hybrid-value"),
                       ("mgdm", "a run of train --kind mgdm (mgdm"), ("modes", "a run of train --kind modes (modes")):
        g.add_argument(f"--{flag}-model", default=None, help=f"{what}; default: shipped)")
    for flag, n, what in (("mgdm-steps", 8, "mgdm: denoising steps (steps x length positions)"),
                          ("diffusion-steps", 4, "hybrid, hybrid-value: denoising steps of an infill"),
                          ("repairs", 0, "hybrid, hybrid-value: repairs of a trace the verifier rejects"),
                          ("depth", 2, "hybrid, hybrid-value: steps the search picks before diffusion")):
        g.add_argument(f"--{flag}", type=int, default=n, help=what)
    g.add_argument("--value", default=None,
                   help="a value from train-value (the -value methods; default: the shipped value head, with --model "
                   "the shipped set network), or solver: the exact solver as a ceiling (with --split val only)")
    g.add_argument("--c-puct", type=float, default=None, help="mcts, mcts-value: exploration constant (default 1.5)")
    g.add_argument("--threshold", type=float, default=None,
                   help="the -value methods: prune states the value puts below this "
                        "(default, chosen on the validation rows: 0.3 for distinct-value, else the value's own)")
    g.add_argument("--twist", type=float, default=None, help="distinct-value: weight kept rows by P(live) ** twist "
                   "(default: chosen on the validation rows)")
