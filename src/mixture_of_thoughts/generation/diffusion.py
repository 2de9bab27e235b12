"""Samplers for the masked-diffusion model: ancestral (MDLM), top-k (LLaDA) and confidence (Fast-dLLM).

All three share one loop, :func:`denoise`, and differ only in which masked positions a step reveals:

* ``ancestral``: the reverse step ``t -> s`` of the linear schedule; each masked position is revealed
  with probability ``(t - s) / t`` (Sahoo et al. 2024, MDLM eq. 7). When a step reveals nothing in a
  row its logits are reused, because the row's input (and so its time input) did not change.
* ``topk``: the ``k`` most confident masked positions per step (LLaDA's low-confidence remasking,
  Nie et al. 2025).
* ``confidence``: every masked position whose confidence exceeds a threshold, and at least the most
  confident one per step (Fast-dLLM, Wu et al. 2025).

Candidate tokens are sampled by Gumbel-max with each row's counter-based noise (``rng.RowNoise``)
keyed by the step index within the window and the absolute position, so a branch sampled alone
equals the same branch sampled in a batch. The model's time input is each row's masked fraction
(:meth:`MaskSchedule.time_input`), what ``t`` means in training.

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
    """Result of :func:`denoise` / :func:`generate`.

    Attributes:
        tokens: (B, N) final ids (no ``[MASK]`` left).
        trajectory: ``None``, or the (B, N) sequence after each step (``[MASK]`` = the mask id),
            on the CPU; ``trajectory[0]`` is the input.
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


def _propose(logits, noise: RowNoise, step: int, positions, temperature):
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


def _reveal(sampler, masked, conf, noise, step, positions, t, s, k, threshold, schedule):
    """(B, L) bool: which masked positions this step reveals."""
    if sampler == "ancestral":
        u = noise.uniform(stream_id(DIFFUSION, step & 0xFFFF, _UNMASK), positions).to(masked.device)  # (B, L)
        return masked & (u < schedule.unmask_prob(t, s))
    c = conf.masked_fill(~masked, float("-inf"))
    if sampler == "topk":
        idx = c.topk(min(k, c.shape[1]), dim=-1).indices
        return torch.zeros_like(masked).scatter(1, idx, True) & masked
    best = torch.zeros_like(masked).scatter(1, c.argmax(-1, keepdim=True), True)
    return masked & ((conf > threshold) | best)


@torch.no_grad()
def denoise(model, x: torch.Tensor, noise: RowNoise, *, known: torch.Tensor | None = None,
            sampler: str = "confidence", steps: int | None = None, k: int | None = None, threshold: float = 0.9,
            temperature: float | torch.Tensor = 1.0, creativity=None, offset: int = 0,
            trajectory: list | None = None, schedule: MaskSchedule = LINEAR) -> DiffusionSample:
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
        trajectory: a list to append the (B, L) state after each step to (CPU), or ``None``.
    Returns:
        :class:`DiffusionSample` for this window (``trajectory`` is the list passed in).
    """
    validate(sampler, steps, k, threshold, temperature)
    if not model.config.time_conditioning or model.config.causal:
        raise ConfigError("this needs a diffusion model (bidirectional, time-conditioned); "
                          "train one with: mot train --objective diffusion")
    model.eval()
    B, L = x.shape
    if L > model.config.block_size:
        raise ConfigError(f"a window holds at most block_size={model.config.block_size} positions, got {L}; "
                          "use generate()/infill() for longer sequences")
    dev = model.wte.weight.device
    MASK = mask_id(model)
    x = x.to(dev)
    known = (x != MASK) if known is None else known.to(dev).expand(B, L)
    x = torch.where(known, x, torch.full_like(x, MASK))
    masked = ~known
    positions = torch.arange(offset, offset + L, device=dev)
    n_masked = int(masked.sum(-1).max())
    steps = steps or DEFAULT_STEPS
    if sampler == "topk" and k is None:
        k = max(1, -(-n_masked // steps))
    per_row_crea = torch.is_tensor(creativity) and creativity.dim() > 0
    logits = torch.empty(B, L, model.config.vocab_size, device=dev)
    stale = torch.ones(B, dtype=torch.bool, device=dev)  # rows whose logits must be recomputed
    step, forwards = 0, 0
    while bool(masked.any()):
        if sampler == "ancestral":
            if step >= steps:  # cannot happen: the last step reveals with probability 1
                break
            t, s = 1.0 - step / steps, 1.0 - (step + 1) / steps
        else:
            t = s = None
        rows = (stale & masked.any(-1)).nonzero()[:, 0]
        if len(rows):
            sub_noise = noise.select(rows) if len(rows) < B else noise
            c = creativity[rows.to(creativity.device)] if per_row_crea else creativity
            lg, _ = denoiser_logits(model, x[rows], schedule.time_input(masked[rows]), noise=sub_noise, creativity=c)
            logits[rows] = lg
            forwards += 1
        tok, conf = _propose(logits, noise, step, positions, temperature)
        reveal = _reveal(sampler, masked, conf, noise, step, positions, t, s, k, threshold, schedule)
        x = torch.where(reveal, tok, x)
        masked = masked & ~reveal
        stale = reveal.any(-1)
        step += 1
        if trajectory is not None:
            trajectory.append(x.cpu())
    return DiffusionSample(x, trajectory, step, forwards)


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
        win_traj = [] if trajectory else None
        out = denoise(model, x[:, start:end], noise, known=known[:, start:end], offset=start,
                      trajectory=win_traj, **kw)
        if trajectory:
            for w in win_traj:
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


__all__ = ["SAMPLERS", "DiffusionSample", "denoise", "infill", "generate", "validate"]
