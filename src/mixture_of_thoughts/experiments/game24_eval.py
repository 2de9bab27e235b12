"""``mot game24 eval``: every method on the test puzzles at several budgets, with a report.

Per method and budget: the success rate over the puzzles (Wilson 95% interval), the mean number of
distinct correct solutions found per puzzle, the positions spent and the wall time. The random-steps
floor and the exact solver (the ceiling, no budget) are printed beside them, with Tree of Thoughts'
GPT-4 figures on the same 100 puzzles as anchors.

Every method is anytime (:mod:`..tasks.search`), so each runs once per puzzle at the largest budget
and is read off at the smaller ones. A method may carry its knob after ``@``: ``sample@0.7`` samples
at temperature 0.7, ``thoughts@2`` runs the thought model at creativity 2 (``beam@0.8``, ``mcts@0.8``
and ``hybrid@0.8`` set their proposal temperature). ``distinct`` is best-of-N over traces sampled
without replacement (stochastic beam search: no two attempts of a batch are the same text;
``distinct@0.7`` at temperature 0.7). ``beam-value`` and ``mcts-value`` are beam search
and MCTS ranking and pruning states with a learned value (:mod:`..tasks.value`; ``--value``, default
with the shipped model the shipped value head, which reads the model's own hidden states for free, else
the shipped set network, whose reads are charged to the budget); ``distinct-value`` is the beam of
``distinct`` pruned by it, each time a row ends a step line. ``mgdm`` is the masked-diffusion model alone,
trained with MGDM's recipe (:mod:`..tasks.mgdm`; ``mgdm@0.5`` samples its tokens at temperature 0.5,
the default 0 takes the most likely ones). ``modes`` is a model trained winner-takes-all
over modes (:mod:`..tasks.modes`; ``--modes-model``): the thought model's branches, or the autoregressive
model's learned mode codes; consecutive rows decode with consecutive modes, without thought noise, at the
knob's temperature. Each method's per-puzzle record is saved in
``OUT/methods/`` and reused when the same method, models, puzzles and settings come again, so an
interrupted evaluation resumes and the report can be rebuilt without running a model.

The goals the report answers (issues: search over thoughts on a verifiable task; a learned value,
more data and diffusion that reasons):

1. the best method solves at least 74% of the puzzles at the smallest budget and 90% at the middle one
   (Tree of Thoughts + GPT-4 solves 74% at b = 5);
2. at the smallest and the middle budget, search with the learned value (beam-value, mcts-value; any
   search when no value method ran) beats best-of-N sampling with disjoint intervals;
   thought branches (and trained modes) find more distinct correct solutions than temperature sampling at the same
   success rate (the temperature line interpolated at the thought setting's success; paired
   bootstrap over puzzles);
3. every method beats the random-steps floor at every budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..tasks import game24
from ..tasks import search as S
from ..tasks.modes import code_base, modes_of
from .report import file_digest, finite_json, load_record, save_record
from .stats import bootstrap_indices, matched, resampled_means, wilson

MODEL_METHODS = ("sample", "distinct", "thoughts", "modes", "beam", "mcts", "beam-value", "mcts-value",
                 "distinct-value", "hybrid", "hybrid-value", "mgdm")
METHODS = (*MODEL_METHODS, "random")
SEARCH_METHODS = ("beam", "mcts", "beam-value", "mcts-value", "distinct-value", "hybrid-value")
VALUE_METHODS = ("beam-value", "mcts-value", "distinct-value", "hybrid-value")
SAMPLING_METHODS = ("sample", "distinct", "thoughts", "modes")
# Tree of Thoughts (Yao et al., 2023), GPT-4 on the same 100 puzzles (rows 900-999)
TOT_ANCHORS = {"IO prompting": 0.073, "CoT": 0.04, "CoT best of 100": 0.49, "ToT (b=5)": 0.74}
GOAL_SMALLEST, GOAL_MIDDLE = 0.74, 0.90  # success the best method should reach at the smallest and middle budget
SHIPPED = Path(__file__).parent.parent / "assets" / "game24"
# the models `mot game24 solve/eval` use when no run is given: trained here, shipped in the package
SHIPPED_RUNS = {"model": SHIPPED / "ar", "mot_model": SHIPPED / "mot", "diffusion_model": SHIPPED / "diffusion",
                "mgdm_model": SHIPPED / "mgdm", "modes_model": SHIPPED / "modes"}
# Next lines asked per state, chosen on the validation rows (docs/report-game24-val/proposals*): beam
# search reaches more states and deeper with 2 (0.80 vs 0.59 at 1,800 with the value), MCTS's progressive
# widening needs more to count (0.44 with 2 vs 0.53 with 8); the hybrid's first level is a beam's.
PROPOSALS = {"beam": 2, "beam-value": 2, "mcts": 8, "mcts-value": 8, "hybrid": 8, "hybrid-value": 8}
# The value's pruning threshold where a method's own was chosen on the validation rows
# (docs/report-game24-val/shipped-30min-distinct-value*): the pruned beam of distinct-value solves 0.72 /
# 0.75 / 0.80 / 0.80 at 450 with 0 / the value's own 0.045 / 0.3 / 0.5, the same 0.97 at 1,800; the
# others keep the value's own.
THRESHOLDS = {"distinct-value": 0.3}
TWIST = 0.0  # distinct-value's weight on the value's P(live), chosen on the validation rows
NEEDS = {"model": ("sample", "distinct", "beam", "mcts", *VALUE_METHODS, "hybrid"), "mot_model": ("thoughts",),
         "diffusion_model": ("hybrid", "hybrid-value"), "mgdm_model": ("mgdm",), "modes_model": ("modes",)}


@dataclass(frozen=True)
class MethodSpec:
    """A method and its optional knob: the temperature, or a thought model's creativity."""

    name: str
    knob: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.knob is None else f"{self.name}@{self.knob:g}"


