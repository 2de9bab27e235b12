"""Compute and price of full training versus grafting (DESIGN §6) — pure arithmetic.

This module imports neither ``torch`` nor ``transformers`` (``mot cost`` works without the ``[hf]`` extra).

Formulas (N parameters used per token, D tokens; a multiply-add counts as 2 FLOPs; attention's
context-length term and the embedding lookup are ignored, as in Kaplan et al. 2020, §2.1):

* **Full training**: ``C_full = 6·N·D`` — forward ``2·N·D``, backward ``4·N·D`` (``2·N·D`` for the
  gradients with respect to the activations, ``2·N·D`` for the gradients with respect to the weights).
* **Grafting** (only the MoT parameters, ``N_t = trainable_fraction · N``, are trained, on ``D_g``
  tokens)::

      C_graft = 2·N·D_g                 forward through the whole model
              + 2·N_bp·D_g              activation gradients, from the loss down to the first trainable layer
              + 2·N_t·D_g               weight gradients of the trainable parameters only

  ``N_bp = backprop_fraction · N`` is the part of the model the activation gradients must pass
  through: every layer *above* the lowest trainable one (frozen or not), plus the LM head. Grafting
  every layer (``--layers all``) makes that nearly the whole model, so the honest default is
  ``backprop_fraction = 1``: ``C_graft = 4·N·D_g + 2·N_t·D_g``. The often-quoted
  ``2·N·D_g + 4·N_t·D_g`` is the lower limit where only the trainable layers need activation
  gradients (``N_bp = N_t``); it holds only when the grafted layers sit at the very top.
* **Time and price**: ``GPU-hours = C / (peak_tflops · 1e12 · mfu) / 3600``; ``price = GPU-hours ·
  usd_per_gpu_hour``. ``mfu`` is the model-FLOPs utilisation actually achieved (0.3–0.5 is typical
  for well-tuned dense training).

For a grafted MoT model ``N`` should be the *active* parameters per token (k branches of E), which
is larger than the original model's when k > 1; the figures here take ``N`` as given.

**Measured runs** (:func:`read_measured_run`, :func:`compare_measured`, ``mot cost --measured RUN``):
a ``mot graft`` output directory logs, in ``metrics.jsonl``, the tokens processed and the wall time
so far at each logged step. The grafting formula's FLOPs for those tokens divided by that wall time
give the throughput the run actually achieved, ``R_run``; the GPU is assumed to sustain
``R_gpu = peak_tflops·1e12·mfu``. Scaling the run's wall time linearly to ``D`` tokens and dividing
by ``R_gpu / R_run`` gives GPU-hours equal to the formula's by construction: the measurement pins
down the tokens, the time and ``R_run``, while the GPU figure still rests on the assumed MFU. Given
the peak FLOP/s of the run's own device, the run's MFU follows, and so does a second GPU estimate
at that MFU (the wall time scaled by the ratio of the two peaks). ``N`` defaults to the run's
recorded ``n_params`` (every parameter of the grafted model, all E branches included, so an upper
bound on the active parameters when k < E).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CheckpointError, ConfigError

SECONDS_PER_HOUR = 3600.0
TERA = 1e12
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal D ≈ 20·N
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}

# Parameter counts of well-known models (GPT-2 small as reported by OpenAI; Llama-1 7B exact count).
PRESETS = {"gpt2": 124e6, "llama-7b": 6.74e9}


def parse_count(s: str | float | int, name: str = "value") -> float:
    """``"124M"`` -> 1.24e8. Suffixes K, M, B (or G), T, case-insensitive; plain numbers and 1e9 work too.

    Raises:
        ConfigError: naming ``name`` when ``s`` is not a positive count.
    """
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        v = float(s)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(s))
        if not m:
            raise ConfigError(f"{name} must be a number with an optional K/M/B/T suffix (e.g. 124M, 10B), got {s!r}")
        v = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be > 0, got {s!r}")
    return v


@dataclass
class Hardware:
    """The accelerator: dense peak throughput, achieved utilisation, and rental price."""

    peak_tflops: float = 989.0  # H100 SXM, dense BF16
    mfu: float = 0.4
    usd_per_gpu_hour: float = 2.5

    def __post_init__(self):
        if not self.peak_tflops > 0:
            raise ConfigError(f"gpu_tflops must be > 0, got {self.peak_tflops}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"mfu must be in (0, 1], got {self.mfu}")
        if not self.usd_per_gpu_hour >= 0:
            raise ConfigError(f"gpu_hour_usd must be >= 0, got {self.usd_per_gpu_hour}")

    def gpu_hours(self, flops: float) -> float:
        return flops / (self.peak_tflops * TERA * self.mfu) / SECONDS_PER_HOUR


@dataclass
class Estimate:
    """One line of the comparison: what is trained, on how many tokens, at what cost."""

    name: str
    flops: float
    gpu_hours: float
    usd: float
    tokens: float
    formula: str


def full_training_flops(params: float, tokens: float) -> float:
    """``6·N·D``."""
    return 6.0 * params * tokens


def graft_flops(params: float, tokens: float, trainable_fraction: float, backprop_fraction: float = 1.0) -> float:
    """``2·N·D + 2·N_bp·D + 2·N_t·D`` with ``N_t = trainable_fraction·N``, ``N_bp = backprop_fraction·N``.

    ``backprop_fraction`` must be at least ``trainable_fraction`` (the trainable layers themselves
    need activation gradients).
    """
    if not 0 < trainable_fraction <= 1:
        raise ConfigError(f"trainable_fraction must be in (0, 1], got {trainable_fraction}")
    if not trainable_fraction <= backprop_fraction <= 1:
        raise ConfigError(f"backprop_fraction must be in [trainable_fraction={trainable_fraction}, 1], "
                          f"got {backprop_fraction}")
    return 2.0 * params * tokens * (1.0 + backprop_fraction + trainable_fraction)


def estimate(params: float, tokens: float, hw: Hardware, *, trainable_fraction: float = 0.1,
             graft_tokens: float = 1e9, backprop_fraction: float = 1.0) -> list[Estimate]:
    """Full training on ``tokens`` and grafting on ``graft_tokens``, priced on ``hw``.

    Returns:
        ``[full, graft]`` :class:`Estimate` objects.
    """
    full = full_training_flops(params, tokens)
    graft = graft_flops(params, graft_tokens, trainable_fraction, backprop_fraction)
    return [
        Estimate("full training", full, hw.gpu_hours(full), hw.gpu_hours(full) * hw.usd_per_gpu_hour, tokens,
                 "6*N*D"),
        Estimate("grafting", graft, hw.gpu_hours(graft), hw.gpu_hours(graft) * hw.usd_per_gpu_hour, graft_tokens,
                 f"2*N*D*(1 + {backprop_fraction:g} backprop + {trainable_fraction:g} trainable)"),
    ]


def human(x: float) -> str:
    """``1.24e8`` -> ``124M`` (3 significant digits)."""
    for suf, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suf}"
    return f"{x:.3g}"


def format_table(params: float, hw: Hardware, rows: list[Estimate]) -> str:
    """A plain-text report of :func:`estimate`'s rows."""
    lines = [f"N = {human(params)} parameters; {hw.peak_tflops:g} peak TFLOP/s per GPU at {hw.mfu:.0%} MFU, "
             f"${hw.usd_per_gpu_hour:g}/GPU-hour",
             f"{'':14s} {'tokens':>8s} {'FLOPs':>10s} {'GPU-hours':>11s} {'price USD':>11s}  formula"]
    for r in rows:
        lines.append(f"{r.name:14s} {human(r.tokens):>8s} {r.flops:10.3e} {r.gpu_hours:11,.2f} "
                     f"{r.usd:11,.2f}  {r.formula}")
    return "\n".join(lines)


