"""Samplers for the masked-diffusion model: ancestral (MDLM), top-k (LLaDA) and confidence (Fast-dLLM).

All three share one loop, :func:`denoise`, and differ only in which masked positions a step reveals:

* ``ancestral``: the reverse step ``t -> s`` of the linear schedule; each masked position is revealed
  with probability ``(t - s) / t`` (Sahoo et al. 2024, MDLM eq. 7), all of them at the last step.
* ``topk``: the ``k`` most confident masked positions per step (LLaDA's low-confidence remasking,
  Nie et al. 2025).
* ``confidence``: every masked position whose confidence exceeds a threshold, and at least the most
  confident one per step (Fast-dLLM, Wu et al. 2025).

Candidate tokens are drawn by inverse CDF from one uniform per position of each row's counter-based
noise (``rng.RowNoise``), keyed by the step index within the window and the absolute position, so a
branch sampled alone equals the same branch sampled in a batch. The model's time input is each row's
masked fraction (:meth:`MaskSchedule.time_input`), what ``t`` means in training. When a step reveals
nothing in a row (only ``ancestral`` can), the row's logits are reused: its input did not change.

Known positions (a prompt, or any set for infilling) are never changed. Sequences longer than the
block size are denoised semi-autoregressively: window by window, each window holding up to half a
block of already decided left context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.diffusion import LINEAR, MaskSchedule, denoiser_logits, mask_id
from ..rng import DIFFUSION, RowNoise, stream_id

SAMPLERS = ("ancestral", "topk", "confidence")
DEFAULT_STEPS = 64  # ancestral / topk steps per window when not given
_UNMASK, _TOKEN = 0, 1  # sub-streams: reveal draws, token draws


@dataclass
class DiffusionSample:
    """Result of :func:`denoise`, :func:`infill` and :func:`generate`.

    Attributes:
        tokens: (B, N) final ids (no ``[MASK]`` left).
        trajectory: ``None``, or the (B, N) sequence before the first step and after each step
            (``[MASK]`` = the mask id), on the CPU: ``trajectory[0]`` is the input, ``steps + 1`` in all.
        steps: denoising steps taken (over all windows).
        forwards: row-batches the model evaluated (fewer than ``steps`` when logits were reused).
    """

    tokens: torch.Tensor
    trajectory: list[torch.Tensor] | None
    steps: int
    forwards: int


def validate(sampler: str, steps: int | None, k: int | None, threshold: float, temperature) -> None:
    """Raise a ``ConfigError`` naming the first sampler setting out of range."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ConfigError(f"k must be a positive integer (positions decoded per step), got {k!r}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    if float(torch.as_tensor(temperature).min()) < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")


def propose(logits, noise: RowNoise, step: int, positions, temperature):
    """Candidate tokens and their confidences for every position.

    Args:
        logits: (B, L, V) float logits with ``[MASK]`` at -inf; positions: (L,) absolute positions.
    Returns:
        ``(tokens (B, L), confidence (B, L))``: a draw from ``softmax(logits / T)`` (the argmax where
        ``T = 0``) and its probability under that distribution.

    The draw is by inverse CDF with one counter-based uniform per position rather than Gumbel-max
    with V of them: the same distribution, still reproducible per row, and V times fewer hashes.
    """
    B, L, V = logits.shape
    T = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device).reshape(-1, 1, 1).expand(B, 1, 1)
    scaled = logits / torch.where(T > 0, T, torch.ones_like(T))
    probs = torch.softmax(scaled, -1)
    cdf = probs.cumsum(-1)  # (B, L, V); zero-probability ids ([MASK]) add no width, so are never chosen
    u = noise.uniform(stream_id(DIFFUSION, step & 0xFFFF, _TOKEN), positions).to(logits.device)  # (B, L)
    drawn = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1)).squeeze(-1).clamp(max=V - 1)
    tok = torch.where(T[:, :, 0] > 0, drawn, scaled.argmax(-1))
    conf = probs.gather(-1, tok[..., None])[..., 0]
    return tok, conf


