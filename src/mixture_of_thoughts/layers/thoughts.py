"""The Mixture-of-Thoughts layer: an FFN replaced by E "thought branches" under a sampling router.

DESIGN §1. Derived from a Switch/ST-MoE feed-forward layer, with three changes:

* **Sampling router.** Branches are chosen with the Gumbel-top-k trick (Kool, van Hoof & Welling,
  2019, "Stochastic Beams and Where to Find Them"): ``S = top-k(logits / tau + c * g)`` samples k
  branches without replacement from ``softmax(logits / tau)`` when ``c = 1``; ``c = 0`` is the
  ordinary deterministic top-k MoE, ``c > 1`` flattens the distribution. ``tau`` is learnable.
* **Branch noise.** Each branch perturbs its input and its hidden *pre-activation* with learnable
  per-branch scales: ``h = act((x + c s_in n1) W_in + c s_hid n2)``. The hidden noise goes before
  the non-linearity so it perturbs which hidden units fire (the branch's "decision"), and GELU keeps
  the perturbed activation in its usual range.
* **Combiner.** ``weighted`` (the MoE sum) or ``attention``, one small attention per token over its
  k selected branch outputs.

Aux losses are pure functions: load balancing (Fedus, Zoph & Shazeer, 2021, "Switch Transformers",
eq. 4-6), router z-loss (Zoph et al., 2022, "ST-MoE", eq. 5) and a branch-diversity loss.

Every random number is drawn in the canonical ``(B, T, ...)`` layout keyed by token positions and only
then gathered into dispatch order, so a row's draws never depend on the other rows of the batch: with
:class:`~mixture_of_thoughts.rng.RowNoise` a branch computed alone equals the same branch in a batch.
(:class:`~mixture_of_thoughts.rng.GeneratorNoise`, used in training, promises no per-row reproducibility,
so its branch-noise normals are drawn directly in dispatch order: same distribution, no gather.)

Dispatch sorts the (token, slot) pairs by branch and runs the branches' matmuls on contiguous slices of
the sorted rows (:mod:`.kernels`: ``F.grouped_mm`` where it works, else at most E matmuls).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import rng
from ..config import ThoughtConfig
from .ffn import activation
from .kernels import (  # noqa: F401
    add_scaled_noise,
    grouped_mm_works,
    packed_matmul,
    row_dots,
    row_rms,
    scale_rows,
    sliced_mm,
)

INIT_STD = 0.02  # weight init of branches, router and combiner (GPT-2 / nanoGPT)
TAU_MIN = 1e-3  # tau = softplus(rho) + TAU_MIN keeps the temperature away from 0
COMBINE_DIM_DIVISOR = 4  # the attention combiner's query/key width is d / 4: cheap next to a branch
# the per-branch stacked weights of a thought layer (w_up and b_up: the gate of a grafted gated MLP only)
BRANCH_WEIGHTS = ("w_in", "w_up", "w_out", "b_in", "b_up", "b_out")
DEFAULT_INIT_SEED = 0  # seeds a layer's default init when no generator is given


class ThoughtOutput(NamedTuple):
    """What a thought layer returns.

    Attributes:
        y: ``(B, T, d)`` output.
        aux_loss: scalar, already scaled: ``balance_coef * LB + z_coef * Z + diversity_coef * D``.
        stats: detached tensors for logging (see :meth:`ThoughtsFFN.forward`).
    """

    y: Tensor
    aux_loss: Tensor
    stats: dict[str, Tensor]


class Routing(NamedTuple):
    """A router's decision (see :meth:`ThoughtsFFN.route`).

    Attributes:
        logits: ``(B, T, E)`` raw router logits (after any hook on ``router``; may hold ``-inf``).
        z: ``(B, T, E)`` ``logits / tau``.
        tau: scalar temperature.
        idx: ``(B, T, k)`` selected branches, slots in decreasing score.
        active: ``(B, T, k)`` bool, slots that are computed (False beyond a drawn k or for banned branches).
    """

    logits: Tensor
    z: Tensor
    tau: Tensor
    idx: Tensor
    active: Tensor


class Dispatch(NamedTuple):
    """The active (token, slot) pairs of a forward call, sorted by branch.

    Attributes:
        pairs: ``(M,)`` pair indices ``(b*T + t)*k + slot`` in dispatch order.
        tokens: ``(M,)`` their token indices ``b*T + t``.
        branches: ``(M,)`` their branch, non-decreasing.
        counts: ``(E,)`` pairs per branch.
    """

    pairs: Tensor
    tokens: Tensor
    branches: Tensor
    counts: Tensor


def load_balancing_loss(probs: Tensor, load: Tensor) -> Tensor:
    """Switch Transformer load-balancing loss (Fedus et al., 2021, eq. 4-6): ``E * sum_e f_e P_e``.

    Args:
        probs: ``(..., E)`` router probabilities ``softmax(logits / tau)`` (differentiable).
        load: ``(E,)`` fraction ``f_e`` of (token, slot) assignments routed to each branch (constant).
    Returns:
        A scalar; 1 for a perfectly uniform router and load, up to E when everything goes to one branch.
    """
    E = probs.shape[-1]
    P = probs.reshape(-1, E).float().mean(0)
    return E * (load.to(P.dtype) * P).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """Router z-loss (Zoph et al., 2022, ST-MoE eq. 5): ``mean(logsumexp(logits)^2)``.

    Args:
        logits: ``(..., E)`` raw router logits; ``-inf`` entries (banned branches) are fine as long as
            one entry per token is finite.
    """
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def branch_cosine(outputs: Tensor, active: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of each token's selected branch outputs (the diversity loss).

    Args:
        outputs: ``(N, k, d)`` branch outputs per token and slot.
        active: ``(N, k)`` bool, which slots were computed.
    Returns:
        Mean over tokens with at least two active slots of the mean cosine over their slot pairs; 0 if
        no token has two.
    """
    k = outputs.shape[1]
    u = F.normalize(outputs.float(), dim=-1)
    gram = u @ u.transpose(1, 2)  # (N, k, k)
    pair = active.unsqueeze(2) & active.unsqueeze(1) & ~torch.eye(k, dtype=torch.bool, device=u.device)
    n_pairs = pair.sum((1, 2))  # (N,)
    per_token = (gram * pair).sum((1, 2)) / n_pairs.clamp(min=1)
    has = n_pairs > 0
    return (per_token * has).sum() / has.sum().clamp(min=1)