def to_dict(rows: list[Estimate]) -> list[dict]:
    return [asdict(r) for r in rows]


# ----------------------------------------------------------------------------- measured runs

METRICS_FILE = "metrics.jsonl"
GRAFT_SPEC_FILE = "graft.json"  # hf.graft.SPEC_FILE, not imported from there: that module imports torch


@dataclass
class MeasuredRun:
    """What a ``mot graft`` run directory says about its own training: the last logged step's
    counters (``step``, ``tokens`` and ``wall_s`` so far) and whatever the start record and
    ``graft.json`` add (parameter counts, model, device, grafted layers)."""

    path: str
    steps: int
    tokens: float
    wall_s: float
    n_params: float | None = None
    trainable_params: float | None = None
    model: str | None = None
    model_type: str | None = None
    layers: list[int] | None = None
    device: str | None = None
    cpu: str | None = None
    loss: float | None = None


def _number(rec: dict, key: str, where: str, *, positive: bool = True) -> float | None:
    """``rec[key]`` as a finite float (``None`` when absent); a CheckpointError naming ``key`` otherwise."""
    if rec.get(key) is None:
        return None
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0) \
            or v < 0:
        raise CheckpointError(f"{where}: {key!r} must be a {'positive' if positive else 'non-negative'} number, "
                              f"got {v!r}")
    return float(v)