def parse_method(text: str) -> MethodSpec:
    """``"sample"``, ``"sample@0.7"`` (temperature), ``"thoughts@2"`` (creativity), ... (one-line errors)."""
    name, at, knob = text.strip().partition("@")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: choose from {', '.join(METHODS)} (a knob after @, e.g. "
                          "sample@0.7 or thoughts@2)")
    if not at:
        return MethodSpec(name)
    if name == "random":
        raise ConfigError(f"{text!r}: the random floor has no knob; write random")
    try:
        v = float(knob)
    except ValueError:
        raise ConfigError(f"{text!r}: after @ comes a number (a temperature, or a creativity for thoughts)") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and name not in ("thoughts", "mgdm")):
        what = {"thoughts": "creativity >= 0", "mgdm": "temperature >= 0 (0: greedy)"}.get(name, "temperature > 0")
        raise ConfigError(f"{text!r}: the knob must be a {what}")
    return MethodSpec(name, v)


@dataclass
class Game24EvalConfig:
    model: str | None = None  # an AR run (sample, beam, mcts, hybrid); default: the shipped one
    mot_model: str | None = None  # a MoT run (thoughts); default: the shipped one
    diffusion_model: str | None = None  # a diffusion run (hybrid); default: the shipped one
    # the hybrid's knobs, chosen on the validation rows (docs/report-game24-val/hybrid-*): the steps its search
    # picks before diffusion writes the rest (at 1 the diffusion model solves nothing), the denoising steps of
    # an infill (a row costs steps x length positions), and the repairs of a trace the verifier rejects
    depth: int = 2
    diffusion_steps: int = 4
    repairs: int = 0
    mgdm_model: str | None = None  # a denoiser trained with MGDM's recipe (mgdm); default: the shipped one
    mgdm_steps: int = 8  # its denoising steps (a row costs steps x length positions)
    modes_model: str | None = None  # a MoT run trained winner-takes-all over modes (modes); default: shipped
    methods: tuple[str, ...] = ("sample", "beam", "random")
    budgets: tuple[int, ...] = (450, 1800, 7200)
    split: str = "test"  # "test" (rows 900-999) or "val" (rows 800-899: tune here)
    limit: int | None = None  # the first N puzzles
    temperature: float = 1.0
    creativity: float = 1.0
    thoughts_temperature: float | None = None  # the thought model's temperature (default: temperature)
    width: int = 5
    proposals: int | None = None  # next lines per state (default: PROPOSALS, the method's own)
    value: str | None = None  # a value trained with mot game24 train-value (beam-value, mcts-value); default: shipped
    threshold: float | None = None  # the value's pruning threshold (default: the one chosen on validation)
    twist: float | None = None  # distinct-value: kept rows weighted by P(live) ** twist (default: TWIST)
    c_puct: float | None = None  # MCTS's exploration constant (default: the search's own)
    seed: int = 0
    out: str = "reports/game24"
    device: str | None = None
    command: str = ""
    puzzles: list = field(default_factory=list)  # overrides the split (tests)

    def __post_init__(self):
        self.methods = tuple(self.methods)
        self.specs = [parse_method(m) for m in self.methods]
        labels = [s.label for s in self.specs]
        if len(set(labels)) < len(labels):
            raise ConfigError(f"a method is listed twice in {', '.join(self.methods)}")
        self.budgets = tuple(self.budgets)
        if not self.budgets:
            raise ConfigError("give at least one budget")
        for b in self.budgets:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ConfigError(f"a budget is a whole number of token positions >= 1, got {b!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.split not in ("test", "val"):
            raise ConfigError(f"--split must be test or val, got {self.split!r}")
        if self.proposals is not None and (isinstance(self.proposals, bool) or not isinstance(self.proposals, int)
                                           or self.proposals < 1):
            raise ConfigError(f"--proposals must be a whole number >= 1, got {self.proposals!r}")
        if self.c_puct is not None and not (np.isfinite(self.c_puct) and self.c_puct >= 0):
            raise ConfigError(f"--c-puct must be a number >= 0, got {self.c_puct}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"--threshold is a probability in [0, 1], got {self.threshold}")
        if self.twist is not None and not (np.isfinite(self.twist) and self.twist >= 0):
            raise ConfigError(f"--twist must be a number >= 0, got {self.twist}")
        for name, low in (("mgdm_steps", 1), ("diffusion_steps", 1), ("repairs", 0), ("depth", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {v!r}")
        if self.depth > 2:
            raise ConfigError(f"--depth is 1 or 2 (the hybrid's diffusion writes the last step), got {self.depth}")
        for name in ("temperature", "thoughts_temperature"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {v}")

    def threshold_for(self, spec: MethodSpec, value) -> float | None:
        """The value's pruning threshold for ``spec``: ``threshold``, the method's own or the value's
        (None without a value)."""
        if value is None:
            return None
        if self.threshold is not None:
            return self.threshold
        return THRESHOLDS.get(spec.name, value.threshold)

    def twist_for(self, spec: MethodSpec) -> float:
        """distinct-value's weight on the value: ``twist`` or the one chosen on validation (0 elsewhere)."""
        if spec.name != "distinct-value":
            return 0.0
        return TWIST if self.twist is None else self.twist

    def proposals_for(self, spec: MethodSpec) -> int:
        """Next lines asked per state by ``spec`` (beam, mcts, hybrid): ``proposals`` or the method's own."""
        return self.proposals if self.proposals is not None else PROPOSALS[spec.name]

    def lm_settings(self, spec: MethodSpec) -> tuple[float, float]:
        """``(temperature, creativity)`` of the line model ``spec`` uses."""
        if spec.name == "thoughts":
            t = self.temperature if self.thoughts_temperature is None else self.thoughts_temperature
            return t, self.creativity if spec.knob is None else spec.knob
        if spec.name == "mgdm":  # greedy tokens by default, as MGDM decodes; the knob samples them
            return (0.0 if spec.knob is None else spec.knob), self.creativity
        return (self.temperature if spec.knob is None else spec.knob), self.creativity


class Models:
    """The checkpoints the methods need, loaded once; line models made per (temperature, creativity)."""

    def __init__(self, cfg: Game24EvalConfig):
        from ..device import resolve_device
        from ..training.checkpoint import load_checkpoint

        how = {"model": "--model RUN (an autoregressive run trained with mot game24 train)",
               "mot_model": "--mot-model RUN (a MoT run trained with mot game24 train --kind mot)",
               "diffusion_model": "--diffusion-model RUN (trained with mot game24 train --kind diffusion)",
               "mgdm_model": "--mgdm-model RUN (trained with mot game24 train --kind mgdm)",
               "modes_model": "--modes-model RUN (trained with mot game24 train --kind modes or codes)"}
        expect = {"model": "ar", "mot_model": "ar", "diffusion_model": "diffusion", "mgdm_model": "diffusion",
                  "modes_model": "ar"}
        self.cfg, self.paths, self.shown, self.ck, self._lines = cfg, {}, {}, {}, {}
        names = [s.name for s in cfg.specs]
        for flag, methods in NEEDS.items():  # every missing model is named before anything is loaded
            used = [m for m in dict.fromkeys(names) if m in methods]
            if not used:
                continue
            shipped = SHIPPED_RUNS[flag] if (SHIPPED_RUNS[flag] / "config.json").is_file() else None
            path = getattr(cfg, flag) or shipped
            if path is None:
                raise ConfigError(f"{', '.join(used)} need{'s' if len(used) == 1 else ''} {how[flag]}")
            self.paths[flag] = str(path)
            mine = getattr(cfg, flag)
            self.shown[flag] = str(path) if mine else f"{path.relative_to(SHIPPED.parent.parent)} (shipped)"
        self.value = None
        if any(n in VALUE_METHODS for n in names):
            from ..tasks.value import SHIPPED as VALUE_SHIPPED
            from ..tasks.value import SHIPPED_HEAD, load_value

            if cfg.value is None and cfg.model is None and (SHIPPED_HEAD / "value.safetensors").is_file():
                # the shipped value head, for the shipped model (a head reads only the model it was trained on)
                self.value, self.value_path = load_value(SHIPPED_HEAD), SHIPPED_HEAD
                self.shown["value head"] = f"{SHIPPED_HEAD.relative_to(SHIPPED.parent.parent)} (shipped)"
            elif cfg.value == "solver":  # the ceiling of a value, on the validation rows only
                if cfg.split != "val" or cfg.puzzles:
                    raise ConfigError("--value solver (the exact solver as a value) is a diagnostic for the "
                                      "validation rows: add --split val (it never runs on test puzzles)")
                from ..tasks.value import SolverValue

                self.value, self.value_path = SolverValue(), None
                self.shown["value"] = "the exact solver (diagnostic ceiling)"
            else:
                self.value = load_value(cfg.value)  # a clear error names a missing or unreadable value
                self.value_path = Path(cfg.value) if cfg.value else VALUE_SHIPPED
                self.shown["value"] = cfg.value or f"{VALUE_SHIPPED.relative_to(SHIPPED.parent.parent)} (shipped)"
        for flag, path in self.paths.items():
            ck = load_checkpoint(path, device=resolve_device(cfg.device), expect=expect[flag])
            if flag == "mot_model" and not ck.model.config.has_thoughts:
                raise ConfigError(f"{path} has no thought layers: train it with mot game24 train --kind mot")
            if flag == "mgdm_model" and "mgdm" not in ck.meta:
                raise ConfigError(f"{path} is not an MGDM denoiser: train one with mot game24 train --kind mgdm")
            if flag == "modes_model" and not modes_of(ck):
                raise ConfigError(f"{path} has no trained modes: train it with mot game24 train --kind modes "
                                  "(or --kind codes)")
            self.ck[flag] = ck
        self.head = self.value if hasattr(self.value, "bind") else None  # the value, when it is a head on the model
        if self.head is not None:  # it reads only the model it was trained on
            ck = self.ck["model"]
            self.head.bind(ck.model, ck.tokenizer, file_digest(ck.path / "model.safetensors"))

    def value_for(self, spec: MethodSpec):
        """The value ``spec`` searches with (None for a method without one)."""
        return self.value if spec.name in VALUE_METHODS else None

    def line(self, flag: str, temperature: float, creativity: float | None = None) -> S.LineModel:
        key = (flag, temperature, creativity)
        if key not in self._lines:
            ck = self.ck[flag]
            modes = flag == "modes_model"
            self._lines[key] = S.LineModel(ck.model, ck.tokenizer, temperature=temperature, creativity=creativity,
                                           modes=modes_of(ck) if modes else 0, code=code_base(ck) if modes else None)
        return self._lines[key]

    def infiller(self, temperature: float) -> S.Infiller:
        key = ("diffusion_model", temperature)
        if key not in self._lines:
            ck = self.ck["diffusion_model"]
            self._lines[key] = S.Infiller(ck.model, ck.tokenizer, steps=self.cfg.diffusion_steps,
                                          temperature=temperature)
        return self._lines[key]

    def denoiser(self, temperature: float):
        from ..tasks.mgdm import Denoiser

        key = ("mgdm_model", temperature)
        if key not in self._lines:
            ck = self.ck["mgdm_model"]
            self._lines[key] = Denoiser.from_checkpoint(ck, steps=self.cfg.mgdm_steps, temperature=temperature)
        return self._lines[key]

    def fingerprint(self, spec: MethodSpec) -> dict[str, str]:
        """The sha256 of each model file ``spec`` uses (a saved record is reused only for the same models)."""
        out = {}
        for flag, methods in NEEDS.items():
            if spec.name in methods:
                f = self.ck[flag].path / "model.safetensors"
                out[flag] = file_digest(f)
        if spec.name in VALUE_METHODS:
            path = self.value_path
            out["value"] = file_digest(path / "value.safetensors") if path else "solver"
        return out


def load_line_models(cfg: Game24EvalConfig) -> Models:
    """The models ``cfg``'s methods need (an error names the missing flag)."""
    return Models(cfg)


def run_method(spec: MethodSpec | str, puzzle, budget: int, *, models: Models | None,
               cfg: Game24EvalConfig) -> S.SearchResult:
    """One method on one puzzle at one budget."""
    if spec == "solver":
        return S.exact(puzzle)
    spec = parse_method(spec) if isinstance(spec, str) else spec
    task = S.Game24Task()
    b = S.Budget(budget)
    T, c = cfg.lm_settings(spec)
    if spec.name == "random":
        r = S.random_steps(task, puzzle, b, seed=cfg.seed)
    elif spec.name == "sample":
        r = S.sample_traces(models.line("model", T), task, puzzle, b, seed=cfg.seed)
    elif spec.name in ("distinct", "distinct-value"):
        value = models.value_for(spec)
        r = S.distinct_traces(models.line("model", T), task, puzzle, b, seed=cfg.seed, value=value,
                              threshold=cfg.threshold_for(spec, value), twist=cfg.twist_for(spec))
    elif spec.name == "thoughts":
        r = S.sample_traces(models.line("mot_model", T, c), task, puzzle, b, seed=cfg.seed, method="thoughts")
    elif spec.name == "modes":  # row with seed s decodes with mode s mod M, no thought noise
        r = S.sample_traces(models.line("modes_model", T, 0.0), task, puzzle, b, seed=cfg.seed, method="modes")
    elif spec.name == "mgdm":
        r = S.denoised_answers(models.denoiser(T), puzzle, b, seed=cfg.seed)
    elif spec.name in ("hybrid", "hybrid-value"):
        value = models.value_for(spec)
        r = S.hybrid(models.line("model", T), models.infiller(T), task, puzzle, b, proposals=cfg.proposals_for(spec),
                     seed=cfg.seed, value=value, threshold=cfg.threshold_for(spec, value), repairs=cfg.repairs,
                     depth=cfg.depth)
    elif spec.name in ("mcts", "mcts-value"):
        value = models.value_for(spec)
        r = S.mcts(models.line("model", T), task, puzzle, b, proposals=cfg.proposals_for(spec), seed=cfg.seed,
                   value=value, threshold=cfg.threshold_for(spec, value),
                   **({} if cfg.c_puct is None else {"c_puct": cfg.c_puct}))
    else:
        value = models.value_for(spec)
        r = S.beam_search(models.line("model", T), task, puzzle, b, width=cfg.width, proposals=cfg.proposals_for(spec),
                          seed=cfg.seed, value=value, threshold=cfg.threshold_for(spec, value))
    r.method = spec.label
    return r


def eval_puzzles(cfg: Game24EvalConfig) -> list[tuple[int, ...]]:
    if cfg.puzzles:
        ps = list(cfg.puzzles)
    else:
        _, val, test = game24.split(game24.load_puzzles())
        ps = test if cfg.split == "test" else val
    return ps[:cfg.limit] if cfg.limit else ps


def _record_key(cfg: Game24EvalConfig, spec: MethodSpec, models: Models, puzzles) -> dict:
    T, c = cfg.lm_settings(spec)
    key = {"method": spec.label, "budget": max(cfg.budgets), "seed": cfg.seed,
           "puzzles": [list(p) for p in puzzles], "models": models.fingerprint(spec)}
    if spec.name != "random":
        key["temperature"] = T
    if spec.name == "thoughts":
        key["creativity"] = c
    if spec.name == "modes":
        key["modes"] = models.line("modes_model", T, 0.0).modes
    if spec.name in PROPOSALS:
        key["proposals"] = cfg.proposals_for(spec)
    if spec.name in ("beam", "beam-value"):
        key["width"] = cfg.width
    if spec.name in ("mcts", "mcts-value") and cfg.c_puct is not None:  # records at the default keep their key
        key["c_puct"] = cfg.c_puct
    if spec.name in VALUE_METHODS:
        key["threshold"] = cfg.threshold_for(spec, models.value_for(spec))
    if spec.name == "distinct-value" and cfg.twist_for(spec):  # records without a twist keep their key
        key["twist"] = cfg.twist_for(spec)
    if spec.name in ("hybrid", "hybrid-value"):
        key.update(diffusion_steps=cfg.diffusion_steps, repairs=cfg.repairs, depth=cfg.depth)
    if spec.name == "mgdm":
        key["mgdm_steps"] = cfg.mgdm_steps
    return key


def method_records(cfg: Game24EvalConfig, spec: MethodSpec, models: Models, puzzles, out: Path,
                   track=None) -> list[dict]:
    """Per puzzle, what ``spec`` found at the largest budget (read back from ``out`` when saved)."""
    key = _record_key(cfg, spec, models, puzzles)
    path = out / "methods" / (spec.label.replace("@", "_at_") + ".json")
    saved = load_record(path, key)
    if saved is not None and isinstance(saved.get("puzzles"), list):
        return saved["puzzles"]
    recs = []
    for p in (track(puzzles, spec.label) if track else puzzles):
        r = run_method(spec, p, max(cfg.budgets), models=models, cfg=cfg)
        recs.append({"puzzle": list(p), "found": r.found, "solutions": r.solutions, "attempts": r.attempts,
                     "positions": r.positions, "seconds": r.seconds, "clock": r.clock})
    save_record(path, {"puzzles": recs}, key=key)
    return recs


def at_budget(rec: dict, budget: int) -> tuple[bool, int, float, float]:
    """``(solved, distinct solutions, positions, seconds)`` of one puzzle's record at ``budget``."""
    n = sum(at <= budget for at in rec["found"].values())
    # the run at ``budget`` stops in the first charge that reaches it (or where the method stopped)
    stop = next((t for s, t in rec["clock"] if s >= budget), rec["clock"][-1][1] if rec["clock"] else 0.0)
    return n > 0, n, min(rec["positions"], budget), stop


def budget_rows(label: str, recs: list[dict], budgets) -> list[dict]:
    rows = []
    for b in budgets:
        per = [at_budget(r, b) for r in recs]
        found = sum(s for s, _, _, _ in per)
        n = len(per)
        rows.append({"method": label, "budget": b, "success": found / n, "ci": list(wilson(found, n)),
                     "distinct_correct": sum(d for _, d, _, _ in per) / n, "positions": sum(p for *_, p, _ in per) / n,
                     "seconds": sum(t for *_, t in per) / n})
    return rows


def run_eval(cfg: Game24EvalConfig, track: Callable[[list, str], Iterable] | None = None) -> dict:
    t0 = time.time()
    puzzles = eval_puzzles(cfg)
    models = load_line_models(cfg)
    out = Path(cfg.out)
    records = {s.label: method_records(cfg, s, models, puzzles, out, track) for s in cfg.specs}
    budgets = sorted(cfg.budgets)
    rows = [r for label, recs in records.items() for r in budget_rows(label, recs, budgets)]
    ceiling = [len(game24.solve(tuple(sorted(p)))) for p in puzzles]
    res = {"config": {k: v for k, v in asdict(cfg).items() if k != "puzzles"}, "models": models.shown,
           "n_puzzles": len(puzzles), "rows": rows,
           "solver": {"success": sum(c > 0 for c in ceiling) / len(puzzles),
                      "distinct_correct": sum(ceiling) / len(puzzles)},
           "tot_gpt4": TOT_ANCHORS, "seconds": time.time() - t0,
           "method_seconds": {k: sum(r["seconds"] for r in v) for k, v in records.items()}}
    res["goals"] = goals(records, budgets, rows)
    write_report(res, out)
    return res


# ------------------------------------------------------------------------------------ the goals


def goals(records: dict[str, list[dict]], budgets: list[int], rows: list[dict], *, resamples: int = 1000,
          seed: int = 0) -> dict:
    """The goals, computed (see the module docstring)."""
    by = {(r["method"], r["budget"]): r for r in rows}
    labels = list(records)
    kind = {lab: lab.split("@")[0] for lab in labels}
    out: dict = {}
    small, mid = budgets[0], budgets[len(budgets) // 2]
    models = [lab for lab in labels if kind[lab] != "random"]
    if models:
        out["best_method"] = []
        for b, goal in dict.fromkeys([(small, GOAL_SMALLEST), (mid, GOAL_MIDDLE)]):
            best = max(models, key=lambda lab: by[(lab, b)]["success"])
            r = by[(best, b)]
            out["best_method"].append({"budget": b, "best": best, "success": r["success"], "ci": r["ci"],
                                       "goal": goal, "met": r["success"] >= goal})
    valued = [lab for lab in labels if kind[lab] in VALUE_METHODS]
    search = valued or [lab for lab in labels if kind[lab] in SEARCH_METHODS]
    sampling = [lab for lab in labels if kind[lab] in SAMPLING_METHODS]
    if search and sampling:
        out["search_vs_sampling"] = []
        for b in dict.fromkeys([small, mid]):
            s = max(search, key=lambda lab: by[(lab, b)]["success"])
            n = max(sampling, key=lambda lab: by[(lab, b)]["success"])
            rs, rn = by[(s, b)], by[(n, b)]
            out["search_vs_sampling"].append({
                "budget": b, "value": bool(valued), "search": s, "search_success": rs["success"],
                "search_ci": rs["ci"], "sampling": n, "sampling_success": rn["success"], "sampling_ci": rn["ci"],
                "met": rs["ci"][0] > rn["ci"][1]})
    temps = [lab for lab in labels if kind[lab] == "sample"]
    thoughts = [lab for lab in labels if kind[lab] in ("thoughts", "modes")]
    if temps and thoughts:
        out["thoughts_vs_temperature"] = _thoughts_vs_temperature(records, temps, thoughts, budgets, resamples, seed)
    floor = [lab for lab in labels if kind[lab] == "random"]
    if floor and models:
        f = floor[0]
        losers = [(lab, b) for lab in models for b in budgets if by[(lab, b)]["success"] <= by[(f, b)]["success"]]
        out["above_floor"] = {"met": not losers, "not_above": [f"{lab} @ {b}" for lab, b in losers],
                              "floor": {b: by[(f, b)]["success"] for b in budgets}}
    return out


def _thoughts_vs_temperature(records, temps, thoughts, budgets, resamples, seed) -> list[dict]:
    """Per thought setting and budget: its distinct correct solutions per puzzle minus the temperature
    line's at the same success rate (:func:`.stats.matched` on the temperature line; no comparison
    outside the line's range), with a 95% paired bootstrap interval over puzzles and the fraction of
    resamples that had a comparison (``covered``: the statistics module's NaN policy)."""
    idx = bootstrap_indices(len(next(iter(records.values()))), resamples, seed)
    res = []
    for b in budgets:
        means = {lab: resampled_means(np.array([at_budget(r, b)[:2] for r in records[lab]], float), idx)
                 for lab in temps + thoughts}  # (resamples + 1, [success, distinct])
        line = np.stack([means[t] for t in temps], 1)  # (resamples + 1, temps, 2)
        for th in thoughts:
            m = matched(means[th][:, 0], means[th][:, 1], line[..., 0], line[..., 1], frontier="line")
            entry = {"setting": th, "budget": b, "success": float(means[th][0, 0]),
                     "distinct": float(means[th][0, 1]), "temperature_line": None if m is None else m["baseline"]}
            if m is not None:
                entry |= {"delta": m["delta"], "ci": m["ci"], "covered": m["covered"]}
            res.append(entry)
    return res


# ------------------------------------------------------------------------------------ the report


def write_report(res: dict, out: Path) -> None:
    from .report import agg_pyplot

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(finite_json(res), indent=1), encoding="utf-8")
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m in dict.fromkeys(r["method"] for r in res["rows"]):
        rs = [r for r in res["rows"] if r["method"] == m]
        xs = [r["budget"] for r in rs]
        ys = [r["success"] for r in rs]
        err = [[r["success"] - r["ci"][0] for r in rs], [r["ci"][1] - r["success"] for r in rs]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=m, ls=":" if m == "random" else "-")
    ax.axhline(res["solver"]["success"], color="k", ls=":", label="exact solver (ceiling)")
    ax.axhline(TOT_ANCHORS["ToT (b=5)"], color="gray", ls="--", label="ToT + GPT-4 (b=5), paper")
    ax.set_xscale("log")
    ax.set_xlabel("budget: model token positions per puzzle")
    ax.set_ylabel(f"success rate on {res['n_puzzles']} puzzles")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "success.png", dpi=120)
    plt.close(fig)
    kinds = {r["method"]: r["method"].split("@")[0] for r in res["rows"]}
    if any(k in ("thoughts", "modes") for k in kinds.values()):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for m, k in kinds.items():
            if k in SAMPLING_METHODS:
                rs = [r for r in res["rows"] if r["method"] == m]
                ax.plot([r["success"] for r in rs], [r["distinct_correct"] for r in rs],
                        "o-" if k == "sample" else "s--", label=m)
        ax.set_xlabel("success rate")
        ax.set_ylabel("distinct correct solutions per puzzle")
        ax.set_title("each point a budget; thought branches and modes vs temperature")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "distinct.png", dpi=120)
        plt.close(fig)
    (out / "report.md").write_text(report_markdown(res), encoding="utf-8")


def report_markdown(res: dict) -> str:
    c = res["config"]
    L = ["# Game of 24: search over thoughts at equal budgets", ""]
    if c.get("command"):
        L += ["Command:", "", f"    {c['command']}", ""]
    split = "rows 900-999, the test set" if c.get("split", "test") == "test" else "rows 800-899, the validation set"
    L += [f"{res['n_puzzles']} puzzles ({split} of Tree of Thoughts' 24.csv); budget = model token "
          "positions per puzzle (prompts included); success = at least one verified solution; 95% Wilson "
          "intervals. Models: " + ", ".join(f"{k} `{v}`" for k, v in res.get("models", {}).items()) + ".",
          "", "![success by budget](success.png)", ""]
    L += _goals_markdown(res.get("goals", {}))
    L += ["## All results", "",
          "| method | budget | success | distinct correct / puzzle | positions / puzzle | s / puzzle |",
          "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['method']} | {r['budget']} | {r['success']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] | "
                 f"{r['distinct_correct']:.2f} | {r['positions']:.0f} | {r['seconds']:.2f} |")
    L += [f"| exact solver (ceiling) | - | {res['solver']['success']:.2f} | {res['solver']['distinct_correct']:.2f} "
          "| 0 | - |", "", "Tree of Thoughts with GPT-4 on the same puzzles (paper): " +
          ", ".join(f"{k} {v:.1%}" for k, v in TOT_ANCHORS.items()) + ".", "",
          f"Wall time: {res['seconds']:.0f} s for this report; per method (all puzzles, largest budget): " +
          ", ".join(f"{k} {v:.0f} s" for k, v in res.get("method_seconds", {}).items()) + ".", ""]
    return "\n".join(L) + "\n"


def _goals_markdown(g: dict) -> list[str]:
    if not g:
        return []
    L = ["## The goals", ""]
    for m in g.get("best_method", []):
        L.append(f"- **{m['goal']:.0%} at {m['budget']} positions: {'met' if m['met'] else 'not met'}.** "
                 f"Best: {m['best']} {m['success']:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}].")
    for s in g.get("search_vs_sampling", []):
        what = "Search with the learned value" if s["value"] else "Search"
        L.append(f"- **{what} beats best-of-N at {s['budget']} positions, intervals disjoint: "
                 f"{'met' if s['met'] else 'not met'}.** Best search {s['search']} {s['search_success']:.2f} "
                 f"[{s['search_ci'][0]:.2f}, {s['search_ci'][1]:.2f}]; best sampling {s['sampling']} "
                 f"{s['sampling_success']:.2f} [{s['sampling_ci'][0]:.2f}, {s['sampling_ci'][1]:.2f}].")
    if "thoughts_vs_temperature" in g:
        L.append("- **Thought branches (thoughts) and trained modes (modes) vs temperature, distinct correct "
                 "solutions per puzzle at the same success rate** (the temperature line read at the thought "
                 "setting's success; 95% paired bootstrap):")
        for e in g["thoughts_vs_temperature"]:
            if e["temperature_line"] is None:
                L.append(f"  - {e['setting']} @ {e['budget']}: success {e['success']:.2f} is outside the temperature "
                         "line's range: no matched comparison.")
            else:
                ci = f" [{e['ci'][0]:+.2f}, {e['ci'][1]:+.2f}]" if e.get("ci") else ""
                if e.get("covered", 1.0) < 1.0:
                    ci += f" (compared in {e['covered']:.0%} of the resamples)"
                L.append(f"  - {e['setting']} @ {e['budget']}: {e['distinct']:.2f} vs {e['temperature_line']:.2f} "
                         f"at success {e['success']:.2f}: {e['delta']:+.2f}{ci}")
    if "above_floor" in g:
        a = g["above_floor"]
        L.append(f"- **Every method above the random-steps floor at every budget: {'met' if a['met'] else 'not met'}"
                 f".**" + ("" if a["met"] else " Not above: " + ", ".join(a["not_above"]) + "."))
    return L + [""]