def scaled_logits(logits: Tensor, tau: Tensor) -> Tensor:
    """``z = logits / tau``, keeping ``-inf`` (banned branches) without dividing it: d(-inf / tau)/d tau
    would be NaN."""
    finite = torch.isfinite(logits)
    return (torch.where(finite, logits, 0.0) / tau).masked_fill(~finite, float("-inf"))


def gumbel_top_k(z: Tensor, k: int, k_min: int | None, c: float | Tensor, gumbel: Tensor | None,
                 u_k: Tensor | None) -> tuple[Tensor, Tensor]:
    """The selected branches ``idx`` ``(B, T, k)`` (slots in decreasing score) and ``active`` slots.

    ``scores = z + c * gumbel`` (``z`` alone without a draw); a banned branch (``-inf``) is never
    active; with a k range (``u_k`` drawn, ``(B, T|1, 1)``) a token keeps its first
    ``k_min + floor(u (k - k_min + 1))`` slots, rows at creativity 0 all k.
    """
    with torch.no_grad():
        scores = z if gumbel is None else z + c * gumbel
        idx = scores.topk(k, dim=-1).indices
        active = torch.isfinite(z.gather(-1, idx))
        if u_k is not None:
            k_tok = (k_min + (u_k * (k - k_min + 1)).floor()).clamp(max=k)
            if torch.is_tensor(c):
                k_tok = torch.where(c > 0, k_tok, float(k))  # rows with c = 0 draw nothing
            active = active & (torch.arange(k, device=z.device) < k_tok)
    return idx, active