def _read_records(metrics: Path) -> list[dict]:
    """The JSON objects of ``metrics.jsonl``; a truncated last line (a run killed mid-write) is skipped."""
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{metrics} is not readable UTF-8 text: {e}") from None
    lines = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    records = []
    for j, (i, ln) in enumerate(lines):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            if j == len(lines) - 1:
                continue
            raise CheckpointError(f"{metrics} line {i} is not JSON") from None
        if isinstance(rec, dict):
            records.append(rec)
    return records


def read_measured_run(path: str | Path) -> MeasuredRun:
    """Read a ``mot graft`` output directory: ``metrics.jsonl`` (required) and ``graft.json`` (optional).

    The last record holding ``"step"`` gives the steps, ``"tokens"`` (processed so far) and
    ``"wall_s"`` (seconds so far; ``s_per_step · step`` when only ``"s_per_step"`` is logged). The
    first records holding ``"n_params"``, ``"trainable_params"``, ``"model"``, ``"device"``,
    ``"cpu"`` (the ``{"event": "start", ...}`` record) fill in the rest; ``graft.json`` adds
    ``model_type`` and ``layers``. Evaluation records (``{"eval": ...}``) are ignored.

    Raises:
        CheckpointError: one line naming the directory, the file or the missing key.
    """
    run = Path(path)
    if not run.exists():
        raise CheckpointError(f"--measured {run}: no such directory (give the --out directory of a mot graft run)")
    if not run.is_dir():
        raise CheckpointError(f"--measured {run} is a file; give the --out directory of a mot graft run")
    metrics = run / METRICS_FILE
    if not metrics.is_file():
        raise CheckpointError(f"--measured {run} has no {METRICS_FILE} (not a mot graft run, or one that logged "
                              f"nothing)")
    records = _read_records(metrics)
    steps = [r for r in records if r.get("step") is not None]
    if not steps:
        raise CheckpointError(f"{metrics} has no record with 'step' (the run logged no training step yet)")
    last = steps[-1]
    where = f"{metrics}, last step record"
    step = _number(last, "step", where, positive=False)
    if step != int(step):
        raise CheckpointError(f"{where}: 'step' must be a whole number, got {last['step']!r}")
    tokens = _number(last, "tokens", where)
    if tokens is None:
        raise CheckpointError(f"{where} (step {int(step)}) has no 'tokens' (tokens processed so far)")
    wall = _number(last, "wall_s", where)
    if wall is None:
        per_step = _number(last, "s_per_step", where)
        if per_step is None or step <= 0:
            raise CheckpointError(f"{where} (step {int(step)}) has no 'wall_s' (seconds so far) "
                                  f"and no 's_per_step' to derive it")
        wall = per_step * step

    def first(key: str):
        return next((r[key] for r in records if r.get(key) is not None), None)

    meta = {}
    for key in ("n_params", "trainable_params"):
        rec = next((r for r in records if r.get(key) is not None), None)
        meta[key] = _number(rec, key, f"{metrics}") if rec is not None else None
    for key in ("model", "device", "cpu"):
        v = first(key)
        meta[key] = None if v is None else str(v)

    spec = run / GRAFT_SPEC_FILE
    model_type, layers = None, None
    if spec.is_file():
        try:
            d = json.loads(spec.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{spec} is not valid JSON: {e}") from None
        if isinstance(d, dict):
            model_type = None if d.get("model_type") is None else str(d["model_type"])
            layers = d.get("layers") if isinstance(d.get("layers"), list) else None
    loss = last.get("loss")
    loss = float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None
    return MeasuredRun(str(run), int(step), tokens, wall, model_type=model_type, layers=layers, loss=loss, **meta)


@dataclass
class MeasuredComparison:
    """A measured run extrapolated to ``tokens`` on the GPU of ``hw``, beside the FLOP formulas.

    ``estimates`` holds the GPU rows: grafting (formula, equal to the run's wall time scaled by
    ``gpu_over_run``), full training (``6·N·D``), and, when the run device's peak is known, grafting
    at the run's own MFU.
    """

    run: MeasuredRun
    params: float
    params_source: str
    trainable_fraction: float
    trainable_source: str
    backprop_fraction: float
    hardware: Hardware
    tokens: float
    run_flops: float  # grafting-formula FLOPs of the run's tokens
    run_flops_per_s: float  # run_flops / wall_s
    gpu_flops_per_s: float  # peak · mfu
    gpu_over_run: float  # gpu_flops_per_s / run_flops_per_s
    device_hours: float  # the run's wall time, in hours, on its own device
    device_hours_scaled: float  # the same scaled linearly to ``tokens``
    estimates: list[Estimate] = field(default_factory=list)
    run_peak_tflops: float | None = None
    run_mfu: float | None = None


def compare_measured(run: MeasuredRun, hw: Hardware, *, params: float | None = None, params_source: str = "--params",
                     tokens: float | None = None, trainable_fraction: float | None = None,
                     backprop_fraction: float = 1.0, run_peak_tflops: float | None = None) -> MeasuredComparison:
    """Extrapolate ``run`` to ``tokens`` (default: the run's) on ``hw``.

    ``params`` defaults to the run's ``n_params``; ``trainable_fraction`` to its
    ``trainable_params / n_params`` (0.1 when it records neither). ``run_peak_tflops``, the dense
    peak of the device the run ran on, adds the run's MFU and a GPU row at that MFU.

    Raises:
        ConfigError: no parameter count (neither given nor recorded), or a fraction out of range.
    """
    if params is None:
        if run.n_params is None:
            raise ConfigError(f"{run.path}/{METRICS_FILE} records no 'n_params' (the start record); "
                              f"give --params or --preset")
        params, params_source = run.n_params, "n_params of the run"
    if trainable_fraction is None:
        if run.trainable_params is not None and run.n_params is not None:
            trainable_fraction, trainable_source = run.trainable_params / run.n_params, "trainable_params / n_params"
        else:
            trainable_fraction, trainable_source = 0.1, "default, not recorded"
    else:
        trainable_source = "--trainable-fraction"
    tokens = run.tokens if tokens is None else tokens
    run_flops = graft_flops(params, run.tokens, trainable_fraction, backprop_fraction)
    target = graft_flops(params, tokens, trainable_fraction, backprop_fraction)
    full = full_training_flops(params, tokens)
    run_rate = run_flops / run.wall_s
    gpu_rate = hw.peak_tflops * TERA * hw.mfu
    formula = f"2*N*D*(1 + {backprop_fraction:g} backprop + {trainable_fraction:.3g} trainable)"
    rows = [Estimate("grafting", target, hw.gpu_hours(target), hw.gpu_hours(target) * hw.usd_per_gpu_hour, tokens,
                     formula),
            Estimate("full training", full, hw.gpu_hours(full), hw.gpu_hours(full) * hw.usd_per_gpu_hour, tokens,
                     "6*N*D")]
    run_mfu = None
    if run_peak_tflops is not None:
        if not run_peak_tflops > 0:
            raise ConfigError(f"--measured-tflops must be > 0, got {run_peak_tflops}")
        run_mfu = run_rate / (run_peak_tflops * TERA)
        h = target / (hw.peak_tflops * TERA * run_mfu) / SECONDS_PER_HOUR
        rows.append(Estimate("grafting, run MFU", target, h, h * hw.usd_per_gpu_hour, tokens,
                             f"wall * D/D_run * {run_peak_tflops:g}/{hw.peak_tflops:g} peak TFLOP/s"))
    return MeasuredComparison(
        run, params, params_source, trainable_fraction, trainable_source, backprop_fraction, hw, tokens,
        run_flops, run_rate, gpu_rate, gpu_rate / run_rate, run.wall_s / SECONDS_PER_HOUR,
        run.wall_s * tokens / run.tokens / SECONDS_PER_HOUR, rows, run_peak_tflops, run_mfu)


def _amount(x: float) -> str:
    """Hours or dollars: ``1,234.56``, or ``3.47e-03`` below 0.01 so that small runs do not print 0.00."""
    return f"{x:,.2f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2e}"


def _ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.3g}x"


