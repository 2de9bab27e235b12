"""The settings ``mot compare lm`` runs: what a contender is (:class:`Contender`), the families and
grids (``--grid default / wide / confirm / heldout``, the tests' quick grid) and the primary settings
declared before the runs. The runner, the statistics and the report are in :mod:`.compare_lm`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

LAYER_SETS = ("all", "lower", "upper")


NOISE_MODES = ("token", "persistent", "orthogonal")


@dataclass(frozen=True)
class Contender:
    """One setting. ``family`` + ``group`` name its frontier line; ``knob`` names the swept field."""

    family: str  # temperature | top-p | min-p | two-phase | thoughts
    knob: str
    temperature: float = 1.0
    top_p: float | None = None
    min_p: float | None = None
    hot_temperature: float | None = None  # two-phase: temperature of the first hot_tokens tokens
    hot_tokens: int = 0
    creativity: float | None = None  # thoughts: None = no graft
    layers: str = "all"  # thoughts: all | lower | upper
    noise_mode: str = "token"  # thoughts: token | persistent | orthogonal
    noise_tokens: int | None = None  # thoughts: noise on the first m generated tokens only
    # fields added after the first report: left out of a setting's cache key while at their defaults
    diversity: float | None = None  # diverse-beam / repel: the Hamming penalty between branches
    diverse_tokens: int | None = None  # diverse-beam / repel: the penalty on the first m tokens only
    group_width: int = 1  # diverse-beam: beams per group
    window: str = "step"  # diverse-beam / repel: tokens of this step, or of the whole prefix so far
    ways: tuple[str, ...] | None = None  # vary: the prompt operators applied to the greedy draft
    learned: str | None = None  # learned: the directory of trained branches

    @property
    def group(self) -> str:
        """The frontier line: every field but the knob."""
        if self.family == "temperature":
            return "temperature"
        if self.family in ("diverse-beam", "repel"):
            dec = f"W={self.group_width}" if self.family == "diverse-beam" else f"T={self.temperature:g}"
            until = f", first {self.diverse_tokens} tokens" if self.diverse_tokens is not None else ""
            win = ", prefix" if self.window == "prefix" else ""
            return f"{self.family} ({dec}{win}{until})"
        if self.family == "vary":
            noise = f", {self.noise_mode} noise" if self.creativity else ""
            return f"vary ({'+'.join(self.ways or ())}, T={self.temperature:g}{noise})"
        if self.family == "learned":
            dec = "greedy" if self.temperature == 0 else f"T={self.temperature:g}"
            return f"learned ({Path(self.learned or '').name}, {dec})"
        if self.family == "top-p":
            return f"top-p (T={self.temperature:g})"
        if self.family == "min-p":
            return f"min-p (T={self.temperature:g})"
        if self.family == "two-phase":
            return f"two-phase (T={self.hot_temperature:g} then {self.temperature:g})"
        dec = "greedy" if self.temperature == 0 else f"T={self.temperature:g}"
        until = f", first {self.noise_tokens} tokens" if self.noise_tokens is not None else ""
        return f"thoughts ({dec}, {self.noise_mode}, {self.layers} layers{until})"

    @property
    def label(self) -> str:
        return f"{self.group} {self.knob}={getattr(self, self.knob):g}"

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown contender family {self.family!r}: one of {', '.join(FAMILIES)}")
        if self.family in ("diverse-beam", "repel"):
            if self.diversity is None or not self.diversity >= 0:
                raise ConfigError(f"{self.family}: needs a diversity >= 0, got {self.diversity!r}")
            if (self.family == "diverse-beam") != (self.temperature == 0):
                raise ConfigError(f"{self.label}: diverse-beam decodes at temperature 0, repel samples at T > 0")
            if self.window not in ("step", "prefix"):
                raise ConfigError(f"{self.label}: window must be 'step' or 'prefix'")
        if self.family == "vary" and not self.ways:
            raise ConfigError(f"{self.label}: vary needs at least one way")
        if self.family == "learned" and not self.learned:
            raise ConfigError(f"{self.label}: learned needs the directory of trained branches")
        if self.family == "thoughts" or (self.family == "vary" and self.creativity):
            if self.creativity is None or self.creativity < 0:
                raise ConfigError(f"{self.label}: thoughts need a creativity >= 0")
            if self.layers not in LAYER_SETS:
                raise ConfigError(f"{self.label}: layers must be one of {LAYER_SETS}")
            if self.noise_mode not in NOISE_MODES:
                raise ConfigError(f"{self.label}: noise_mode must be one of {NOISE_MODES}")
        if self.family == "two-phase" and (self.hot_temperature is None or self.hot_tokens < 1):
            raise ConfigError(f"{self.label}: two-phase needs hot_temperature and hot_tokens >= 1")


FAMILIES = ("temperature", "top-p", "min-p", "two-phase", "diverse-beam", "thoughts", "repel", "vary", "learned")


_LATER_FIELDS = {f.name: f.default for f in dataclasses.fields(Contender)
                 if f.name in ("diversity", "diverse_tokens", "group_width", "window", "ways", "learned")}


def setting_key(c: Contender) -> dict:
    """``c``'s fields as a dict, without the fields added after the first report while they hold their
    defaults: the cache key of every setting run before them stays the same."""
    d = dataclasses.asdict(c)
    return {k: v for k, v in d.items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


# the thought setting declared before the full run as the one the verdict is about (the pilots' best)
PRIMARY = Contender("thoughts", "creativity", temperature=0.0, creativity=2.0, noise_mode="persistent", layers="all")


def _sweep(family, knob, values, **fixed) -> list[Contender]:
    return [Contender(family, knob, **{**fixed, knob: v}) for v in values]


def dense_baselines() -> list[Contender]:
    """Every baseline family, dense where the contenders land (reference NLL ~1.0-1.8 nats): temperature
    0 and 0.3 ... 1.0 in steps of 0.1, top-p 0.5 ... 0.9 at T = 1, min-p at T = 1, 1.5 and 2 with
    several p (the higher the temperature, the larger the p that keeps the NLL in range), two-phase,
    and diverse beam search."""
    c = _sweep("temperature", "temperature", (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
    c += _sweep("top-p", "top_p", (0.5, 0.6, 0.7, 0.8, 0.9), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.05, 0.1, 0.2, 0.3), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1, 0.2, 0.3), temperature=1.5)
    c += _sweep("min-p", "min_p", (0.2, 0.3, 0.4), temperature=2.0)
    c += _sweep("two-phase", "hot_tokens", (4,), hot_temperature=1.5, temperature=0.3)
    # diverse beam search (Vijayakumar et al. 2018): 8 groups of one beam, Hamming penalty swept; at
    # lambda = 4 it is still at NLL ~1.0, so the sweep goes on up
    c += _sweep("diverse-beam", "diversity", (0.5, 1.0, 2.0, 4.0, 8.0, 16.0), temperature=0.0)
    return c


def default_contenders() -> tuple[Contender, ...]:
    """The report's grid on a 2-core CPU (46 prompts x 8 branches x 2 seeds x 32 tokens, ~5 min a
    setting): the dense baselines of :func:`dense_baselines` and the thought settings, picked from
    pilots (small prompt sets): per-token noise saturates below c = 2, persistent noise collapses into
    loops from c = 4 on."""
    c = dense_baselines()
    c += _sweep("thoughts", "creativity", (1.5,), temperature=0.0, noise_mode="token", layers="all")
    c += _sweep("thoughts", "creativity", (2.0, 3.0), temperature=0.0, noise_mode="token", layers="all",
                noise_tokens=8)
    c += _sweep("thoughts", "creativity", (2.0,), temperature=0.0, noise_mode="persistent", layers="all")
    c += _sweep("thoughts", "creativity", (2.0,), temperature=0.0, noise_mode="orthogonal", layers="all")
    for layers in ("lower", "upper"):
        c += _sweep("thoughts", "creativity", (2.0,), temperature=0.0, noise_mode="persistent", layers=layers)
    # low-temperature decoding with thought noise (the setting closest to the frontier, sampled at T = 0.3)
    c += _sweep("thoughts", "creativity", (2.0,), temperature=0.3, noise_mode="persistent", layers="upper")
    return (*c, *coordinated_contenders())


VARY_WAYS = ("style", "angle", "constraint", "example")


LEARNED = "smollm2-wta8"  # shipped in assets/branches (mot train-branches ... --objective wta --branches 8)


def coordinated_contenders() -> list[Contender]:
    """Branches that see each other, and the seed's "noising an idea": repulsive sampling (each branch
    penalised for the tokens the branches before it chose, on the first 8 tokens, where the idea is
    decided, or at every step), and ``mot vary``'s four prompt operators on the greedy answer, with and
    without thought noise. (Diverse beam search, the established way for parallel hypotheses to see
    each other, is a baseline: :func:`dense_baselines`.)"""
    c = _sweep("repel", "diversity", (1.0, 3.0), temperature=0.5, diverse_tokens=8, window="prefix")
    c += _sweep("repel", "diversity", (2.0,), temperature=0.3, window="step")
    c += _sweep("vary", "temperature", (0.3, 0.7), ways=VARY_WAYS)
    c += _sweep("vary", "creativity", (2.0,), temperature=0.3, ways=VARY_WAYS, noise_mode="persistent", layers="upper")
    # learned branches (hf.learned): the shipped 8 branches trained by relaxed winner-take-all
    c += _sweep("learned", "temperature", (0.0, 0.5), learned=LEARNED)
    return c


def wide_contenders() -> tuple[Contender, ...]:
    """A wider grid (about 80 settings, ~10x the default's time): a coarse sweep to pick settings from."""
    c = _sweep("temperature", "temperature", (0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5))
    c += _sweep("top-p", "top_p", (0.5, 0.7, 0.8, 0.9, 0.95), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.02, 0.05, 0.1, 0.2, 0.3), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1, 0.2, 0.3, 0.4), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (1, 2, 4, 8), hot_temperature=1.5, temperature=0.3)
    for temp in (0.0, 0.5):
        for mode in NOISE_MODES:
            for layers in LAYER_SETS:
                c += _sweep("thoughts", "creativity", (0.5, 1.0, 2.0, 3.0), temperature=temp, noise_mode=mode,
                            layers=layers)
    c += _sweep("thoughts", "creativity", (1.0, 2.0, 4.0), temperature=0.0, noise_mode="token", layers="all",
                noise_tokens=8)
    return tuple(c)