def slot_weights(z: Tensor, idx: Tensor, active: Tensor, probs: Tensor | None = None, *,
                 unit: bool = False) -> tuple[Tensor, Tensor]:
    """``(w, logw)``: each slot's combination weight and the log of its renormalised router weight.

    ``w`` is the renormalised weight, except for k = 1, where it is the router probability (a
    renormalised weight is always 1, and the router would learn nothing). ``unit``: for k = 1, the
    value of the renormalised weight (1) with the gradient of the router probability (``1 + p - sg(p)``),
    so that a layer grafted from an MLP stays that MLP at creativity 0. ``probs``: ``softmax(z)`` when
    the caller has it.
    """
    logw = torch.log_softmax(z.gather(-1, idx).masked_fill(~active, float("-inf")), dim=-1)
    if idx.shape[-1] != 1:
        return logw.exp(), logw
    probs = torch.softmax(z, dim=-1) if probs is None else probs
    p = probs.gather(-1, idx)
    return (p - p.detach() + 1 if unit else p) * active, logw


def orthogonal_rows(n: Tensor) -> Tensor:
    """Make the rows of ``n`` ``(B, E, W)`` mutually orthogonal for each of the E columns, keeping norm.

    Gram-Schmidt across the batch (a QR of each ``(W, B)`` slice, signs fixed so that row 0 keeps its
    own direction), each row rescaled to ``sqrt(W)``, the expected length of a standard normal vector
    in W dimensions. Needs ``B <= W``.
    """
    B, E, W = n.shape
    if B > W:
        raise ValueError(f"cannot make {B} directions orthogonal in {W} dimensions")
    q, r = torch.linalg.qr(n.permute(1, 2, 0).double())  # (E, W, B), (E, B, B)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).masked_fill(torch.diagonal(r, dim1=-2, dim2=-1) == 0, 1.0)
    q = q * sign.unsqueeze(1)
    return (q.permute(2, 0, 1) * W**0.5).to(n.dtype)


