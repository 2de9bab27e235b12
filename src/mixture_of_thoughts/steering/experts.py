"""Expert control for mixture-of-experts models: record, force, ban and steer routing (DESIGN §6).

Works on Hugging Face transformers v5 MoE models and on this package's own Mixture-of-Thoughts
layers, through forward hooks that :class:`ExpertController` removes on exit.

**Where the selection happens.** In transformers v5 every supported MoE block calls its router
module and hands the router's ``(router_logits, top_k_weights, top_k_index)`` to a fused experts
module (``mlp.gate`` for Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE; ``mlp.router`` for GPT-OSS). A
forward hook on the router recomputes ``top_k_weights`` and ``top_k_index`` from edited logits with
the router's own rule, so the edit changes which experts actually run and with what weight:

* ``softmax_topk`` (Mixtral, Qwen-MoE, OLMoE): ``p = softmax(logits)``, top-k of ``p``, then
  ``p / sum(p)`` over the chosen ones when the model renormalises (Mixtral always; the others when
  ``config.norm_topk_prob``).
* ``topk_softmax`` (GPT-OSS): top-k of the logits, softmax over the chosen logits.

A pre-hook on the MoE block records the batch shape (the router only sees flattened tokens), so
every batch row can carry its own profile. For a MoT layer the hook edits ``layer.router``'s logits
before the layer's own (Gumbel) top-k.

**Edits** (an :class:`ExpertProfile`, applied in this order, per token):

* ``boost`` (SteerMoE, Dahlke et al. 2025): the chosen experts' logits become the token's max
  logit + ``delta``; ``suppress``: the token's min logit − ``delta``.
* ``force``: every other expert's logit becomes −inf; ``ban``: the banned experts' logits become
  −inf. When fewer than k experts stay allowed, the spare slots go to an allowed expert with
  weight 0, so no forbidden expert ever receives a token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, NoExpertsError

NEG_INF = float("-inf")
ExpertSpec = Sequence[int] | Mapping[int, Sequence[int]] | None  # all MoE layers, or {layer: experts}

# model_type -> (router attribute of the MoE block, selection rule, renormalise-over-top-k flag or config field)
HF_MOE = {
    "mixtral": ("gate", "softmax_topk", True),
    "qwen2_moe": ("gate", "softmax_topk", "norm_topk_prob"),
    "qwen3_moe": ("gate", "softmax_topk", "norm_topk_prob"),
    "olmoe": ("gate", "softmax_topk", "norm_topk_prob"),
    "gpt_oss": ("router", "topk_softmax", None),
}


@dataclass
class ExpertProfile:
    """Which experts a batch row must, must not, or should prefer to use.

    Each field is a list of expert ids applied to every MoE layer, or ``{layer: [ids]}``.

    Attributes:
        force: only these experts may be selected.
        ban: these experts may not be selected.
        boost: logits raised to the token's max + ``delta`` (SteerMoE activation).
        suppress: logits lowered to the token's min − ``delta`` (SteerMoE deactivation).
        delta: the SteerMoE margin (>= 0).
        name: a label for reports.
    """

    force: ExpertSpec = None
    ban: ExpertSpec = None
    boost: ExpertSpec = None
    suppress: ExpertSpec = None
    delta: float = 1.0
    name: str = ""

    def __post_init__(self):
        if not self.delta >= 0:
            raise ConfigError(f"delta must be >= 0, got {self.delta}")

    def experts(self, what: str, layer: int) -> list[int]:
        spec = getattr(self, what)
        if spec is None:
            return []
        if isinstance(spec, Mapping):
            return [int(e) for e in spec.get(layer, [])]
        return [int(e) for e in spec]

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, w) in (None, [], {}) for w in ("force", "ban", "boost", "suppress"))


@dataclass
class MoELayer:
    """One controllable MoE layer."""

    index: int  # decoder layer index
    block: nn.Module  # the MoE block (sees (B, T, d))
    router: nn.Module  # the router (sees flattened tokens for HF models)
    n_experts: int
    top_k: int
    rule: str  # "softmax_topk" | "topk_softmax" | "mot"
    renormalise: bool = True


def _hf_layers(model: nn.Module) -> list[MoELayer]:
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in HF_MOE:
        return []
    attr, rule, renorm = HF_MOE[mtype]
    if isinstance(renorm, str):
        renorm = bool(getattr(cfg, renorm, False))
    base = getattr(model, "model", model)
    out = []
    for i, layer in enumerate(getattr(base, "layers", [])):
        block = getattr(layer, "mlp", None)
        router = getattr(block, attr, None)
        if router is None or not hasattr(router, "top_k"):
            continue  # a dense layer (e.g. Qwen2-MoE's mlp_only_layers)
        out.append(MoELayer(i, block, router, int(router.num_experts), int(router.top_k), rule, renorm))
    return out


def _mot_layers(model: nn.Module) -> list[MoELayer]:
    from ..layers.thoughts import ThoughtsFFN

    out = []
    for m in model.modules():
        if isinstance(m, ThoughtsFFN) or getattr(m, "is_thought_layer", False):
            out.append(MoELayer(int(m.layer_idx), m, m.router, int(m.cfg.n_branches), int(m.cfg.k), "mot"))
    return out


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every controllable MoE layer of ``model``, in depth order.

    Raises:
        NoExpertsError: when there is none, naming the supported architectures.
    """
    layers = _mot_layers(model) or _hf_layers(model)
    if not layers:
        mtype = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise NoExpertsError(
            f"{mtype!r} has no mixture-of-experts layers to control; supported: Hugging Face "
            f"{', '.join(sorted(HF_MOE))}, and models with Mixture-of-Thoughts layers "
            "(mixture_of_thoughts Transformer with thought_layers, or a grafted model)")
    return sorted(layers, key=lambda m: m.index)


