"""Graft Mixture-of-Thoughts layers into Hugging Face causal LMs (sparse upcycling, DESIGN §6).

The MLP of each chosen layer becomes a :class:`GraftedThoughts`: a
:class:`~mixture_of_thoughts.layers.thoughts.ThoughtsFFN` (same router, Gumbel-top-k selection,
branch noise, aux losses and dispatch) whose E branches are copies of that MLP in its own form:

* GPT-2 (``transformer.h[i].mlp``, Conv1D weights stored ``[in, out]``): ``c_proj(gelu_new(c_fc(x)))``
  with biases: ``w_in = c_fc.weight``, ``b_in = c_fc.bias``, ``w_out = c_proj.weight``, ``b_out = c_proj.bias``.
* Llama / Mistral / Qwen2 (``model.layers[i].mlp``): ``down(silu(gate(x)) * up(x))``:
  ``w_in = gate.weight.T``, ``w_up = up.weight.T``, ``w_out = down.weight.T``; the branch hidden
  noise perturbs the gate's pre-activation.

The router starts at zero and the weights are renormalised over the k chosen branches, so at
creativity 0 (or with no noise source) every branch computes the original MLP and the grafted
model's logits equal the original's. Fine-tuning the thought parameters (everything else frozen:
:func:`freeze_except_thoughts`) and branch noise break the symmetry.

**Noise.** Hugging Face blocks call ``mlp(x)`` with nothing else, so the grafted layers of one model
share a typed :class:`GraftState` (``model.mot_graft``) holding the noise source, the creativity and
the absolute positions of the current call (read by a pre-hook on the base model from
``position_ids`` / ``cache_position`` / the KV cache length). By default the noise is the state's
:class:`TrainingNoise`, i.i.d. draws from a ``torch.Generator`` seeded at graft time (training;
reproducible from ``seed``). :func:`thought_noise` switches to per-row counter-based
:class:`~mixture_of_thoughts.rng.RowNoise` for generation, so a branch's thought noise depends only
on its seed and positions. ``model.generate(do_sample=True)`` still samples tokens from the global
RNG: seed it (``torch.manual_seed``) or use :func:`mixture_of_thoughts.hf.generate.think_hf`, which
samples with each branch's own noise and is reproducible branch by branch.

**Routing-free layers.** A training-free graft's layer has a zero router over identical branches with
one noise scale: whichever branch the Gumbel draws pick, the output is the same (the noise is drawn per
slot, the slots weigh ``exp(log_softmax(0))``). Such a layer skips its router
(:meth:`GraftedThoughts.routing_free`) and reports the branches picked as :class:`RoutingCounts`, counted
when read and, by :meth:`GraftState.row_loads`, for all layers in one pass: the same outputs and routing,
bit for bit, for 7-17% more tokens/s on SmolLM2 (BENCHMARKS.md). Training the router or the branches, or
one branch's own noise scale, turns it off.

Files written by :func:`save_grafted`: the original architecture's ``save_pretrained`` output (base
weights, loadable by ``AutoModelForCausalLM`` alone), ``graft.json`` (the spec) and
``thoughts.safetensors`` (the thought parameters).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .. import rng
from ..config import ThoughtConfig, layer_set
from ..errors import CheckpointError, GraftError
from ..layers.kernels import PackedLinear, packed_linear_available, packed_matmul, row_rms
from ..layers.thoughts import BRANCH_WEIGHTS, Routing, ThoughtOutput, ThoughtsFFN, slot_weights
from ..rng import GeneratorNoise, RowNoise
from ._compat import require_transformers

log = logging.getLogger(__name__)
SPEC_FILE = "graft.json"
WEIGHTS_FILE = "thoughts.safetensors"
SPEC_FORMAT = 1
# Relative noise std per unit of creativity: at c = 1 each branch input and hidden pre-activation is
# perturbed by 10% of its RMS. Measured on SmolLM2-135M (greedy, 8 branches): 0.05 already gives 8
# different texts, 0.1 different openings that stay fluent, 0.4 breaks the language.
GRAFT_NOISE_INIT = 0.1
# model_type -> (path of the decoder layer list, MLP form)
SUPPORTED = {"gpt2": ("transformer.h", "gpt2"), "llama": ("model.layers", "gated"),
             "mistral": ("model.layers", "gated"), "qwen2": ("model.layers", "gated")}


@dataclass
class GraftSpec:
    """What was grafted: saved as ``graft.json`` and used to re-graft at load."""

    model_type: str
    layers: list[int]
    thoughts: ThoughtConfig
    seed: int = 0
    format: int = SPEC_FORMAT
    tied: bool = False  # branches share the MLP's weights (a training-free graft); see untie_branches

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraftSpec:
        d = dict(d)
        d["thoughts"] = ThoughtConfig(**d["thoughts"])
        return cls(**d)


class TrainingNoise:
    """The graft's default noise source: i.i.d. draws from a generator seeded at graft time (training).

    Reproducible from ``seed`` for a whole batch, with no per-row guarantee (see ``rng``).
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def for_batch(self, batch_size: int, device: torch.device) -> GeneratorNoise:
        if self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return GeneratorNoise(self.generator, batch_size)