class ThoughtsFFN(nn.Module):
    """E thought branches (FFNs ``d -> h -> d``) chosen per token by a sampling router.

    Args:
        n_embd: model width d.
        cfg: the layer's :class:`~mixture_of_thoughts.config.ThoughtConfig`.
        bias: biases in the branches.
        dropout: dropout on the output.
        layer_idx: separates this layer's noise streams from the other layers'.
    """

    unit_gate = False  # k = 1 weighs the branch by its router probability (Switch); see slot_weights

    def __init__(self, n_embd: int, cfg: ThoughtConfig, *, bias: bool = False, dropout: float = 0.0,
                 layer_idx: int = 0):
        super().__init__()
        d, E = n_embd, cfg.n_branches
        h = cfg.branch_hidden or 2 * d
        self.cfg, self.n_embd, self.hidden, self.layer_idx = cfg, d, h, layer_idx
        # nn.Linear's default init draws from the global RNG: skip it (reset_parameters below sets the weights)
        self.router = nn.utils.skip_init(nn.Linear, d, E, bias=False)  # hooks may edit its output (force/ban)
        # softplus(rho) + TAU_MIN = 1 at init
        self.rho = nn.Parameter(torch.tensor(math.log(math.expm1(1.0 - TAU_MIN))))
        self.w_in = nn.Parameter(torch.empty(E, d, h))
        self.w_out = nn.Parameter(torch.empty(E, h, d))
        self.b_in = nn.Parameter(torch.zeros(E, h)) if bias else None
        self.b_out = nn.Parameter(torch.zeros(E, d)) if bias else None
        self.s_in = nn.Parameter(torch.full((E,), float(cfg.noise_init)))
        self.s_hid = nn.Parameter(torch.full((E,), float(cfg.noise_init)))
        if cfg.combine == "attention":
            dc = max(1, d // COMBINE_DIM_DIVISOR)
            self.comb_q = nn.utils.skip_init(nn.Linear, d, dc, bias=False)
            self.comb_k = nn.utils.skip_init(nn.Linear, d, dc, bias=False)
        self.dropout = nn.Dropout(dropout)
        # a seeded default init: the global RNG is never touched (Transformer.init_weights re-initialises
        # from the training generator; a loaded checkpoint overwrites everything)
        self.reset_parameters(torch.Generator().manual_seed(DEFAULT_INIT_SEED + layer_idx))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, 0.02) weights; the combiner's query starts at 0 so attention starts as ``weighted``."""
        for p in (self.router.weight, self.w_in, self.w_out):
            nn.init.normal_(p, 0.0, INIT_STD, generator=generator)
        for p in (self.b_in, self.b_out):
            if p is not None:
                nn.init.zeros_(p)
        if self.cfg.combine == "attention":
            nn.init.zeros_(self.comb_q.weight)
            nn.init.normal_(self.comb_k.weight, 0.0, INIT_STD, generator=generator)

    @property
    def tau(self) -> Tensor:
        return F.softplus(self.rho) + TAU_MIN

    def forward(self, x: Tensor, *, noise: rng.Noise | None = None, positions: Tensor | None = None,
                creativity: float | Tensor | None = None, route: str | None = None,
                costly_stats: bool = False, aux: bool = True) -> ThoughtOutput:
        """Route, run the selected branches, combine.

        Args:
            x: ``(B, T, d)``.
            noise: a ``RowNoise`` or ``GeneratorNoise``; ``None`` turns every random draw off.
            positions: ``(T,)`` or ``(B, T)`` absolute positions keying the draws; ``None`` = ``arange(T)``.
            creativity: ``None`` (the config's), a float, or a ``(B,)`` tensor (one per row).
            route: ``"token"`` or ``"sequence"`` for this call; ``None`` = the config's.
            costly_stats: also report ``branch_diversity`` (1 - mean pairwise cosine of the selected
                branch outputs; 1 when no token has two active branches).
            aux: compute the aux losses and their statistics; ``False`` (generation) reports only
                ``load`` and ``row_load``, with a zero aux loss.
        Returns:
            :class:`ThoughtOutput`; ``stats`` holds ``router_entropy`` (nats), ``load`` ``(E,)``,
            ``row_load`` ``(B, E)``, ``active_k``, ``tau``, ``balance_loss`` and ``z_loss`` (unscaled).
        """
        cfg = self.cfg
        B, T, d = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device)
        r = self.route(x, noise=noise, positions=positions, creativity=creativity, route=route)
        probs = torch.softmax(r.z, dim=-1)  # (B, T, E)
        w, logw = slot_weights(r.z, r.idx, r.active, probs, unit=self.unit_gate)  # (B, T, k) each
        dispatch = self._dispatch(r.idx, r.active)
        c, draws = self._creativity(creativity, noise, B, x)
        out_sorted = self._run_branches(x, dispatch, noise if draws else None, c, positions)
        need_outs = cfg.combine == "attention" or cfg.diversity_coef > 0 or costly_stats
        outs = None  # (N, k, d) per token and slot; only the attention combiner and diversity need it
        if need_outs:
            outs = x.new_zeros(B * T * cfg.k, d).index_copy(0, dispatch.pairs, out_sorted).view(B * T, cfg.k, d)
        y = self._combine(x, dispatch, out_sorted, outs, w, logw)
        if aux:
            aux_loss, stats = self._losses_and_stats(r, probs, outs, costly_stats)
        else:
            aux_loss, stats = x.new_zeros(()), self._routing_stats(r, probs.dtype)
        return ThoughtOutput(self.dropout(y.view(B, T, d)), aux_loss, stats)

    def _routing_stats(self, r: Routing, dtype) -> dict[str, Tensor]:
        """``load`` ``(E,)``, ``row_load`` ``(B, E)`` (the fraction of (token, slot) pairs per branch) and
        ``active_k``."""
        with torch.no_grad():
            B, T, k = r.idx.shape
            row_counts = torch.zeros(B, self.cfg.n_branches, device=r.idx.device, dtype=dtype).scatter_add_(
                1, r.idx.reshape(B, T * k), r.active.reshape(B, T * k).to(dtype))
            return {"load": row_counts.sum(0) / row_counts.sum().clamp(min=1),
                    "row_load": row_counts / row_counts.sum(1, keepdim=True).clamp(min=1),
                    "active_k": r.active.float().sum(-1).mean()}

    def _dispatch(self, idx: Tensor, active: Tensor) -> Dispatch:
        """Sort the active (token, slot) pairs by branch (pair ``p = (b*T + t)*k + slot``)."""
        e_flat = idx.reshape(-1)  # (N*k,)
        act = active.reshape(-1).nonzero().squeeze(1) if not bool(active.all()) else None
        e_act = e_flat if act is None else e_flat[act]
        e_sorted, order = e_act.sort(stable=True)
        pairs = order if act is None else act[order]  # (M,)
        counts = torch.bincount(e_sorted, minlength=self.cfg.n_branches)  # (E,)
        return Dispatch(pairs, pairs // self.cfg.k, e_sorted, counts)

    def _run_branches(self, x: Tensor, dp: Dispatch, noise: rng.Noise | None, c: float | Tensor,
                      positions: Tensor) -> Tensor:
        """The selected branches on their (noisy) inputs, in dispatch order: ``(M, d)``."""
        B, T, d = x.shape
        xin = x.reshape(B * T, d).index_select(0, dp.tokens)  # (M, d)
        relative = self.cfg.noise_scale == "relative"
        if noise is not None:
            c_pair = c if isinstance(c, float) else c.view(B).repeat_interleave(T * self.cfg.k)[dp.pairs]
            n1 = self._pair_normal(noise, rng.INPUT_NOISE, positions, d, dp, x)  # (M, d)
            a1 = (c_pair * self.s_in[dp.branches]).reshape(-1)
            xin = add_scaled_noise(xin, a1 * row_rms(xin) if relative else a1, n1)
        hid = self._grouped(xin, self.w_in, dp.counts)  # (M, h)
        if self.b_in is not None:
            hid = hid + self._per_branch(self.b_in, dp.branches)
        if noise is not None:
            n2 = self._pair_normal(noise, rng.HIDDEN_NOISE, positions, self.hidden, dp, x)  # (M, h)
            a2 = (c_pair * self.s_hid[dp.branches]).reshape(-1)
            hid = add_scaled_noise(hid, a2 * row_rms(hid) if relative else a2, n2)
        out = self._grouped(self._activate(hid, xin, dp.counts), self.w_out, dp.counts)  # (M, d)
        return out + self._per_branch(self.b_out, dp.branches) if self.b_out is not None else out

    def _combine(self, x: Tensor, dp: Dispatch, out_sorted: Tensor, outs: Tensor | None, w: Tensor,
                 logw: Tensor) -> Tensor:
        """``(N, d)``: the weighted sum of the branch outputs, or the attention combiner over them."""
        B, T, d = x.shape
        N, k = B * T, self.cfg.k
        wf = w.reshape(N, k)
        if self.cfg.combine == "weighted":
            w_sorted = wf.reshape(-1).index_select(0, dp.pairs)  # (M,)
            return x.new_zeros(N, d).index_add_(0, dp.tokens, scale_rows(out_sorted, w_sorted))  # in place: no copy
        q = self.comb_q(x.reshape(N, d))  # (N, dc)
        keys = self.comb_k(outs)  # (N, k, dc)
        att = torch.bmm(keys, q.unsqueeze(2)).squeeze(2) / math.sqrt(q.shape[-1]) + logw.reshape(N, k)
        a = torch.softmax(att, dim=-1)  # (N, k); inactive slots have logw = -inf -> 0
        if k == 1:
            a = a * wf  # keep the router's probability as a gate so it gets gradient
        return torch.bmm(a.unsqueeze(1), outs).squeeze(1)

    def _losses_and_stats(self, r: Routing, probs: Tensor, outs: Tensor | None,
                          costly_stats: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """The scaled aux loss and the detached statistics of one forward call."""
        cfg = self.cfg
        B, T, k = r.idx.shape
        act_f = r.active.reshape(B, T * k).to(probs.dtype)
        row_counts = torch.zeros(B, cfg.n_branches, device=probs.device, dtype=probs.dtype).scatter_add_(
            1, r.idx.reshape(B, T * k), act_f)  # (B, E)
        load = row_counts.sum(0) / row_counts.sum().clamp(min=1)
        lb = load_balancing_loss(probs, load.detach())
        zl = router_z_loss(r.logits)
        aux = cfg.balance_coef * lb + cfg.z_coef * zl
        div = None
        if cfg.diversity_coef > 0 or costly_stats:
            div = branch_cosine(outs, r.active.reshape(B * T, k))
            if cfg.diversity_coef > 0:
                aux = aux + cfg.diversity_coef * div
        with torch.no_grad():
            stats = {
                "router_entropy": torch.special.entr(probs.float()).sum(-1).mean(),
                "load": load.detach(),
                "row_load": (row_counts / row_counts.sum(1, keepdim=True).clamp(min=1)).detach(),
                "active_k": r.active.float().sum(-1).mean(),
                "tau": r.tau.detach(),
                "balance_loss": lb.detach(),
                "z_loss": zl.detach(),
            }
            if costly_stats:
                stats["branch_diversity"] = 1.0 - div.detach()
        return aux, stats

    def _creativity(self, creativity, noise, B: int, x: Tensor) -> tuple[float | Tensor, bool]:
        """``(c, draws)``: c as a float or a ``(B, 1, 1)`` tensor; ``draws`` says whether to draw noise."""
        c = self.cfg.creativity if creativity is None else creativity
        if torch.is_tensor(c):  # rows at creativity 0 get exactly 0 noise; a batch all at 0 draws none
            return c.to(x.device, x.dtype).reshape(B, 1, 1), noise is not None and bool((c > 0).any())
        return float(c), noise is not None and float(c) > 0

    def route(self, x: Tensor, *, noise: rng.Noise | None = None, positions: Tensor | None = None,
              creativity: float | Tensor | None = None, route: str | None = None) -> Routing:
        """Gumbel-top-k selection (the first half of :meth:`forward`, also useful for routing traces).

        Args: as :meth:`forward`.
        Returns:
            :class:`Routing` with ``idx`` ``(B, T, k)`` (slots in decreasing score) and ``active``.
        """
        cfg = self.cfg
        B, T, _ = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device)
        c, draws = self._creativity(creativity, noise, B, x)
        logits = self.router(x)  # (B, T, E)
        tau = self.tau
        z = scaled_logits(logits, tau)  # (B, T, E)
        gumbel, u_k = self.router_draws(noise, positions, route, x) if draws else (None, None)
        idx, active = gumbel_top_k(z, cfg.k, cfg.k_min, c, gumbel, u_k)
        return Routing(logits, z, tau, idx, active)

    def router_draws(self, noise: rng.Noise, positions: Tensor, route: str | None,
                     x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The router's random numbers: Gumbel noise ``(B, T|1, E)`` and, with a k range, the uniform
        that draws each token's k, ``(B, T|1, 1)`` (else ``None``). Sequence routing draws once for
        every position."""
        cfg, L = self.cfg, self.layer_idx
        route_pos = None if (route or cfg.route) == "sequence" else positions
        g = noise.gumbel(rng.stream_id(rng.ROUTER, L), route_pos, (cfg.n_branches,)).to(x.device, x.dtype)
        u = None
        if cfg.k_min is not None and cfg.k_min < cfg.k:
            u = noise.uniform(rng.stream_id(rng.K_DRAW, L), route_pos, (1,)).to(x.device)
        return g, u

    def slot_normals(self, noise: rng.Noise, kind: int, positions: Tensor, width: int, x: Tensor) -> Tensor:
        """Counter-based standard normals for every (token, slot), ``(B, T, k, width)``: the branch
        noise of draw ``kind`` (``rng.INPUT_NOISE`` or ``rng.HIDDEN_NOISE``) in its canonical layout."""
        n = noise.normal(rng.stream_id(kind, self.layer_idx), positions, (self.cfg.k, width))
        return n.to(x.device, x.dtype)

    def _pair_normal(self, noise: rng.Noise, kind: int, positions: Tensor, width: int, dp: Dispatch,
                     x: Tensor) -> Tensor:
        """Standard normals ``(M, width)`` for the dispatched (token, slot) pairs, in dispatch order.

        Drawn in the canonical ``(B, T, k, width)`` layout keyed by positions, then gathered, so a row's
        draws never depend on the rest of the batch. ``GeneratorNoise`` draws i.i.d. numbers for the
        whole batch with no per-row guarantee to keep, so there the ``M`` numbers are drawn directly in
        dispatch order: the same distribution, without drawing inactive slots and without the gather.
        With ``noise_mode="persistent"`` the draw is one vector per row and *branch*, ``(B, E, width)``,
        the same at every position: each branch of a row keeps a fixed random direction;
        ``"orthogonal"`` makes those directions mutually orthogonal across the rows of the batch
        (:func:`orthogonal_rows`), so rows explore different directions (rows are then coupled: a row
        is reproduced alone only in the same batch).
        """
        B, T = x.shape[:2]
        stream = rng.stream_id(kind, self.layer_idx)
        if self.cfg.noise_mode in ("persistent", "orthogonal"):
            n = noise.normal(stream, None, (self.cfg.n_branches, width)).to(x.device, x.dtype)  # (B, 1, E, w)
            if self.cfg.noise_mode == "orthogonal":
                n = orthogonal_rows(n[:, 0]).unsqueeze(1)
            rows = dp.tokens // T
            return n.reshape(B * self.cfg.n_branches, width).index_select(0, rows * self.cfg.n_branches + dp.branches)
        if not noise.per_row:
            return noise.iid_normal((dp.pairs.shape[0], width)).to(x.device, x.dtype)
        n = self.slot_normals(noise, kind, positions, width, x)
        return n.reshape(B * T * self.cfg.k, width).index_select(0, dp.pairs)

    def _activate(self, hid: Tensor, xin: Tensor, counts: Tensor) -> Tensor:
        """The branch non-linearity on the hidden pre-activation ``hid`` ``(M, h)``.

        ``xin`` ``(M, d)`` are the (noisy) branch inputs sorted by branch, ``counts`` ``(E,)`` the rows
        per branch. Grafted Hugging Face MLPs (``hf/graft.py``) override this, e.g. with a gated
        ``silu(hid) * (xin @ W_up)``, and reuse everything else of this layer.
        """
        return activation(hid)

    @staticmethod
    def _per_branch(p: Tensor, branches: Tensor) -> Tensor:
        """Rows of a per-branch tensor ``(E, ...)`` for ``branches``; a shared one ``(1, ...)`` broadcasts."""
        return p[0] if p.shape[0] == 1 else p[branches]

    def _grouped(self, a: Tensor, w: Tensor, counts: Tensor) -> Tensor:
        """``a[rows of branch e] @ w[e]`` for rows sorted by branch: ``(M, K) x (E, K, N) -> (M, N)``.

        Weights shared by all branches (``w`` of shape ``(1, K, N)``, a tied graft) take one matmul."""
        if w.shape[0] == 1:
            y = packed_matmul(a, w[0], self)  # inference on CPU: prepacked once
            return a @ w[0] if y is None else y
        if grouped_mm_works(a.device, a.dtype) and w.dtype == a.dtype:
            offs = counts.cumsum(0).to(torch.int32)
            return F.grouped_mm(a, w, offs=offs)
        # fallback: at most E matmuls on contiguous slices of the sorted rows, each written straight
        # into its rows of one output (no concatenation forward or backward)
        return sliced_mm(a, w, counts.tolist())