@dataclass(frozen=True)
class _Rule:
    """A sampler with its settings resolved for one window (``steps`` and ``k`` no longer ``None``)."""

    sampler: str
    steps: int
    k: int | None
    threshold: float
    schedule: MaskSchedule

    @classmethod
    def resolve(cls, sampler, steps, k, threshold, schedule, n_masked: int) -> _Rule:
        """Fill in the defaults: :data:`DEFAULT_STEPS`, and for topk ``k = ceil(n_masked / steps)``."""
        steps = steps or DEFAULT_STEPS
        if sampler == "topk" and k is None:
            k = max(1, -(-n_masked // steps))
        return cls(sampler, steps, k, threshold, schedule)


def _reveal_ancestral(masked, u, p: float):
    """(B, L) bool: masked positions whose uniform ``u`` is below ``p``; ``p >= 1`` reveals them all
    (the last reverse step, whatever ``u`` is: a float32 uniform can round up to 1)."""
    return masked if p >= 1.0 else masked & (u < p)


def _reveal_topk(masked, conf, k: int):
    """(B, L) bool: the ``k`` most confident masked positions of each row (all of them if fewer)."""
    c = conf.masked_fill(~masked, float("-inf"))
    idx = c.topk(min(k, c.shape[1]), dim=-1).indices
    return torch.zeros_like(masked).scatter(1, idx, True) & masked


def _reveal_confident(masked, conf, threshold: float):
    """(B, L) bool: masked positions with confidence above ``threshold``, and each row's most confident one."""
    c = conf.masked_fill(~masked, float("-inf"))
    best = torch.zeros_like(masked).scatter(1, c.argmax(-1, keepdim=True), True)
    return masked & ((conf > threshold) | best)


def _reveal(rule: _Rule, masked, conf, noise: RowNoise, step: int, positions):
    """(B, L) bool: which masked positions step ``step`` reveals under ``rule``."""
    if rule.sampler == "ancestral":
        t, s = 1.0 - step / rule.steps, 1.0 - (step + 1) / rule.steps
        u = noise.uniform(stream_id(DIFFUSION, step & 0xFFFF, _UNMASK), positions).to(masked.device)  # (B, L)
        return _reveal_ancestral(masked, u, rule.schedule.unmask_prob(t, s))
    if rule.sampler == "topk":
        return _reveal_topk(masked, conf, rule.k)
    return _reveal_confident(masked, conf, rule.threshold)


def _check_window(model, length: int) -> None:
    """Raise a ``ConfigError`` unless ``model`` is a diffusion model whose block holds ``length`` positions."""
    if not model.config.time_conditioning or model.config.causal:
        raise ConfigError("this needs a diffusion model (bidirectional, time-conditioned); "
                          "train one with: mot train --objective diffusion")
    if length > model.config.block_size:
        raise ConfigError(f"a window holds at most block_size={model.config.block_size} positions, got {length}; "
                          "use generate()/infill() for longer sequences")


def _start(model, x: torch.Tensor, known: torch.Tensor | None):
    """``(x, masked)`` on the model's device: ``x`` with ``[MASK]`` at every position not known."""
    MASK = mask_id(model)
    x = x.to(model.wte.weight.device)
    known = (x != MASK) if known is None else known.to(x.device).expand(x.shape)
    return torch.where(known, x, torch.full_like(x, MASK)), ~known


def _refresh_logits(model, x, masked, logits, stale, noise: RowNoise, creativity, schedule: MaskSchedule):
    """``(logits, evaluated)``: ``logits`` with the ``stale`` rows that still hold masks recomputed.

    The other rows keep theirs: a row that revealed nothing has the same input, and so the same
    time input, as when its logits were computed. ``evaluated`` says whether the model ran.
    """
    rows = (stale & masked.any(-1)).nonzero()[:, 0]
    if not len(rows):
        return logits, False
    sub_noise = noise.select(rows) if len(rows) < x.shape[0] else noise
    if torch.is_tensor(creativity) and creativity.dim() > 0:
        creativity = creativity[rows.to(creativity.device)]
    lg, _ = denoiser_logits(model, x[rows], schedule.time_input(masked[rows]), noise=sub_noise,
                            creativity=creativity)
    return logits.index_copy(0, rows, lg), True


@torch.no_grad()
def denoise(model, x: torch.Tensor, noise: RowNoise, *, known: torch.Tensor | None = None,
            sampler: str = "confidence", steps: int | None = None, k: int | None = None, threshold: float = 0.9,
            temperature: float | torch.Tensor = 1.0, creativity=None, offset: int = 0,
            trajectory: bool = False, schedule: MaskSchedule = LINEAR) -> DiffusionSample:
    """Denoise one window of at most ``block_size`` positions.

    Args:
        model: a diffusion :class:`Transformer` (vocab ``V + 1``, last id ``[MASK]``).
        x: (B, L) ids; positions not in ``known`` are generated (their ids are ignored).
        noise: per-row noise (``RowNoise(seeds)``), also given to the thought layers.
        known: (B, L) or (L,) bool, positions that never change; default: ``x != [MASK]``.
        sampler: ``ancestral``, ``topk`` or ``confidence``.
        steps: ancestral: reverse steps from t = 1 to 0; topk: sets ``k = ceil(masked / steps)``
            when ``k`` is not given. Default :data:`DEFAULT_STEPS`.
        k: topk: positions decoded per step. threshold: confidence: reveal above this probability.
        temperature: float or (B,) tensor; 0 takes the argmax.
        creativity: thought-layer creativity (None, float, or (B,) tensor).
        offset: absolute position of ``x[:, 0]`` (keys the noise; used by semi-AR windows).
        trajectory: keep the (B, L) state before the first step and after each step (on the CPU).
    """
    validate(sampler, steps, k, threshold, temperature)
    _check_window(model, x.shape[1])
    model.eval()
    x, masked = _start(model, x, known)
    B, L = x.shape
    rule = _Rule.resolve(sampler, steps, k, threshold, schedule, int(masked.sum(-1).max()))
    positions = torch.arange(offset, offset + L, device=x.device)
    logits = torch.zeros(B, L, model.config.vocab_size, device=x.device)
    stale = torch.ones(B, dtype=torch.bool, device=x.device)  # rows whose logits must be recomputed
    snaps = [x.cpu()] if trajectory else None
    step = forwards = 0
    while bool(masked.any()):
        logits, evaluated = _refresh_logits(model, x, masked, logits, stale, noise, creativity, schedule)
        tok, conf = propose(logits, noise, step, positions, temperature)
        reveal = _reveal(rule, masked, conf, noise, step, positions)
        x, masked, stale = torch.where(reveal, tok, x), masked & ~reveal, reveal.any(-1)
        step, forwards = step + 1, forwards + int(evaluated)
        if snaps is not None:
            snaps.append(x.cpu())
    return DiffusionSample(x, snaps, step, forwards)


@torch.no_grad()
def infill(model, x: torch.Tensor, noise: RowNoise, *, known: torch.Tensor | None = None,
           trajectory: bool = False, **kw) -> DiffusionSample:
    """Fill every unknown position of a sequence of any length, window by window.

    Windows are ``block_size`` long and move left to right: each starts at most half a block before
    the first position still unknown in the batch, so it sees decided left context, and every window
    decodes all unknown positions it holds. A sequence of at most ``block_size`` is one window.
    (With several rows whose unknown positions differ and ``N > block_size``, window placement
    depends on the whole batch; a row then reproduces alone only within one window.)

    Args:
        x: (B, N) ids; known: (B, N) or (N,) bool (default ``x != [MASK]``); other args: :func:`denoise`.
    Returns:
        :class:`DiffusionSample` over the whole sequence (trajectory snapshots are (B, N)).
    """
    dev = model.wte.weight.device
    MASK = mask_id(model)
    x = x.to(dev).clone()
    B, N = x.shape
    known = (x != MASK) if known is None else known.to(dev).expand(B, N).clone()
    x[~known] = MASK
    block = model.config.block_size
    traj = [x.cpu().clone()] if trajectory else None
    steps = forwards = 0
    while not bool(known.all()):
        first = int((~known).any(0).nonzero()[0, 0])
        start = max(0, min(first - block // 2, N - block))
        end = min(N, start + block)
        out = denoise(model, x[:, start:end], noise, known=known[:, start:end], offset=start,
                      trajectory=trajectory, **kw)
        if trajectory:
            for w in out.trajectory[1:]:  # [0] is the window's input, already in traj[-1]
                snap = traj[-1].clone()
                snap[:, start:end] = w
                traj.append(snap)
        x[:, start:end] = out.tokens
        known[:, start:end] = True
        steps, forwards = steps + out.steps, forwards + out.forwards
    return DiffusionSample(x, traj, steps, forwards)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, length: int, noise: RowNoise, *, trajectory: bool = False,
             **kw) -> DiffusionSample:
    """Continue a prompt to ``length`` positions in total (semi-autoregressive past ``block_size``).

    Args:
        prompt_ids: (B, P) or (P,) prompt ids, never changed.
        length: total length N >= P of each returned sequence.
        noise: ``RowNoise`` with one seed per row; other args: :func:`denoise`.
    Returns:
        :class:`DiffusionSample` with (B, N) tokens, prompt included.
    """
    prompt_ids = prompt_ids.view(1, -1) if prompt_ids.dim() == 1 else prompt_ids
    B, P = noise.batch_size, prompt_ids.shape[1]
    if length < P:
        raise ConfigError(f"length ({length}) must be at least the prompt length ({P})")
    dev = model.wte.weight.device
    x = torch.full((B, length), mask_id(model), dtype=torch.long, device=dev)
    x[:, :P] = prompt_ids.to(dev).expand(B, P)
    known = torch.arange(length, device=dev) < P
    return infill(model, x, noise, known=known, trajectory=trajectory, **kw)


__all__ = ["SAMPLERS", "DiffusionSample", "denoise", "infill", "generate", "validate", "propose"]