def edit_logits(logits: torch.Tensor, allowed: torch.Tensor, boost: torch.Tensor, suppress: torch.Tensor,
                delta: torch.Tensor) -> torch.Tensor:
    """Apply SteerMoE shifts, then the allowed mask.

    Args:
        logits: (R, T, E) router logits (R rows of a batch, T tokens each).
        allowed, boost, suppress: (R, 1, E) boolean masks (or (1, 1, E) for every row).
        delta: (R, 1, 1) SteerMoE margins.
    Returns:
        (R, T, E) edited logits (same dtype).
    """
    hi = logits.amax(-1, keepdim=True)
    lo = logits.amin(-1, keepdim=True)
    x = torch.where(boost, hi + delta.to(logits.dtype), logits)
    x = torch.where(suppress, lo - delta.to(logits.dtype), x)
    return x.masked_fill(~allowed, NEG_INF)


def select_experts(logits: torch.Tensor, k: int, rule: str, renormalise: bool, out_dtype: torch.dtype):
    """Top-k selection with a Hugging Face router's rule (see module docstring).

    Args:
        logits: (N, E) edited logits; −inf marks forbidden experts.
    Returns:
        ``(weights (N, k) out_dtype, index (N, k) long)``; slots that fell on a forbidden expert are
        given the token's best allowed expert with weight 0.
    """
    if rule == "topk_softmax":
        top_v, top_i = torch.topk(logits, k, dim=-1)
        w = torch.softmax(top_v, dim=1, dtype=top_v.dtype)
    else:
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        w, top_i = torch.topk(probs, k, dim=-1)
        top_v = logits.gather(-1, top_i)
        if renormalise:
            w = w / w.sum(dim=-1, keepdim=True)
    dead = torch.isneginf(top_v)
    if bool(dead.any()):
        top_i = torch.where(dead, top_i[:, :1].expand_as(top_i), top_i)
        w = w.masked_fill(dead, 0.0)
    return w.to(out_dtype), top_i


@dataclass
class Record:
    """Routing seen by one layer in one forward call.

    Attributes:
        counts: (B, E) tokens of each row that used each expert with non-zero weight.
        tokens: tokens per row (T).
        index, weight: (B, T, k) the selection itself (Hugging Face layers; ``None`` for MoT layers,
            whose stats report per-row loads only).
    """

    counts: torch.Tensor
    tokens: int
    index: torch.Tensor | None = None
    weight: torch.Tensor | None = None


@dataclass
class _State:
    shape: tuple[int, int] | None = None
    records: list[Record] = field(default_factory=list)


