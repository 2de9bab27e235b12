"""``mot compare``: the experiment of the project, end to end."""

from __future__ import annotations

import shlex
import sys

from .common import DATA_HELP
from .progress import TqdmTrainProgress, tqdm_track


def cmd_compare(args) -> int:
    """Train the dense baseline, the MoT twin and a reference model, sweep them, and write a report.

    Example: mot compare --data shakespeare --preset cpu-small --steps 2000 --out reports/shakespeare
    --quick runs a few-minute version (tiny counts) of the same pipeline.
    """
    from ..experiments.compare import CompareConfig, run_compare

    kw = {k: getattr(args, k) for k in ("data", "preset", "out", "reuse", "device")}
    for k in ("steps", "prompts", "branches", "seeds", "new_tokens", "prompt_len"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    kw["command"] = "mot " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["compare"] else ""
    cfg = CompareConfig.quick(**kw) if args.quick else CompareConfig(**kw)
    res = run_compare(cfg) if args.quiet else run_compare(cfg, track=tqdm_track, train_progress=TqdmTrainProgress)
    print(f"report: {cfg.out}/report.md")
    for v in res["verdicts"]:
        print("-", v)
    return 0


def register(add) -> None:
    """Add ``compare``; ``add(name, fn)`` returns the new subparser."""
    c = add("compare", cmd_compare)
    c.add_argument("--data", default="shakespeare", help=DATA_HELP)
    c.add_argument("--preset", default="cpu-small", help="a dense preset; its -mot twin is the MoT contender")
    c.add_argument("--steps", type=int, default=None, help="training steps of each model (default 2000)")
    c.add_argument("--out", default="reports/shakespeare")
    c.add_argument("--reuse", action="store_true", help="load the models in OUT/runs instead of training")
    c.add_argument("--prompts", type=int, default=None, help="validation prompts (default 100)")
    c.add_argument("--branches", type=int, default=None, help="branches per prompt, N (default 8)")
    c.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3)")
    c.add_argument("--prompt-len", type=int, default=None)
    c.add_argument("--new-tokens", type=int, default=None)
    c.add_argument("--quick", action="store_true", help="a few-minute version with tiny counts (used by the tests)")
    c.add_argument("--device", default=None)
    c.add_argument("--quiet", action="store_true")