@dataclass
class GraftState:
    """The runtime state shared by the grafted layers of one model (``model.mot_graft``).

    Hugging Face blocks call ``mlp(x)`` with nothing else, so what a forward call needs beyond ``x``
    is set here: by :func:`thought_noise` (noise source, creativity) and by a pre-hook on the base
    model (the call's absolute positions); the layers report their aux losses and stats back.

    Attributes:
        spec: what was grafted.
        training_noise: the seeded default noise source.
        noise: the current source: ``training_noise``, a per-row :class:`RowNoise`, or ``None`` (no noise).
        creativity: ``None`` (the config's default), a float or a ``(B,)`` tensor.
        noise_until: no branch noise in a call whose positions are all at or past this absolute
            position (noise for the prompt and the first tokens only); a ``(B,)`` tensor gives each
            row its own (rows of different prompt lengths in one padded batch); ``None``: always.
        positions: absolute positions of the current call.
        aux: the grafted layers' aux losses of the last forward call.
        stats: ``{layer: stats}`` of the last forward call.
        base_mlps: ``{layer: original MLP}``, kept out of the parameters, for saving.
        hook: the positions pre-hook's handle.
    """

    spec: GraftSpec
    training_noise: TrainingNoise
    noise: TrainingNoise | RowNoise | None = None
    creativity: float | torch.Tensor | None = None
    noise_until: int | torch.Tensor | None = None
    positions: torch.Tensor | None = None
    aux: list[torch.Tensor] = field(default_factory=list)
    stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    base_mlps: dict[int, nn.Module] = field(default_factory=dict)
    hook: RemovableHandle | None = None
    call: dict = field(default_factory=dict)  # what every layer of the current call shares (see call_plan)

    @classmethod
    def new(cls, spec: GraftSpec) -> GraftState:
        training = TrainingNoise(spec.seed)
        return cls(spec, training, noise=training)

    def noise_for(self, batch_size: int, device: torch.device):
        """The noise for a forward call over ``batch_size`` rows (``None``: no noise)."""
        if self.noise is None:
            return None
        past = self.noise_until is not None and self.positions is not None
        if past and bool((self._row_first_position() >= self.noise_until).all()):
            return None
        return self.noise.for_batch(batch_size, device)

    def _row_first_position(self) -> torch.Tensor:
        """The first absolute position of the current call, per row ``(B, 1)`` or shared ``(1,)``."""
        pos = self.positions
        return pos.min(-1, keepdim=True).values.reshape(-1) if pos.dim() > 1 else pos.min().reshape(1)

    def creativity_for(self, default: float) -> float | torch.Tensor | None:
        """The creativity of the current call: rows past their own ``noise_until`` get exactly 0."""
        c = self.creativity
        if not torch.is_tensor(self.noise_until) or self.positions is None:
            return c
        live = self._row_first_position() < self.noise_until.to(self.positions.device)  # (B,)
        base = torch.as_tensor(default if c is None else c, dtype=torch.float32, device=live.device)
        return torch.where(live, base.expand(live.shape), torch.zeros((), device=live.device))

    def begin_call(self, positions: torch.Tensor) -> None:
        """A forward call over absolute ``positions`` starts: record them, forget the last call's aux
        losses and stats (the base model's pre-hook, or a decode step that bypasses the base model)."""
        self.positions = positions
        self.aux.clear()
        self.stats.clear()
        self.call.clear()

    def call_plan(self, layer: GraftedThoughts, x: torch.Tensor):
        """``(noise, creativity, (c, draws))`` of the current call: the same for every grafted layer (one
        config), so worked out by the first layer and kept until the next :meth:`begin_call`."""
        key = (x.shape[0], x.device, x.dtype, id(self.positions), id(self.noise), id(self.creativity),
               id(self.noise_until))
        plan = self.call.get(key)
        if plan is None:
            noise, creativity = self.noise_for(x.shape[0], x.device), self.creativity_for(layer.cfg.creativity)
            plan = self.call[key] = (noise, creativity, layer._creativity(creativity, noise, x.shape[0], x))
        return plan

    def row_loads(self) -> dict[int, torch.Tensor]:
        """``{layer: (B, E)}`` row load of the last call; the layers that skipped their router
        (:class:`RoutingCounts`) are counted together, in one pass over a stacked index."""
        lazy = {i: s for i, s in self.stats.items() if isinstance(s, RoutingCounts)}
        out = {i: s["row_load"] for i, s in self.stats.items() if i not in lazy}
        if lazy:
            out.update(RoutingCounts.row_loads(lazy))
        return dict(sorted(out.items()))

    def aux_loss(self) -> torch.Tensor:
        """The sum of the grafted layers' auxiliary losses over the last forward call."""
        return torch.stack(self.aux).sum() if self.aux else torch.zeros(())