CONFIRM = Contender("thoughts", "creativity", temperature=0.3, creativity=2.0, noise_mode="persistent",
                    layers="upper")


def confirm_contenders() -> tuple[Contender, ...]:
    """The best thought setting of the 2026-12 report against every baseline family, dense (run it with
    another ``--first-seed``: a confirmation on fresh draws)."""
    return (*dense_baselines(), CONFIRM)


# Declared 2026-12-05 before any run on the held-out prompts, chosen on the tuning set (the best contender
# against the pooled hull there: +0.024 semantic distance, +0.53 distinct-k, +1.4 points degenerate).
HELDOUT_PRIMARY = Contender("repel", "diversity", temperature=0.5, diversity=3.0, diverse_tokens=8, window="prefix")


def heldout_contenders() -> tuple[Contender, ...]:
    """The one verdict on ``--prompts held-out``: every baseline family, dense, against the frozen
    primary (:data:`HELDOUT_PRIMARY`) and the runner-up mechanisms of the tuning set."""
    c = [dataclasses.replace(HELDOUT_PRIMARY, diversity=1.0)]
    c += _sweep("learned", "temperature", (0.5,), learned=LEARNED)
    return (*dense_baselines(), HELDOUT_PRIMARY, *c)


GRIDS = {"default": default_contenders, "wide": wide_contenders, "confirm": confirm_contenders,
         "heldout": heldout_contenders}


def quick_contenders() -> tuple[Contender, ...]:
    """A tiny grid touching every family (the tests and ``--quick``). Sized for a tiny *random* model,
    whose logits barely feel MLP noise: its strong creativity (40) would break a real model's text."""
    c = _sweep("temperature", "temperature", (0.0, 1.5))
    c += _sweep("top-p", "top_p", (0.9,), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1,), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (2,), hot_temperature=1.5, temperature=0.3)
    c += _sweep("thoughts", "creativity", (1.0, 40.0), temperature=0.0, noise_mode="token", layers="all")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="persistent", layers="upper")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="orthogonal", layers="all")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="token", layers="lower",
                noise_tokens=2)
    c += _sweep("diverse-beam", "diversity", (3.0,), temperature=0.0)
    c += _sweep("repel", "diversity", (3.0,), temperature=1.0, diverse_tokens=2, window="prefix")
    c += _sweep("vary", "temperature", (0.5,), ways=("style", "angle"))
    return tuple(c)


BASELINES = ("temperature", "top-p", "min-p", "two-phase", "diverse-beam")


CONTENDERS = ("thoughts", "repel", "vary", "learned")  # the families judged against the baselines' hull
