"""``mot compare``: the experiment of the project, end to end."""

from __future__ import annotations

import shlex

from ..errors import ConfigError
from .common import DATA_HELP, typed_command
from .progress import TqdmTrainProgress, tqdm_track


def cmd_compare(args) -> int:
    """Do thought branches beat sampling? Two experiments: mot compare char | mot compare lm.

      mot compare char --data shakespeare --preset cpu-small --steps 2000 --out reports/shakespeare
          trains the dense baseline, the MoT twin, a reference model and a diffusion model on characters,
          sweeps them and writes a report (--quick: a few-minute version);
      mot compare lm --model smollm2 --out reports/smollm2
          compares thought branches of a pretrained LM (and branches that see each other, prompt
          operators, learned branches) with temperature, top-p, min-p, two-phase sampling and diverse
          beam search on open-ended prompts, by semantic diversity at matched reference NLL against
          the hull of every baseline point.

    `mot compare char --help` and `mot compare lm --help` list each experiment's flags.
    """
    return _compare_char(args) if args.experiment == "char" else _compare_lm(args, typed_command("compare"))


def _compare_char(args) -> int:
    from ..experiments.compare import CompareConfig, run_compare

    kw = {k: getattr(args, k) for k in ("data", "preset", "reuse", "device")}
    kw["out"] = args.out if args.out is not None else "reports/shakespeare"
    for k in ("steps", "prompts", "branches", "seeds", "new_tokens", "prompt_len"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    kw["command"] = typed_command("compare")
    cfg = CompareConfig.quick(**kw) if args.quick else CompareConfig(**kw)
    res = run_compare(cfg) if args.quiet else run_compare(cfg, track=tqdm_track, train_progress=TqdmTrainProgress)
    print(f"report: {cfg.out}/report.md")
    for v in res["verdicts"]:
        print("-", v)
    return 0


def legacy_hint(argv: list[str]) -> str | None:
    """For ``mot compare`` without ``char`` or ``lm`` (the spelling before the split): the command to
    type instead, in one line; None for anything else."""
    if argv[:1] != ["compare"] or (len(argv) > 1 and argv[1] in ("char", "lm", "-h", "--help")):
        return None
    rest = " ".join(shlex.quote(a) for a in argv[1:])
    which = "lm" if "--model" in argv else "char"
    return f"mot compare now names its experiment first: mot compare {which} {rest}".rstrip()


def _compare_lm(args, command: str) -> int:
    from ..experiments.compare_lm import LMCompareConfig, run_compare_lm

    kw = {"model": args.model, "prompts": args.prompts, "limit": args.limit, "branches": args.branches,
          "max_new_tokens": args.max_new_tokens,
          "seeds": args.seeds, "out": args.out, "device": args.device, "command": command,
          "first_seed": args.first_seed, "report_only": args.report_only or None}
    if args.grid is not None:
        from ..experiments.lm_grid import GRIDS

        if args.grid not in GRIDS:
            raise ConfigError(f"unknown --grid {args.grid!r}: choose one of {', '.join(GRIDS)}")
        kw["contenders"] = GRIDS[args.grid]()
        if args.grid == "confirm":  # the confirmation is about the setting it confirms
            from ..experiments.lm_grid import CONFIRM

            kw["primary"] = CONFIRM.label
        if args.grid == "heldout":  # the primary frozen in code before the run, on the held-out prompts
            from ..experiments.lm_grid import HELDOUT_PRIMARY

            kw["primary"] = HELDOUT_PRIMARY.label
            kw["prompts"] = kw.get("prompts") or "held-out"
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    kw = {k: v for k, v in kw.items() if v is not None}
    cfg = LMCompareConfig.quick(**kw) if args.quick else LMCompareConfig(**kw)
    res = run_compare_lm(cfg, track=None if args.quiet else tqdm_track)
    print(f"report: {cfg.out}/report.md ({len(res['rows'])} settings, {res['seconds']:.0f} s)")
    for s in res["skipped"]:
        print(f"- skipped {s['label']}: {s['why']}")
    return 0


def register(add) -> None:
    """Add ``compare`` with its two experiments; ``add(name, fn)`` returns the new subparser."""
    c = add("compare", cmd_compare)
    sub = c.add_subparsers(dest="experiment", required=True, metavar="{char,lm}")
    ch = sub.add_parser("char", help="character models: MoT vs temperature, trained here",
                        description="Train the dense baseline, its MoT twin, a reference model and a masked-diffusion "
                        "model on characters, sweep them and write a report.")
    ch.add_argument("--data", default="shakespeare", help=DATA_HELP)
    ch.add_argument("--preset", default="cpu-small", help="a dense preset; its -mot twin is the MoT contender")
    ch.add_argument("--steps", type=int, default=None, help="training steps of each model (default 2000)")
    ch.add_argument("--out", default=None, help="report directory (default reports/shakespeare)")
    ch.add_argument("--reuse", action="store_true", help="load the models in OUT/runs instead of training")
    ch.add_argument("--prompts", type=int, default=None, help="validation prompts (default 100)")
    ch.add_argument("--branches", type=int, default=None, help="branches per prompt, N (default 8)")
    ch.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3)")
    ch.add_argument("--prompt-len", type=int, default=None, help="characters of each validation prompt")
    ch.add_argument("--new-tokens", type=int, default=None, help="characters each branch writes")
    lm = sub.add_parser("lm", help="a pretrained LM (smollm2): thoughts vs every sampling baseline",
                        description="Compare thought branches of a pretrained LM with every sampling baseline, "
                        "by semantic diversity at matched reference NLL against the hull of all baseline points.")
    lm.add_argument("--model", required=True, help="a registry name (smollm2) or a Hugging Face directory")
    lm.add_argument("--out", default=None, help="report directory (default reports/smollm2)")
    lm.add_argument("--prompts", default=None, help="a prompt set: tuning (default), held-out, or a JSONL file of "
                                                    "{\"prompt\": ...} rows")
    lm.add_argument("--limit", type=int, default=None, help="the first N prompts")
    lm.add_argument("--grid", default=None, help="the settings to run: default (the tuning report's, ~3.5 h on 2 "
                                                 "CPU cores), wide (~10x: a coarse sweep), confirm (the best thought "
                                                 "setting against every baseline) or heldout (the frozen primary "
                                                 "against every baseline, on --prompts held-out)")
    lm.add_argument("--first-seed", type=int, default=None, help="seeds start here (another value: fresh draws)")
    lm.add_argument("--max-new-tokens", type=int, default=None, help="tokens per branch (default 32)")
    lm.add_argument("--branches", type=int, default=None, help="branches per prompt, N (default 8)")
    lm.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 2)")
    lm.add_argument("--report-only", action="store_true", help="write the report from the settings already run in "
                    "OUT/settings (the rest are listed as not run), generating nothing")
    for p in (ch, lm):
        p.add_argument("--quick", action="store_true", help="a minute-long version with tiny counts (the tests')")
        p.add_argument("--device", default=None)
        p.add_argument("--quiet", action="store_true")
