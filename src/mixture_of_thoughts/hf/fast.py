"""A lean decode step for Llama-family Hugging Face models: static KV cache, logits of the last
position only, optional bfloat16 weights.

Why. A decode step of SmolLM2-135M for 8 rows spends ~85% of its time in matrix products, and MKL's
``F.linear`` reads the weights of such a skinny product at ~20 GB/s on a 2-core AMD EPYC; oneDNN's
kernel on prepacked weights reads them ~3x faster. This step does the model's arithmetic with its
weights prepacked once, over a static cache (no concatenation per step), and the head only at the last
position (the generic forward computes it for every prompt position):

* **float32 (the reference path).** The same operations in the same order as the model's forward
  (RMSNorm statistics in float32, RoPE from the model's own rotary module, SDPA with grouped KV heads,
  the same weight tensors). With ``packed=False`` (``F.linear``) a decode step's logits are the
  model's bit for bit; the prompt's differ by ~1 ulp, since the head reads only its last position.
  By default the weights are prepacked for oneDNN (:class:`..layers.kernels.PackedLinear`): ~2x
  faster for a few rows, the logits within ~1e-4 of the model's, and the same texts (tests compare
  every branch's text; on SmolLM2, 24 of 24 plain and 24 of 24 grafted branches of 64 tokens).
* **bfloat16.** The projection, embedding and head weights are copied once to bfloat16 (half the
  bytes to read per step; CPUs with AVX512-BF16 run them natively), activations are bfloat16, the
  norm statistics and the logits float32. Texts differ from the float32 path's (a test bounds the
  logit error); it is an option, never the default.

Left-padded rows (the comparison's prompts of different lengths, ``mot vary``, repel and diverse beams)
go through :class:`PaddedLean`, the twin of :class:`.vary.PaddedLM`: each row's own positions and the
boolean causal-and-padding mask transformers' SDPA path builds, so that unpacked logits stay the
model's bit for bit there too; prompts read once for several rows, and rows reordered for beams.

A grafted model (:mod:`.graft`) goes through the same step: its thought layers are called as modules
(in their own dtype), and the positions the model's pre-hook would record are set on the graft state.
Anything the lean step could not honour (another architecture, forward hooks on the model's modules,
training mode, sliding-window attention) keeps the model's own forward: :func:`fast_blocker` says why.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layers.kernels import PackedLinear, packed_linear_available

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def fast_blocker(model: nn.Module) -> str | None:
    """Why the lean step cannot run ``model`` (``None``: it can)."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype != "llama":
        return f"the lean decode step supports Llama-family models, not {mtype or type(model).__name__!r}"
    if model.training:
        return "the model is in training mode"
    if getattr(cfg, "pretraining_tp", 1) != 1 or getattr(cfg, "sliding_window", None):
        return "the model uses tensor-parallel pretraining slices or sliding-window attention"
    base = model.model
    graft = getattr(model, "mot_graft", None)
    graft_hook = graft.hook.id if graft is not None and graft.hook is not None else None
    mlps = tuple(f"model.layers.{i}.mlp" for i in range(len(base.layers)))  # called as modules: hooks fire
    for name, m in model.named_modules():
        if name.startswith(mlps):
            continue
        hooks = [k for k in (*m._forward_hooks, *m._forward_pre_hooks) if not (m is base and k == graft_hook)]
        if hooks:
            return f"a forward hook is registered on {name or 'the model'} (the lean step would bypass it)"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``: statistics in float32, the result in ``x``'s dtype times the weight."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as ``apply_rotary_pos_emb``: ``x cos + rotate_half(x) sin``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _Layer:
    """One decoder layer's projections (on the model's weights in float32, bfloat16 copies otherwise).

    Prepacked, the three attention projections are one matrix and so are the MLP's gate and up: fewer,
    larger products (30 layers' qkv and gate/up of SmolLM2 for 8 rows: 12.1 -> 8.7 ms), and the same
    numbers as the separate products (each output's sum is unchanged; tested). Unpacked (``F.linear``,
    the bit-for-bit reference) they stay separate, as in the model."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype, packed: bool):
        def lin(*ms):  # one product of the modules' stacked weights (a single module's own weight: no copy)
            def stack(ts):
                return ts[0].detach().to(dtype) if len(ts) == 1 else torch.cat([t.detach() for t in ts]).to(dtype)

            return PackedLinear(stack([m.weight for m in ms]),
                                None if ms[0].bias is None else stack([m.bias for m in ms]), packed)

        a = layer.self_attn
        self.sizes = (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features)
        self.qkv = lin(a.q_proj, a.k_proj, a.v_proj) if packed else None
        self.q, self.k, self.v = (None, None, None) if packed else (lin(a.q_proj), lin(a.k_proj), lin(a.v_proj))
        self.o = lin(a.o_proj)
        self.ln1 = layer.input_layernorm.weight.detach().to(dtype)
        self.ln2 = layer.post_attention_layernorm.weight.detach().to(dtype)
        self.eps1 = layer.input_layernorm.variance_epsilon
        self.eps2 = layer.post_attention_layernorm.variance_epsilon
        mlp = layer.mlp
        self.mlp = None  # a plain gated MLP runs here; anything else (a thought layer) is called
        if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            self.hidden = mlp.gate_proj.out_features
            self.gate_up = lin(mlp.gate_proj, mlp.up_proj) if packed else None
            self.gate, self.up = (None, None) if packed else (lin(mlp.gate_proj), lin(mlp.up_proj))
            self.down, self.act = lin(mlp.down_proj), mlp.act_fn
        else:
            self.mlp = mlp
            self.mlp_dtype = next(mlp.parameters()).dtype

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value projections of ``x``."""
        if self.qkv is None:
            return self.q(x), self.k(x), self.v(x)
        return self.qkv(x).split(self.sizes, dim=-1)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) * up(x))``, or the layer's own MLP module (a thought layer) in its dtype."""
        if self.mlp is not None:
            return self.mlp(x.to(self.mlp_dtype)).to(x.dtype)
        if self.gate_up is None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        g, u = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(self.act(g) * u)