def measured_notes(c: MeasuredComparison) -> list[str]:
    """The 2-3 lines that say how the measured extrapolation and the formula relate."""
    dev = c.run.device or "the run's device"
    mfu = f"{c.hardware.mfu:.0%}"
    notes = [
        f"{dev} throughput implied by the grafting formula: {c.run_flops:.3e} FLOPs / {c.run.wall_s:,.1f} s = "
        f"{c.run_flops_per_s:.3e} FLOP/s; GPU assumed: {c.hardware.peak_tflops:g} TFLOP/s * {mfu} MFU = "
        f"{c.gpu_flops_per_s:.3e} FLOP/s, {_ratio(c.gpu_over_run)} more.",
        f"'grafting, GPU' = run wall time * D/D_run / {_ratio(c.gpu_over_run)[:-1]}, the formula's figure by "
        f"construction: an extrapolation assuming time linear in tokens, the formula's FLOPs only (attention and "
        f"optimizer ignored) and {mfu} MFU on the GPU, which small models rarely reach.",
    ]
    if c.run_mfu is not None:
        notes.append(f"the run reached {c.run_mfu:.2%} MFU of its device's {c.run_peak_tflops:g} peak TFLOP/s; "
                     f"'grafting, run MFU' assumes the GPU does no better (wall time scaled by the ratio of peaks).")
    else:
        notes.append(f"give --measured-tflops (the peak TFLOP/s of {dev}) for the run's MFU and a GPU estimate "
                     f"at that MFU.")
    return notes


