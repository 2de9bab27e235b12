"""``mot game24 eval``: every method on the test puzzles at several budgets, with a report.

Per method and budget: the success rate over the puzzles (Wilson 95% interval), the mean number of
distinct correct solutions found per puzzle, the positions spent and the wall time. The random-steps
floor and the exact solver (the ceiling, no budget) are printed beside them, with Tree of Thoughts'
GPT-4 figures on the same 100 puzzles as anchors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..tasks import game24
from ..tasks import search as S
from .report import finite_json

MODEL_METHODS = ("sample", "thoughts", "beam", "mcts", "hybrid")
METHODS = (*MODEL_METHODS, "random")
# Tree of Thoughts (Yao et al., 2023), GPT-4 on the same 100 puzzles (rows 900-999)
TOT_ANCHORS = {"IO prompting": 0.073, "CoT": 0.04, "CoT best of 100": 0.49, "ToT (b=5)": 0.74}


@dataclass
class Game24EvalConfig:
    model: str | None = None  # an AR run (sample, beam)
    mot_model: str | None = None  # a MoT run (thoughts)
    diffusion_model: str | None = None  # a diffusion run (hybrid)
    diffusion_steps: int = 16
    methods: tuple[str, ...] = ("sample", "beam", "random")
    budgets: tuple[int, ...] = (450, 1800, 7200)
    limit: int | None = None  # the first N test puzzles
    temperature: float = 1.0
    creativity: float = 1.0
    width: int = 5
    proposals: int = 8
    seed: int = 0
    out: str = "reports/game24"
    device: str | None = None
    command: str = ""
    puzzles: list = field(default_factory=list)  # overrides the test set (tests)

    def __post_init__(self):
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
        self.budgets = tuple(self.budgets)
        for b in self.budgets:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ConfigError(f"a budget is a whole number of token positions >= 1, got {b!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")


def run_method(method: str, puzzle, budget: int, *, lm=None, mot_lm=None, infiller=None,
               cfg: Game24EvalConfig) -> S.SearchResult:
    """One method on one puzzle at one budget."""
    task = S.Game24Task()
    b = S.Budget(budget)
    if method == "random":
        return S.random_steps(task, puzzle, b, seed=cfg.seed)
    if method == "solver":
        return S.exact(puzzle)
    if method == "sample":
        return S.sample_traces(lm, task, puzzle, b, seed=cfg.seed)
    if method == "thoughts":
        return S.sample_traces(mot_lm, task, puzzle, b, seed=cfg.seed, method="thoughts")
    if method == "hybrid":
        return S.hybrid(lm, infiller, task, puzzle, b, proposals=cfg.proposals, seed=cfg.seed)
    if method == "mcts":
        return S.mcts(lm, task, puzzle, b, proposals=cfg.proposals, seed=cfg.seed)
    if method == "beam":
        return S.beam_search(lm, task, puzzle, b, width=cfg.width, proposals=cfg.proposals, seed=cfg.seed)
    raise ConfigError(f"unknown method {method!r}: choose from {', '.join((*METHODS, 'solver'))}")


def load_line_models(cfg: Game24EvalConfig):
    """``(lm, mot_lm, infiller)`` for the methods that need them (an error names the missing flag)."""
    from ..device import resolve_device
    from ..training.checkpoint import load_checkpoint

    def load_run(run, expect, device):
        return load_checkpoint(run, device=resolve_device(device), expect=expect)

    needs = {"model": ("sample", "beam", "mcts", "hybrid"), "mot_model": ("thoughts",), "diffusion_model": ("hybrid",)}
    how = {"model": "--model RUN (an autoregressive run trained with mot game24 train)",
           "mot_model": "--mot-model RUN (a MoT run trained with mot game24 train --kind mot)",
           "diffusion_model": "--diffusion-model RUN (trained with mot game24 train --kind diffusion)"}
    for flag, methods in needs.items():  # every missing flag is named before anything is loaded
        used = [m for m in cfg.methods if m in methods]
        if used and not getattr(cfg, flag):
            raise ConfigError(f"{', '.join(used)} need{'s' if len(used) == 1 else ''} {how[flag]}")
    lm = mot_lm = infiller = None
    if any(m in needs["model"] for m in cfg.methods):
        ck = load_run(cfg.model, expect="ar", device=cfg.device)
        lm = S.LineModel(ck.model, ck.tokenizer, temperature=cfg.temperature)
    if "thoughts" in cfg.methods:
        ck = load_run(cfg.mot_model, expect="ar", device=cfg.device)
        if not ck.model.config.has_thoughts:
            raise ConfigError(f"{cfg.mot_model} has no thought layers: train it with mot game24 train --kind mot")
        mot_lm = S.LineModel(ck.model, ck.tokenizer, temperature=cfg.temperature, creativity=cfg.creativity)
    if "hybrid" in cfg.methods:
        ck = load_run(cfg.diffusion_model, expect="diffusion", device=cfg.device)
        infiller = S.Infiller(ck.model, ck.tokenizer, steps=cfg.diffusion_steps, temperature=cfg.temperature)
    return lm, mot_lm, infiller


def run_eval(cfg: Game24EvalConfig, track: Callable[[list, str], Iterable] | None = None) -> dict:
    t0 = time.time()
    puzzles = cfg.puzzles or game24.split(game24.load_puzzles())[1]
    puzzles = puzzles[:cfg.limit] if cfg.limit else puzzles
    lm, mot_lm, infiller = load_line_models(cfg)
    rows = []
    jobs = [(m, b) for m in cfg.methods for b in cfg.budgets]
    for m, b in (track(jobs, "methods x budgets") if track else jobs):
        found, distinct, spent, secs = 0, 0, 0, 0.0
        for p in puzzles:
            r = run_method(m, p, b, lm=lm, mot_lm=mot_lm, infiller=infiller, cfg=cfg)
            found += r.solved
            distinct += len(r.solutions)
            spent += r.positions
            secs += r.seconds
        n = len(puzzles)
        rows.append({"method": m, "budget": b, "success": found / n, "ci": list(S.wilson(found, n)),
                     "distinct_correct": distinct / n, "positions": spent / n, "seconds": secs / n})
    ceiling = [len(game24.solve(tuple(sorted(p)))) for p in puzzles]
    res = {"config": {k: v for k, v in asdict(cfg).items() if k != "puzzles"}, "n_puzzles": len(puzzles),
           "rows": rows, "solver": {"success": sum(c > 0 for c in ceiling) / len(puzzles),
                                    "distinct_correct": sum(ceiling) / len(puzzles)},
           "tot_gpt4": TOT_ANCHORS, "seconds": time.time() - t0}
    write_report(res, Path(cfg.out))
    return res


def write_report(res: dict, out: Path) -> None:
    from .report import _plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(finite_json(res), indent=1), encoding="utf-8")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in res["rows"]):
        rs = [r for r in res["rows"] if r["method"] == m]
        xs = [r["budget"] for r in rs]
        ys = [r["success"] for r in rs]
        err = [[r["success"] - r["ci"][0] for r in rs], [r["ci"][1] - r["success"] for r in rs]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label=m)
    ax.axhline(res["solver"]["success"], color="k", ls=":", label="exact solver (ceiling)")
    ax.axhline(TOT_ANCHORS["ToT (b=5)"], color="gray", ls="--", label="ToT + GPT-4 (b=5), paper")
    ax.set_xscale("log")
    ax.set_xlabel("budget: model token positions per puzzle")
    ax.set_ylabel(f"success rate on {res['n_puzzles']} test puzzles")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "success.png", dpi=120)
    plt.close(fig)
    c = res["config"]
    L = ["# Game of 24: search over thoughts at equal budgets", ""]
    if c.get("command"):
        L += ["Command:", "", f"    {c['command']}", ""]
    L += [f"{res['n_puzzles']} test puzzles (rows 900-999 of Tree of Thoughts' 24.csv); budget = model token "
          "positions per puzzle (prompts included); success = at least one verified solution; 95% Wilson intervals.",
          "", "![success by budget](success.png)", "",
          "| method | budget | success | distinct correct / puzzle | positions / puzzle | s / puzzle |",
          "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['method']} | {r['budget']} | {r['success']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] | "
                 f"{r['distinct_correct']:.2f} | {r['positions']:.0f} | {r['seconds']:.2f} |")
    L += [f"| exact solver (ceiling) | - | {res['solver']['success']:.2f} | {res['solver']['distinct_correct']:.2f} "
          "| 0 | - |", "", "Tree of Thoughts with GPT-4 on the same puzzles (paper): " +
          ", ".join(f"{k} {v:.1%}" for k, v in TOT_ANCHORS.items()) + ".", ""]
    (out / "report.md").write_text("\n".join(L) + "\n", encoding="utf-8")