class ExpertController:
    """Record, force, ban and steer experts; a context manager that removes its hooks on exit.

    Example::

        with ExpertController(model, record=True) as ctl:
            ctl.set_profile(ExpertProfile(force=[1, 3]))
            model(ids)
            rates = ctl.activation_rates()   # (L, E)

    Args:
        model: a Hugging Face MoE causal LM or a model with Mixture-of-Thoughts layers.
        record: keep each forward call's selection (HF: index and weight per token; MoT: the
            routing the layer reports).
    """

    def __init__(self, model: nn.Module, *, record: bool = False):
        self.model = model
        self.layers = find_moe_layers(model)
        self.record = record
        self._handles: list = []
        self._state = {m.index: _State() for m in self.layers}
        self._profiles: list[ExpertProfile] | None = None
        self._masks: dict[int, tuple] = {}

    @property
    def n_experts(self) -> int:
        return max(m.n_experts for m in self.layers)

    # ------------------------------------------------------------------ profiles

    def set_profile(self, profile: ExpertProfile | Sequence[ExpertProfile] | None) -> None:
        """One profile for every batch row, one per row (a list), or ``None`` to stop editing.

        Raises:
            ConfigError: an expert id or layer out of range, or a row with no allowed expert.
        """
        if profile is None:
            self._profiles, self._masks = None, {}
            return
        profiles = [profile] if isinstance(profile, ExpertProfile) else list(profile)
        if not profiles:
            raise ConfigError("set_profile needs at least one ExpertProfile")
        by_index = {m.index: m for m in self.layers}
        for p in profiles:
            for what in ("force", "ban", "boost", "suppress"):
                spec = getattr(p, what)
                if isinstance(spec, Mapping):
                    bad = [layer for layer in spec if layer not in by_index]
                    if bad:
                        raise ConfigError(f"{what}: layers {bad} are not MoE layers; MoE layers are {sorted(by_index)}")
        masks = {}
        for m in self.layers:
            E = m.n_experts
            rows = []
            for r, p in enumerate(profiles):
                row = {}
                for what in ("force", "ban", "boost", "suppress"):
                    ids = p.experts(what, m.index)
                    bad = [e for e in ids if not 0 <= e < E]
                    if bad:
                        raise ConfigError(f"{what}: expert ids {bad} out of range; "
                                          f"layer {m.index} has experts 0..{E - 1}")
                    v = torch.zeros(E, dtype=torch.bool)
                    v[ids] = True
                    row[what] = v
                spec_force = p.force if not isinstance(p.force, Mapping) else p.force.get(m.index)
                allowed = row["force"] if spec_force is not None else torch.ones(E, dtype=torch.bool)
                allowed = allowed & ~row["ban"]
                if not bool(allowed.any()):
                    raise ConfigError(f"profile {p.name or r} leaves no allowed expert in layer {m.index}")
                row["allowed"] = allowed
                rows.append(row)
            stack = {w: torch.stack([row[w] for row in rows])[:, None, :] for w in ("allowed", "boost", "suppress")}
            delta = torch.tensor([float(p.delta) for p in profiles])[:, None, None]
            active = any(not p.is_empty for p in profiles)
            masks[m.index] = (stack["allowed"], stack["boost"], stack["suppress"], delta, active)
        self._profiles, self._masks = profiles, masks

    def force_rows(self, experts: torch.Tensor) -> None:
        """Row ``r`` may use expert ``experts[r]`` alone in every MoE layer: the same edit as one
        ``ExpertProfile(force=[experts[r]])`` per row, built without per-row Python work.

        Raises:
            ConfigError: an expert id out of range of some layer.
        """
        experts = torch.as_tensor(experts, dtype=torch.long).reshape(-1).cpu()
        if experts.numel() == 0:
            raise ConfigError("force_rows needs one expert per row, got none")
        masks = {}
        for m in self.layers:
            if int(experts.min()) < 0 or int(experts.max()) >= m.n_experts:
                raise ConfigError(f"force_rows: expert ids must be in 0..{m.n_experts - 1} (layer {m.index}), got "
                                  f"{int(experts.min())}..{int(experts.max())}")
            allowed = torch.nn.functional.one_hot(experts, m.n_experts).bool()[:, None, :]
            none = torch.zeros_like(allowed)
            masks[m.index] = (allowed, none, none, torch.zeros(len(experts), 1, 1), True)
        self._profiles, self._masks = [ExpertProfile(name="force_rows")], masks

    # ------------------------------------------------------------------ hooks

    def __enter__(self) -> ExpertController:
        for m in self.layers:
            self._handles.append(m.block.register_forward_pre_hook(self._pre_hook(m)))
            self._handles.append(m.router.register_forward_hook(self._router_hook(m)))
            if m.rule == "mot" and self.record:
                self._handles.append(m.block.register_forward_hook(self._mot_record_hook(m)))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, m: MoELayer):
        def hook(module, args, kwargs=None):
            x = args[0] if args else None
            if torch.is_tensor(x) and x.dim() == 3:
                self._state[m.index].shape = (x.shape[0], x.shape[1])
        return hook

    def _row_masks(self, m: MoELayer, B: int, device):
        allowed, boost, suppress, delta, active = self._masks[m.index]
        R = allowed.shape[0]
        if R not in (1, B):
            raise ConfigError(f"{R} expert profiles for a batch of {B} rows: give one profile, or one per row")
        return tuple(t.to(device) for t in (allowed, boost, suppress, delta)), active

    def _router_hook(self, m: MoELayer):
        def hook(module, args, output):
            st = self._state[m.index]
            if m.rule == "mot":
                if self._profiles is None:
                    return None
                logits = output  # (B, T, E)
                (allowed, boost, suppress, delta), active = self._row_masks(m, logits.shape[0], logits.device)
                return edit_logits(logits, allowed, boost, suppress, delta) if active else None
            logits, weights, index = output
            B, T = st.shape if st.shape is not None else (1, logits.shape[0])
            new = None
            if self._profiles is not None:
                (allowed, boost, suppress, delta), active = self._row_masks(m, B, logits.device)
                if active:
                    edited = edit_logits(logits.view(B, T, -1), allowed, boost, suppress, delta).view(B * T, -1)
                    w, i = select_experts(edited, m.top_k, m.rule, m.renormalise, weights.dtype)
                    weights, index = w, i
                    new = (logits, w, i)
            if self.record:
                idx = index.detach().view(B, T, -1).cpu()
                w = weights.detach().view(B, T, -1).float().cpu()
                used = torch.zeros(B, T, m.n_experts).scatter_add_(-1, idx, (w > 0).float()).clamp(max=1)
                st.records.append(Record(used.sum(1), T, idx, w))
            return new
        return hook

    def _mot_record_hook(self, m: MoELayer):
        def hook(module, args, output):
            # ThoughtsFFN returns ThoughtOutput; a grafted layer returns y and keeps its stats
            stats = output.stats if hasattr(output, "stats") else getattr(module, "last_stats", {})
            if "row_load" not in stats:
                return
            T = args[0].shape[1]
            # row_load is the fraction of a row's (token, slot) pairs per branch; a token never takes
            # a branch twice, so tokens per branch = row_load * active_k * T
            counts = stats["row_load"].detach().float().cpu() * float(stats["active_k"]) * T
            self._state[m.index].records.append(Record(counts, T))
        return hook

    # ------------------------------------------------------------------ records

    def records(self, layer: int) -> list[Record]:
        return self._state[layer].records

    def reset_records(self) -> None:
        for st in self._state.values():
            st.records.clear()

    def counts(self) -> tuple[torch.Tensor, int]:
        """Tokens routed to each expert per layer over all recorded calls.

        Returns:
            ``(counts (L, E), tokens)``: per layer, tokens that used each expert (with non-zero
            weight), and the number of tokens seen by the first layer.
        """
        out = torch.zeros(len(self.layers), self.n_experts)
        n_tok = 0
        for li, m in enumerate(self.layers):
            recs = self._state[m.index].records
            for r in recs:
                out[li, :r.counts.shape[1]] += r.counts.sum(0)
            if li == 0:
                n_tok = sum(r.tokens * r.counts.shape[0] for r in recs)
        return out, n_tok

    def activation_rates(self) -> torch.Tensor:
        """(L, E) fraction of recorded tokens that used each expert (each row sums to about k)."""
        c, n = self.counts()
        return c / max(n, 1)