class FastLlama:
    """The lean forward of a Llama-family causal LM over a static KV cache.

    ``reset(B, max_len, device)`` makes a cache for ``B`` rows of ``max_len`` positions; then
    ``forward(ids, 0)`` reads a ``(B, T)`` prompt and ``forward(ids, pos)`` one ``(B, 1)`` token at
    absolute position ``pos``, each returning the ``(B, V)`` float32 logits of the last position.
    """

    def __init__(self, model: nn.Module, *, precision: str = "float32", packed: bool | None = None):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        why = fast_blocker(model)
        if why is not None:
            raise ConfigError(f"cannot use the lean decode step: {why}")
        self.precision, dt = precision, PRECISIONS[precision]  # no reference to the model: it keys a weak cache
        self.dtype = dt
        on_cpu = model.lm_head.weight.device.type == "cpu"  # oneDNN's prepacked kernel is a CPU one
        self.packed = (packed_linear_available() and on_cpu) if packed is None else packed
        base, cfg = model.model, model.config
        self.H = cfg.num_attention_heads
        self.Hkv = cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.scale = base.layers[0].self_attn.scaling
        self.embed = base.embed_tokens.weight.detach().to(dt)
        tied = model.lm_head.weight is base.embed_tokens.weight
        head_bias = None if model.lm_head.bias is None else model.lm_head.bias.detach().to(dt)
        self.head = PackedLinear(self.embed if tied else model.lm_head.weight.detach().to(dt), head_bias, self.packed)
        self.norm, self.norm_eps = base.norm.weight.detach().to(dt), base.norm.variance_epsilon
        self.rotary = base.rotary_emb
        self.layers = [_Layer(layer, dt, self.packed) for layer in base.layers]
        self.graft = getattr(model, "mot_graft", None)
        self.k_cache = self.v_cache = None
        self.key = None  # the model state these tensors were made from (see lean_model)

    def reset(self, batch: int, max_len: int, device) -> None:
        """A fresh cache for ``batch`` rows of up to ``max_len`` positions."""
        shape = (len(self.layers), batch, self.Hkv, max_len, self.D)
        # attention reads its keys and values in float32: CPU SDPA in bfloat16 is ~4x slower for one query
        self.k_cache = torch.empty(shape, dtype=torch.float32, device=device)
        self.v_cache = torch.empty(shape, dtype=torch.float32, device=device)

    def repeat_rows(self, n: int) -> None:
        """Each cached row becomes ``n`` consecutive rows (a prompt read once for ``n`` branches)."""
        self.k_cache = self.k_cache.repeat_interleave(n, dim=1)
        self.v_cache = self.v_cache.repeat_interleave(n, dim=1)

    def reorder_rows(self, rows: torch.Tensor) -> None:
        """Row ``r`` of the cache becomes old row ``rows[r]`` (beam search)."""
        rows = rows.to(self.k_cache.device)
        self.k_cache = self.k_cache.index_select(1, rows)
        self.v_cache = self.v_cache.index_select(1, rows)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, start: int, *, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, V)`` (float32) of the last of ``ids``'s columns ``start .. start + T - 1``.

        Left-padded rows (:class:`PaddedLean`) pass ``pos`` ``(B, T)``, each row's own positions, and
        ``mask`` ``(B, start + T)`` (False on padding): attention then takes the mask transformers'
        SDPA path builds (causal and padding, as a boolean ``(B, 1, T, start + T)``) with its grouped
        key/value handling, so that unpacked logits are the model's bit for bit. A mask without padding
        is dropped, as transformers does."""
        B, T = ids.shape
        end = start + T
        if start > 0 and T > 1:
            raise ValueError("the lean step reads a prompt from position 0 or one token after it")
        if self.k_cache is None or self.k_cache.shape[1] != B or end > self.k_cache.shape[3]:
            raise ConfigError(f"the cache holds {None if self.k_cache is None else tuple(self.k_cache.shape)}: "
                              f"call reset(batch={B}, max_len>={end}) first")
        if mask is not None and bool(mask[:, :end].all()):
            mask = None
        if pos is None:
            pos = torch.arange(start, end, device=ids.device)
        if self.graft is not None:  # what the model's pre-hook records for its thought layers
            self.graft.begin_call(pos[0] if pos.dim() == 2 and pos.shape[0] == 1 else pos)
        h = F.embedding(ids, self.embed)
        cos, sin = self.rotary(h, pos if pos.dim() == 2 else pos[None])
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1 or B, 1, T, D)
        keep = None
        if mask is not None:  # (B, 1, T, end): key j is seen by query i when j <= start + i and j is not padding
            causal = torch.arange(start, end, device=ids.device)[:, None] >= torch.arange(end, device=ids.device)
            keep = causal[None, None] & mask[:, None, None, :end].bool()
        G = self.H // self.Hkv  # query head h reads key/value head h // G
        for i, L in enumerate(self.layers):
            x = _rms_norm(h, L.ln1, L.eps1)
            q, k, v = L.project(x)
            q = q.reshape(B, T, self.H, self.D).transpose(1, 2)
            k = k.reshape(B, T, self.Hkv, self.D).transpose(1, 2)
            v = v.reshape(B, T, self.Hkv, self.D).transpose(1, 2)
            q, k = _rotate(q, cos, sin).float(), _rotate(k, cos, sin).float()
            v = v.float()
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[:, :, start:end] = k
            vc[:, :, start:end] = v
            if keep is not None and T > 1:  # a padded prompt: the key/value heads repeated, the mask given
                a = F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1),
                                                   attn_mask=keep, scale=self.scale)
            elif keep is not None and self.dtype == torch.float32:  # one padded query: the G heads as G queries
                a = F.scaled_dot_product_attention(q.reshape(B, self.Hkv, G, self.D), kc[:, :, :end], vc[:, :, :end],
                                                   attn_mask=keep, scale=self.scale).reshape(B, self.H, 1, self.D)
            elif start == 0:  # the prompt attends to itself only: the tensors just made, causally
                a = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=self.scale, enable_gqa=True)
            elif self.dtype == torch.float32:  # one new token attends to every cached position
                a = F.scaled_dot_product_attention(q, kc[:, :, :end], vc[:, :, :end], scale=self.scale,
                                                   enable_gqa=True)
            else:  # the same in three small matmuls (CPU SDPA costs ~80 us a call for one query)
                w = (q.view(B, self.Hkv, G, self.D) @ kc[:, :, :end].transpose(-1, -2)).mul_(self.scale)
                if keep is not None:
                    w = w.masked_fill_(~keep, float("-inf"))
                a = (w.softmax(-1) @ vc[:, :, :end]).view(B, self.H, 1, self.D)
            h = h + L.o(a.transpose(1, 2).reshape(B, T, -1).to(self.dtype))
            h = h + L.feed_forward(_rms_norm(h, L.ln2, L.eps2))
        x = _rms_norm(h[:, -1], self.norm, self.norm_eps)
        return self.head(x).float()


def padded_positions(mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch's ``(B, L)`` mask grown with ones to ``length`` columns (the generated
    tokens), and each row's own positions ``cumsum(mask) - 1`` (padding at 1, as in transformers)."""
    if length > mask.shape[1]:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], length - mask.shape[1])], 1)
    return mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


