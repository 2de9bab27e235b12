"""``mot compare``: the experiment of the project, end to end."""

from __future__ import annotations

import shlex
import sys

from ..errors import ConfigError
from .common import DATA_HELP
from .progress import TqdmTrainProgress, tqdm_track


def cmd_compare(args) -> int:
    """Train the dense baseline, the MoT twin and a reference model, sweep them, and write a report.

    Example: mot compare --data shakespeare --preset cpu-small --steps 2000 --out reports/shakespeare
    --quick runs a few-minute version (tiny counts) of the same pipeline.

    With --model (a registry name such as smollm2, or a Hugging Face directory) it compares thought
    branches of that pretrained LM (and branches that see each other, prompt operators, learned
    branches) with temperature, top-p, min-p, two-phase sampling and diverse beam search on
    open-ended prompts, by semantic diversity at matched reference NLL against the hull of every
    baseline point:
    mot compare --model smollm2 --limit 40 --branches 8 --max-new-tokens 64 --out reports/smollm2
    (--prompts: tuning, the shipped open_ended.jsonl and the default; held-out; or a JSONL file with
    a "prompt" field).
    """
    command = "mot " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["compare"] else ""
    if args.model is not None:
        return _compare_lm(args, command)
    if args.limit is not None or args.max_new_tokens is not None:
        raise ConfigError("--limit and --max-new-tokens go with --model (the LM comparison)")
    from ..experiments.compare import CompareConfig, run_compare

    if args.prompts is not None:
        try:
            args.prompts = int(args.prompts)
        except ValueError:
            raise ConfigError(f"--prompts: without --model, the number of validation prompts (an integer), "
                              f"got {args.prompts!r}") from None
    kw = {k: getattr(args, k) for k in ("data", "preset", "reuse", "device")}
    kw["out"] = args.out if args.out is not None else "reports/shakespeare"
    for k in ("steps", "prompts", "branches", "seeds", "new_tokens", "prompt_len"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    kw["command"] = command
    cfg = CompareConfig.quick(**kw) if args.quick else CompareConfig(**kw)
    res = run_compare(cfg) if args.quiet else run_compare(cfg, track=tqdm_track, train_progress=TqdmTrainProgress)
    print(f"report: {cfg.out}/report.md")
    for v in res["verdicts"]:
        print("-", v)
    return 0


def _compare_lm(args, command: str) -> int:
    from ..experiments.compare_lm import LMCompareConfig, run_compare_lm

    kw = {"model": args.model, "prompts": args.prompts, "limit": args.limit, "branches": args.branches,
          "max_new_tokens": args.max_new_tokens if args.max_new_tokens is not None else args.new_tokens,
          "seeds": args.seeds, "out": args.out, "device": args.device, "command": command,
          "first_seed": args.first_seed, "report_only": args.report_only or None}
    if args.grid is not None:
        from ..experiments.compare_lm import GRIDS

        if args.grid not in GRIDS:
            raise ConfigError(f"unknown --grid {args.grid!r}: choose one of {', '.join(GRIDS)}")
        kw["contenders"] = GRIDS[args.grid]()
        if args.grid == "confirm":  # the confirmation is about the setting it confirms
            from ..experiments.compare_lm import CONFIRM

            kw["primary"] = CONFIRM.label
        if args.grid == "heldout":  # the primary frozen in code before the run, on the held-out prompts
            from ..experiments.compare_lm import HELDOUT_PRIMARY

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
    """Add ``compare``; ``add(name, fn)`` returns the new subparser."""
    c = add("compare", cmd_compare)
    c.add_argument("--data", default="shakespeare", help=DATA_HELP)
    c.add_argument("--preset", default="cpu-small", help="a dense preset; its -mot twin is the MoT contender")
    c.add_argument("--steps", type=int, default=None, help="training steps of each model (default 2000)")
    c.add_argument("--out", default=None, help="report directory (default reports/shakespeare, or "
                                                 "reports/smollm2 with --model)")
    c.add_argument("--reuse", action="store_true", help="load the models in OUT/runs instead of training")
    c.add_argument("--prompts", default=None, help="validation prompts (default 100); with --model a prompt set: "
                                                    "tuning (default), held-out, or a JSONL file of "
                                                    "{\"prompt\": ...} rows")
    c.add_argument("--model", default=None, help="compare sampling knobs and thought branches of this pretrained "
                                                 "LM (a registry name or a directory) instead")
    c.add_argument("--limit", type=int, default=None, help="with --model: the first N prompts")
    c.add_argument("--grid", default=None, help="with --model: the settings to run, default (the tuning report's, "
                                                "~3.5 h on 2 CPU cores), wide (~10x: a coarse sweep), confirm "
                                                "(the best thought setting against every baseline) or heldout "
                                                "(the frozen primary against every baseline, on --prompts held-out)")
    c.add_argument("--first-seed", type=int, default=None, help="with --model: seeds start here (another value: "
                                                                 "fresh draws of every setting)")
    c.add_argument("--max-new-tokens", type=int, default=None, help="with --model: tokens per branch (default 32)")
    c.add_argument("--branches", type=int, default=None, help="branches per prompt, N (default 8)")
    c.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3)")
    c.add_argument("--prompt-len", type=int, default=None)
    c.add_argument("--new-tokens", type=int, default=None)
    c.add_argument("--report-only", action="store_true", help="with --model: write the report from the settings "
                   "already run in OUT/settings (the rest are listed as not run), generating nothing")
    c.add_argument("--quick", action="store_true", help="a few-minute version with tiny counts (used by the tests)")
    c.add_argument("--device", default=None)
    c.add_argument("--quiet", action="store_true")