def format_measured(c: MeasuredComparison) -> str:
    """A plain-text report of :func:`compare_measured`: the run on its device, then the GPU rows."""
    r, hw = c.run, c.hardware
    dev = r.device or "run device"
    what = r.model_type or r.model or "model"
    if r.model and r.model_type and r.model != r.model_type:
        what = f"{r.model} ({r.model_type})"
    layers = f", layers {r.layers}" if r.layers is not None else ""
    cpu = f" ({r.cpu})" if r.cpu else ""
    lines = [
        f"measured run {r.path}: {what}{layers}; {dev}{cpu}; {r.steps:,} steps, {human(r.tokens)} tokens "
        f"in {r.wall_s:,.1f} s",
        f"N = {human(c.params)} parameters ({c.params_source}), N_t/N = {c.trainable_fraction:.3g} "
        f"({c.trainable_source}); GPU {hw.peak_tflops:g} peak TFLOP/s at {hw.mfu:.0%} MFU, "
        f"${hw.usd_per_gpu_hour:g}/GPU-hour",
        f"{'':22s} {'tokens':>8s} {'FLOPs':>10s} {'hours':>11s} {'price USD':>11s}  basis",
        f"{'run on ' + dev:22s} {human(r.tokens):>8s} {c.run_flops:10.3e} {_amount(c.device_hours):>11s} "
        f"{'-':>11s}  logged wall time",
        f"{'run scaled, ' + dev:22s} {human(c.tokens):>8s} {c.estimates[0].flops:10.3e} "
        f"{_amount(c.device_hours_scaled):>11s} {'-':>11s}  wall * D/D_run, same device",
    ]
    for e in c.estimates:
        lines.append(f"{e.name + ', GPU':22s} {human(e.tokens):>8s} {e.flops:10.3e} {_amount(e.gpu_hours):>11s} "
                     f"{_amount(e.usd):>11s}  {e.formula}")
    return "\n".join(lines + measured_notes(c))


def measured_to_dict(c: MeasuredComparison) -> dict:
    d = asdict(c)
    d["notes"] = measured_notes(c)
    return d