class PaddedLean:
    """:class:`FastLlama` over left-padded rows: the lean twin of :class:`.vary.PaddedLM` (the same
    ``logits`` / ``reorder`` calls, the same positions ``cumsum(mask) - 1`` with padding at 1, the same
    ``shared`` prompt reading), over a static cache as long as the token buffer."""

    def __init__(self, fast: FastLlama, mask: torch.Tensor, shared: int = 1):
        self.fast, self.full, self.shared, self.seen = fast, mask.long(), int(shared), 0

    def logits(self, tokens: torch.Tensor, length: int, as_float: bool = True) -> torch.Tensor:
        """``(R, V)`` float32 logits for column ``length`` of the ``(R, L)`` token buffer (``as_float``
        is PaddedLM's: the lean step's logits are float32 either way)."""
        self.full, pos = padded_positions(self.full, length)
        full = self.full
        if self.seen == 0:  # the prompts, each run of `shared` equal rows read once
            rows = slice(None, None, self.shared)
            self.fast.reset(tokens[rows].shape[0], tokens.shape[1], tokens.device)
            last = self.fast.forward(tokens[rows, :length], 0, pos=pos[rows, :length], mask=full[rows, :length])
            if self.shared > 1:
                self.fast.repeat_rows(self.shared)
                last = last.repeat_interleave(self.shared, 0)
        else:
            last = self.fast.forward(tokens[:, self.seen:length], self.seen, pos=pos[:, self.seen:length],
                                     mask=full[:, :length])
        self.seen = length
        return last

    def reorder(self, rows: torch.Tensor) -> None:
        self.fast.reorder_rows(rows)


def model_state_key(model: nn.Module) -> tuple:
    """What the lean tensors depend on: each parameter's identity and in-place version, and the MLP
    modules (a graft replaces them). Training or grafting after a decode changes it."""
    return (tuple((id(p), p._version) for p in model.parameters()),
            tuple(id(layer.mlp) for layer in model.model.layers))


_LEAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its FastLlama (held weakly, outside it)


def lean_model(model: nn.Module, precision: str = "float32") -> FastLlama:
    """The model's :class:`FastLlama` for ``precision``, made once and kept on the model while its
    weights are unchanged (packing the weights takes ~0.3 s for SmolLM2-135M)."""
    key = (precision, model_state_key(model))
    cached = _LEAN.get(model)
    if cached is not None and cached.key == key:
        return cached
    fast = FastLlama(model, precision=precision)
    fast.key = key
    _LEAN[model] = fast
    return fast