class GraftedThoughts(ThoughtsFFN):
    """A ThoughtsFFN whose branches have the grafted MLP's form; ``forward(x) -> y`` like an HF MLP.

    Args:
        n_embd: model width d.
        hidden: the MLP's hidden width h.
        cfg: the thought configuration (E, k, creativity, route, noise_init, ...).
        form: ``"gpt2"`` (activation with biases) or ``"gated"`` (``act(gate) * up``).
        act: the MLP's own activation module (exact parity with the original).
        bias: biases in the branch projections.
        dropout: output dropout (GPT-2's ``resid_pdrop``).
        layer_idx: decoder layer index (separates noise streams).
        state: the model's shared :class:`GraftState`.
        tied: the E branches share one copy of the MLP's weights (stored with a leading dimension of
            1): a training-free graft's branches are identical copies anyway, and one copy reads the
            weights once per step instead of up to E times. Fine-tuning the branches unties them.
    """

    is_thought_layer = True
    unit_gate = True  # k = 1 keeps the MLP's output whole (the router's gradient as Switch's): c = 0 is the MLP

    def __init__(self, n_embd: int, hidden: int, cfg: ThoughtConfig, *, form: str, act: nn.Module, bias: bool,
                 dropout: float, layer_idx: int, state: GraftState, tied: bool = False):
        cfg = ThoughtConfig(**{**asdict(cfg), "branch_hidden": hidden})
        super().__init__(n_embd, cfg, bias=bias, dropout=dropout, layer_idx=layer_idx)
        self.form, self.act = form, act
        if form == "gated":
            self.w_up = nn.Parameter(torch.empty(cfg.n_branches, n_embd, hidden))
            self.b_up = nn.Parameter(torch.zeros(cfg.n_branches, hidden)) if bias else None
        if tied:
            for name in BRANCH_WEIGHTS:
                p = getattr(self, name, None)
                if p is not None:
                    setattr(self, name, nn.Parameter(p.data[:1].clone()))
        self.state = state  # a plain object (not a submodule), shared by all grafted layers of a model
        self.last_stats: dict[str, torch.Tensor] = {}

    def _activate(self, hid, xin, counts):
        a = self.act(hid)
        if self.form != "gated":
            return a
        up = self._grouped(xin, self.w_up, counts)  # (M, h)
        if self.b_up is not None:
            e_sorted = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
            up = up + self._per_branch(self.b_up, e_sorted)
        return a * up

    @property
    def tied(self) -> bool:
        return self.w_in.shape[0] == 1 and self.cfg.n_branches > 1

    @torch.no_grad()
    def untie(self) -> None:
        """Give every branch its own copy of the shared weights (before training the branches)."""
        E = self.cfg.n_branches
        for name in BRANCH_WEIGHTS:
            p = getattr(self, name, None)
            if p is not None and p.shape[0] == 1:
                setattr(self, name, nn.Parameter(p.data.expand(E, *p.shape[1:]).clone(),
                                                 requires_grad=p.requires_grad))

    @torch.no_grad()
    def load_mlp(self, mlp: nn.Module) -> None:
        """Copy ``mlp`` into every branch (or the one shared copy) and zero the router."""
        if self.form == "gpt2":
            mats = {"w_in": mlp.c_fc.weight, "w_out": mlp.c_proj.weight}  # Conv1D: [in, out]
            vecs = {"b_in": mlp.c_fc.bias, "b_out": mlp.c_proj.bias}
        else:
            mats = {"w_in": mlp.gate_proj.weight.T, "w_up": mlp.up_proj.weight.T, "w_out": mlp.down_proj.weight.T}
            vecs = {"b_in": mlp.gate_proj.bias, "b_up": mlp.up_proj.bias, "b_out": mlp.down_proj.bias}
        for name, w in mats.items():
            p = getattr(self, name)
            if p.shape[0] == 1:  # tied: share the MLP's own storage (no copy; its layout is the fast one)
                p.data = w.detach().unsqueeze(0).to(p.dtype)
            else:
                p.copy_(w.unsqueeze(0).expand(p.shape[0], *w.shape))
        for name, b in vecs.items():
            p = getattr(self, name, None)
            if p is not None:
                p.copy_(b.unsqueeze(0).expand(p.shape[0], -1))
        self.router.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.state
        noise, creativity, c_draws = st.call_plan(self, x)
        if self._shared_path(noise):
            out = self._shared_forward(x, noise, st.positions, creativity, c_draws)
        else:
            out = super().forward(x, noise=noise, positions=st.positions, creativity=creativity,
                                  aux=torch.is_grad_enabled())
        st.aux.append(out.aux_loss)
        st.stats[self.layer_idx] = out.stats
        self.last_stats = out.stats
        return out.y

    def _shared_path(self, noise) -> bool:
        """Whether this call can take :meth:`_shared_forward`: tied branches at inference (no gradient),
        the weighted combiner, per-token noise from a per-row source (or none)."""
        cfg = self.cfg
        return (self.tied and not self.training and not torch.is_grad_enabled() and cfg.combine == "weighted"
                and cfg.noise_mode == "token" and (noise is None or noise.per_row))

    def _shared_forward(self, x: torch.Tensor, noise, positions, creativity, c_draws=None) -> ThoughtOutput:
        """The layer's forward for tied branches at inference, without dispatch.

        Every branch is the same MLP, so the (token, slot) pairs need no sorting by branch: they run
        in their canonical order ``(b, t, slot)``, where the counter-based noise is drawn, through one
        product for the input projection (the gate and up of a gated MLP side by side). The output
        projection is linear, so the slots are combined with their router weights *before* it (an
        inactive slot's weight is 0): one row per token instead of k. Without noise the k slots are
        the same numbers, computed once. Each pair's hidden activation is computed as in
        :meth:`ThoughtsFFN.forward`; the output is the same sum in another order (within ~1e-6
        relative; tests compare the two paths, and SmolLM2's texts are unchanged). On SmolLM2 a
        decode step of a grafted model runs ~1.15x faster than through the dispatch (BENCHMARKS.md).
        """
        B, T, d = x.shape
        N, K = B * T, self.cfg.k
        if positions is None:
            positions = torch.arange(T, device=x.device)
        c, draws = self._creativity(creativity, noise, B, x) if c_draws is None else c_draws
        k_range = self.cfg.k_min is not None and self.cfg.k_min < K
        hooked = bool(self.router._forward_hooks or self.router._forward_pre_hooks)  # a hook may ban branches
        if not (k_range or hooked):
            free, packed = self._free_plan()
            if free:
                return self._free_forward(x, noise, positions, c, draws, packed)
        if k_range or hooked:
            r = self.route(x, noise=noise, positions=positions, creativity=creativity)
            idx, active = r.idx, r.active
            w, _ = slot_weights(r.z, idx, active, unit=self.unit_gate)  # (B, T, K)
        else:  # finite logits: scaled_logits, gumbel_top_k and slot_weights with every slot active
            z = self.router(x) / self.tau  # (B, T, E)
            idx = (z + c * self.router_draws(noise, positions, None, x)[0] if draws else z).topk(K, dim=-1).indices
            active = None
            w = torch.log_softmax(z.gather(-1, idx), dim=-1).exp()  # k = 1: exactly 1 (slot_weights' unit)
        k = K if draws else 1  # rows of the branch per token: one without noise
        xin = x.reshape(N, d)
        if draws:
            relative = self.cfg.noise_scale == "relative"
            c_slot = c if isinstance(c, float) else c.reshape(B, 1, 1)
            a1 = (c_slot * self.s_in[idx]).reshape(N, k, 1)
            if relative:
                a1 = a1 * row_rms(xin).view(N, 1, 1)
            n1 = self.slot_normals(noise, rng.INPUT_NOISE, positions, d, x).view(N, k, d)
            xin = torch.addcmul(xin.view(N, 1, d), a1, n1).view(N * k, d)
        hid, up = self._shared_in(xin)
        if draws:
            a2 = (c_slot * self.s_hid[idx]).reshape(-1)
            if relative:
                a2 = a2 * row_rms(hid)
            n2 = self.slot_normals(noise, rng.HIDDEN_NOISE, positions, self.hidden, x).view(N * k, -1)
            hid = hid.addcmul_(a2.unsqueeze(1), n2)
        a = self.act(hid) if up is None else self.act(hid) * up
        if k > 1:  # the output projection is linear: the slots are combined before it, one row per token
            out = self._grouped((a.view(N, k, -1) * w.view(N, k, 1)).sum(1), self.w_out, None)
            if self.b_out is not None:
                out = out + w.view(N, k).sum(1, keepdim=True) * self.b_out[0]
            y = out.view(B, T, d)
        else:  # one row per token already (k = 1, or no noise: the k slots are the same numbers)
            out = self._grouped(a, self.w_out, None)
            if self.b_out is not None:
                out = out + self.b_out[0]
            y = (out.view(B, T, 1, d) * w.unsqueeze(-1)).sum(2)
        if active is not None:
            stats = self._routing_stats(Routing(None, None, None, idx, active), w.dtype)
        else:  # every slot active: each row's T K slots counted by branch
            stats = RoutingCounts.stats(RoutingCounts.counts(idx, self.cfg.n_branches, w.dtype), B, T, K, x.device)
        return ThoughtOutput(self.dropout(y), x.new_zeros(()), stats)

    def routing_free(self) -> bool:
        """Whether the router cannot change this layer's output: every branch is the same function (tied
        weights, one input and one hidden noise scale for all) and the router's weights are zero, as a
        graft starts them, so each slot weighs ``exp(log_softmax(0))`` whichever branch it picks; the
        noise is drawn per slot, not per branch. Worked out again when a parameter changes."""
        return self._free_plan()[0]

    def _free_plan(self) -> tuple[bool, tuple[PackedLinear, PackedLinear] | None]:
        """``(routing_free, packed)``: ``packed`` holds the gate/up and down products prepacked for
        oneDNN (a gated MLP without biases, float32 on CPU), the ones :func:`packed_matmul` would make,
        kept for this layer (weakly, outside it, as there) so that a decode step reaches them without a
        cache lookup per product; else ``None``."""
        params = [p for p in (self.router.weight, self.s_in, self.s_hid, self.w_in, getattr(self, "w_up", None),
                              self.w_out) if p is not None]
        key = tuple((p.data_ptr(), p._version) for p in params)
        plan = _FREE_PLANS.get(self)
        if plan is None or plan[0] != key:
            with torch.no_grad():
                same = all(bool((p == p[0]).all()) for p in (self.s_in, self.s_hid))
                free = self.tied and same and not bool(self.router.weight.any())
                w = self.w_in
                lean = (free and self.form == "gated" and self.b_in is None and self.b_up is None
                        and self.b_out is None and w.device.type == "cpu" and w.dtype == torch.float32
                        and packed_linear_available())
                packed = (PackedLinear(torch.cat([self.w_in[0].t(), self.w_up[0].t()]).contiguous()),
                          PackedLinear(self.w_out[0].t().contiguous())) if lean else None
            plan = _FREE_PLANS[self] = (key, free, packed)
        return plan[1], plan[2]

    def _free_forward(self, x: torch.Tensor, noise, positions, c, draws: bool, packed=None) -> ThoughtOutput:
        """:meth:`_shared_forward` for a :meth:`routing_free` layer: the same numbers without the router.

        The router's logits are 0, so the slots' weights are constants and the branches chosen are the top
        k of ``0 + c g`` (the Gumbel draws alone): they only feed the routing statistics, which are
        counted when read (:class:`RoutingCounts`, all layers at once). Each slot's noise scale is the
        one scale every branch shares. The arithmetic is :meth:`_shared_forward`'s, operation for
        operation (tests compare the two paths' outputs and routing for equality)."""
        B, T, d = x.shape
        N, K, E = B * T, self.cfg.k, self.cfg.n_branches
        g = self.router_draws(noise, positions, None, x)[0] if draws else None
        w = self._slot_weight(K, x)  # (K,)
        k = K if draws else 1
        xin = x.reshape(N, d)
        relative = self.cfg.noise_scale == "relative"
        if draws:
            c_row = c if isinstance(c, float) else c.reshape(B, 1)
            a1 = _per_token(c_row * self.s_in[:1], B, T).view(N, 1, 1)
            if relative:
                a1 = a1 * row_rms(xin).view(N, 1, 1)
            n1 = self.slot_normals(noise, rng.INPUT_NOISE, positions, d, x).view(N, k, d)
            xin = torch.addcmul(xin.view(N, 1, d), a1, n1).view(N * k, d)
        if packed is not None:
            hid, up = packed[0](xin).split(self.hidden, dim=-1)
        else:
            hid, up = self._shared_in(xin)
        if draws:
            a2 = _per_token(c_row * self.s_hid[:1], B, T * k)
            if relative:
                a2 = a2 * row_rms(hid)
            n2 = self.slot_normals(noise, rng.HIDDEN_NOISE, positions, self.hidden, x).view(N * k, -1)
            hid = hid.addcmul_(a2.unsqueeze(1), n2)
        a = self.act(hid) if up is None else self.act(hid) * up
        down = packed[1] if packed is not None else (lambda v: self._grouped(v, self.w_out, None))
        if k > 1:
            out = down((a.view(N, k, -1) * w.view(1, k, 1)).sum(1))
            if self.b_out is not None:
                out = out + w.sum() * self.b_out[0]
            y = out.view(B, T, d)
        else:
            out = down(a)
            if self.b_out is not None:
                out = out + self.b_out[0]
            y = out.view(B, T, d) if K == 1 else (out.view(B, T, 1, d) * w.view(1, 1, K, 1)).sum(2)
        return ThoughtOutput(y, _zero(x), RoutingCounts(B, T, K, E, w.dtype, c, g, x.device))

    def _slot_weight(self, K: int, x: torch.Tensor) -> torch.Tensor:
        """``exp(log_softmax(0))`` over ``K`` slots in ``x``'s dtype: a zero router's slot weights (kept)."""
        w = self.__dict__.get("_zero_weights")
        if w is None or w.shape[0] != K or w.dtype != x.dtype or w.device != x.device:
            w = self.__dict__["_zero_weights"] = torch.log_softmax(x.new_zeros(1, 1, K), dim=-1).exp().view(K)
        return w

    def _shared_in(self, xin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The shared branch's hidden pre-activation and (gated form) its up projection."""
        if self.form != "gated":
            hid = self._grouped(xin, self.w_in, None)
            return (hid if self.b_in is None else hid + self.b_in[0]), None
        both = packed_matmul(xin, (self.w_in[0], self.w_up[0]), self)
        if both is None:
            hid, up = xin @ self.w_in[0], xin @ self.w_up[0]
        else:
            hid, up = both.split(self.hidden, dim=-1)  # views: the hidden noise is added to hid in place
        if self.b_in is not None:
            hid = hid + self.b_in[0]
        if self.b_up is not None:
            up = up + self.b_up[0]
        return hid, up


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A zero scalar of ``x``'s dtype and device (the aux loss of an inference call), made once."""
    z = _ZEROS.get((x.device, x.dtype))
    if z is None:
        z = _ZEROS[(x.device, x.dtype)] = x.new_zeros(())
    return z


_ZEROS: dict = {}
# layer -> (parameter versions, routing_free(), packed products): held weakly, outside the module, so that
# copying or pickling a layer never meets a packed tensor
_FREE_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _per_token(v: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """``(B * T,)``: a value per row (``(B, 1)``) or for all (``(1,)``) repeated for each of the row's ``T``
    tokens (a view where nothing repeats)."""
    v = v.reshape(-1, 1)
    return v.reshape(-1) if T == 1 and v.shape[0] == B else v.expand(B, T).reshape(-1)


class RoutingCounts(Mapping):
    """The routing statistics of a call that skipped its router (:meth:`GraftedThoughts._free_forward`):
    ``load``, ``row_load`` and ``active_k`` as :meth:`GraftedThoughts._shared_forward` reports them,
    worked out when first read. The router's logits are 0, so the branches chosen are the top k of
    ``0 + c g`` over the Gumbel draws ``g`` ``(B, T or 1, E)`` (no draws: of the zero logits)."""

    def __init__(self, B: int, T: int, k: int, E: int, dtype: torch.dtype, c, g: torch.Tensor | None,
                 device: torch.device):
        self.shape, self.E, self.dtype, self.c, self.g, self.device = (B, T, k), E, dtype, c, g, device
        self._stats: dict[str, torch.Tensor] | None = None

    def idx(self) -> torch.Tensor:
        """The chosen branches ``(B, T, k)``, as the router would choose them."""
        return self.choose(self.g, self.c, self.shape, self.E, self.dtype, self.device)

    @staticmethod
    def choose(g, c, shape: tuple[int, int, int], E: int, dtype, device) -> torch.Tensor:
        """Top k of ``0 + c g`` (``g`` ``(..., B, T or 1, E)``, ``c`` a float or ``(B, 1, 1)``), ``(..., B, T, k)``."""
        B, T, K = shape
        if g is None:
            return torch.zeros(B, T, E, dtype=dtype, device=device).topk(K, dim=-1).indices
        scores = (c * g).add_(0.0)  # + 0.0: the zero logits (a -0.0 draw at creativity 0 becomes +0.0, as there)
        return scores.expand(*scores.shape[:-2], T, E).topk(K, dim=-1).indices

    @staticmethod
    def counts(idx: torch.Tensor, E: int, dtype) -> torch.Tensor:
        """``(..., B, E)`` slots per branch and row of ``idx`` ``(..., B, T, k)``."""
        *lead, T, K = idx.shape
        return (idx.reshape(*lead, T * K, 1) == torch.arange(E, device=idx.device)).sum(-2, dtype=dtype)

    @classmethod
    def row_loads(cls, layers: dict[int, RoutingCounts]) -> dict[int, torch.Tensor]:
        """``{layer: row_load}`` of several layers' counts, their draws stacked and counted in one pass."""
        first = next(iter(layers.values()))
        same = all(s.shape == first.shape and s.c is first.c
                   and (s.g is None) == (first.g is None) and (s.g is None or s.g.shape == first.g.shape)
                   for s in layers.values())
        if len(layers) == 1 or not same:
            return {i: s["row_load"] for i, s in layers.items()}
        g = None if first.g is None else torch.stack([s.g for s in layers.values()])
        idx = cls.choose(g, first.c, first.shape, first.E, first.dtype, first.device)
        if g is None:
            idx = idx.expand(len(layers), *idx.shape)
        _, T, K = first.shape
        loads = cls.counts(idx, first.E, first.dtype) / (T * K)
        return dict(zip(layers, loads.unbind(0), strict=True))

    @staticmethod
    def stats(counts: torch.Tensor, B: int, T: int, K: int, device) -> dict[str, torch.Tensor]:
        """``load``, ``row_load`` and ``active_k`` from ``(B, E)`` counts of every slot active."""
        return {"load": counts.sum(0) / (B * T * K), "row_load": counts / (T * K),
                "active_k": torch.full((), float(K), device=device)}

    def _compute(self) -> dict[str, torch.Tensor]:
        if self._stats is None:
            self._stats = self.stats(self.counts(self.idx(), self.E, self.dtype), *self.shape, self.device)
        return self._stats

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._compute()[key]

    def __iter__(self):
        return iter(("load", "row_load", "active_k"))

    def __len__(self) -> int:
        return 3


def get_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _arch(model: nn.Module) -> tuple[str, str, str]:
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype not in SUPPORTED:
        raise GraftError(f"cannot graft a {mtype or type(model).__name__!r} model: supported architectures are "
                         f"{', '.join(sorted(SUPPORTED))} (Hugging Face causal LMs)")
    return mtype, *SUPPORTED[mtype]


def _positions_hook(state: GraftState):
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        T = ids.shape[1]
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = kwargs.get("cache_position")
        if pos is None:
            past = kwargs.get("cache", kwargs.get("past_key_values"))
            start = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
            pos = torch.arange(start, start + T, device=ids.device)
        state.begin_call(pos[0] if pos.dim() == 2 and pos.shape[0] == 1 else pos)
    return hook


def graft(model: nn.Module, layers: str | list[int] = "all", *, n_branches: int = 4, k: int = 2,
          creativity: float = 1.0, route: str = "token", noise_init: float = GRAFT_NOISE_INIT,
          noise_scale: str = "relative", noise_mode: str = "token", seed: int = 0,
          thoughts: ThoughtConfig | None = None, tied: bool = True) -> nn.Module:
    """Replace the MLP of ``layers`` by thought layers whose branches copy it (in place).

    Args:
        model: a Hugging Face causal LM of a supported architecture (see ``SUPPORTED``).
        layers: ``"all"``, ``"lower"``, ``"upper"``, ``"0,2,5"`` or decoder layer indices
            (:func:`..config.layer_set`).
        n_branches, k, creativity, route, noise_init, noise_scale, noise_mode: the :class:`ThoughtConfig` fields
            (ignored when ``thoughts`` is given). The default noise is relative: at creativity c a
            branch's input and hidden pre-activation get Gaussian noise of std ``c * noise_init`` times
            their own RMS (see ``GRAFT_NOISE_INIT``).
        seed: seeds the training-time noise generator.
        tied: the branches share one copy of the MLP (training-free grafts: identical copies anyway,
            and E times less memory traffic); :func:`untie_branches` before training the branches.
    Returns:
        ``model``, with ``model.mot_graft`` (its :class:`GraftState`).
    Raises:
        GraftError: unsupported architecture or an already grafted model; ConfigError: bad layers/config.
    """
    mtype, path, form = _arch(model)
    if hasattr(model, "mot_graft"):
        raise GraftError("this model is already grafted")
    blocks = get_path(model, path)
    n = len(blocks)
    idx = layer_set(layers, n)
    cfg = thoughts or ThoughtConfig(n_branches=n_branches, k=k, creativity=creativity, route=route,
                                    noise_init=noise_init, noise_scale=noise_scale, noise_mode=noise_mode,
                                    balance_coef=0.01, z_coef=1e-3)
    state = GraftState.new(GraftSpec(mtype, idx, cfg, seed, tied=tied))
    for i in idx:
        mlp = blocks[i].mlp
        if form == "gpt2":
            d, h = mlp.c_fc.weight.shape
            act, bias, drop = mlp.act, True, float(mlp.dropout.p)
            ref = mlp.c_fc.weight
        else:
            h, d = mlp.gate_proj.weight.shape
            act, bias, drop = mlp.act_fn, mlp.gate_proj.bias is not None, 0.0
            ref = mlp.gate_proj.weight
        layer = GraftedThoughts(d, h, cfg, form=form, act=act, bias=bias, dropout=drop, layer_idx=i, state=state,
                                tied=tied)
        layer.to(device=ref.device, dtype=ref.dtype)
        layer.load_mlp(mlp)
        state.base_mlps[i] = mlp
        layer.train(mlp.training)
        blocks[i].mlp = layer
    base = getattr(model, "base_model", model)
    state.hook = base.register_forward_pre_hook(_positions_hook(state), with_kwargs=True)
    model.mot_graft = state
    return model


def grafted_layers(model: nn.Module) -> dict[int, GraftedThoughts]:
    """``{layer index: GraftedThoughts}`` of a grafted model."""
    if not hasattr(model, "mot_graft"):
        raise GraftError("this model is not grafted: call graft(model, ...) first")
    _, path, _ = _arch(model)
    blocks = get_path(model, path)
    return {i: blocks[i].mlp for i in model.mot_graft.spec.layers}


def untie_branches(model: nn.Module) -> None:
    """Give every branch of every grafted layer its own weights (needed before training the branches)."""
    for layer in grafted_layers(model).values():
        layer.untie()
    model.mot_graft.spec.tied = False


def freeze_except_thoughts(model: nn.Module, branches: bool = True) -> tuple[int, int]:
    """Freeze everything but the thought layers; with ``branches=False`` also the branch weights (only
    the router, its temperature and the noise scales train). Returns ``(trainable, total)`` counts."""
    layers = grafted_layers(model)
    if branches and any(layer.tied for layer in layers.values()):
        untie_branches(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers.values():
        for name, p in layer.named_parameters():
            p.requires_grad_(branches or name.split(".")[0] not in BRANCH_WEIGHTS)
    uniq = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in uniq if p.requires_grad), sum(p.numel() for p in uniq)


@contextlib.contextmanager
def thought_noise(model: nn.Module, noise: RowNoise | list[int] | TrainingNoise | None, creativity=None,
                  noise_until: int | torch.Tensor | None = None):
    """Temporarily set the grafted layers' noise source and creativity.

    Args:
        noise: a :class:`RowNoise`, a list of per-row seeds, the state's ``training_noise`` (the
            seeded training generator) or ``None`` (no noise: deterministic top-k).
        creativity: ``None`` (config default), a float or a ``(B,)`` tensor.
        noise_until: an absolute position from which on no noise is drawn, or a ``(B,)`` tensor of one
            per row (``None``: everywhere).
    """
    st = grafted_state(model)
    old = (st.noise, st.creativity, st.noise_until)
    if isinstance(noise, (list, tuple)):
        noise = RowNoise(noise, next(model.parameters()).device)
    st.noise, st.creativity, st.noise_until = noise, creativity, noise_until
    try:
        yield st
    finally:
        st.noise, st.creativity, st.noise_until = old


def grafted_state(model: nn.Module) -> GraftState:
    if not hasattr(model, "mot_graft"):
        raise GraftError("this model is not grafted: call graft(model, ...) first")
    return model.mot_graft


# ------------------------------------------------------------------------------------ save / load

def is_grafted_dir(path: str | Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


@contextlib.contextmanager
def _original_mlps(model):
    """Temporarily put the original MLPs back (to save the base architecture's weights)."""
    _, path, _ = _arch(model)
    blocks = get_path(model, path)
    layers = grafted_layers(model)
    try:
        for i in layers:
            blocks[i].mlp = model.mot_graft.base_mlps[i]
        yield
    finally:
        for i, layer in layers.items():
            blocks[i].mlp = layer


def save_grafted(model: nn.Module, out: str | Path, tokenizer=None, *, overwrite: bool = False) -> Path:
    """Save base weights (``save_pretrained`` of the original architecture), ``graft.json`` and
    ``thoughts.safetensors`` (plus the tokenizer if given), written to a temporary directory and renamed.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} is not empty; choose another directory or pass overwrite=True (--force)")
    st = grafted_state(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _original_mlps(model):
        model.save_pretrained(tmp)
    tensors = {f"layers.{i}.{n}": p.detach().contiguous().cpu() for i, layer in grafted_layers(model).items()
               for n, p in layer.state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    (tmp / SPEC_FILE).write_text(json.dumps(st.spec.to_dict(), indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_grafted(path: str | Path, **from_pretrained_kwargs) -> nn.Module:
    """Rebuild a grafted model: ``AutoModelForCausalLM.from_pretrained(path)``, re-graft, load the thoughts."""
    require_transformers()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not is_grafted_dir(path):
        raise CheckpointError(f"{path} has no {SPEC_FILE}: not a grafted model directory (make one with mot graft)")
    try:
        spec = GraftSpec.from_dict(json.loads((path / SPEC_FILE).read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / SPEC_FILE} is not a valid graft spec: {e}") from None
    if spec.format != SPEC_FORMAT:
        raise CheckpointError(f"{path / SPEC_FILE} has format {spec.format}; this version reads {SPEC_FORMAT}")
    model = AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
    graft(model, spec.layers, thoughts=spec.thoughts, seed=spec.seed, tied=spec.tied)
    tensors = load_file(str(path / WEIGHTS_FILE))
    for i, layer in grafted_layers(model).items():
        prefix = f"layers.{i}."
        sd = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
        missing, unexpected = layer.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: layer {i} missing {missing}, unexpected {unexpected}")
    return model.eval()
