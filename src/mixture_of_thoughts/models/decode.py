"""A compiled decode step: the one-new-token forward of a causal :class:`Transformer`, fused by
TorchInductor (its C++ backend on CPUs).

Why: eager decoding of this project's models is not bound by arithmetic. At batch 1 the
``shakespeare-char`` step reads 42 MB of weights through MKL's matrix-vector product, which streams
them at ~11 GB/s on the 2-core machines of ``BENCHMARKS.md`` where a plain reduction over the same
bytes runs at 40-80 GB/s; the rest of the step is ~300 small tensor ops (norms, RoPE, residuals,
GELU) at a few microseconds each. Here every projection of a step with few rows is written as the
reduction ``(x[..., None, :] * W).sum(-1)``, which Inductor turns into one loop over the weight on
all threads, fused with the norm, RoPE, residual and activation around it.

A Mixture-of-Thoughts layer is one graph too (:func:`_thought_ffn`): the eager layer sorts tokens
by branch into shapes that depend on the routing, where here every slot of every token reads its
own branch's weights, so the shapes are static. Its counter-based noise is drawn outside the graph,
from the same streams.

What stays eager: the KV-cache write (``KVCache.write_step``: the same code as the eager path, so
the cache is shared with it; attention over its buffers is in the graph), the prompt's prefill
(many rows, where MKL's matrix products are the fast path), token sampling, thought layers in
configurations the graph does not cover (attention combiner, persistent or orthogonal noise) and
anything with forward hooks on it (steering, routing traces), which must see the module's own call.

The functions are compiled once per shape (:class:`_Static`: traced to ATen and compiled by
Inductor, then called without ``torch.compile``'s per-call guard checks) and take the weights as
arguments, so one graph serves every layer of a model.

Sums in another order round differently (relative differences ~1e-6 in the logits), so a token can
only change where two candidates tie within rounding error: the tests and ``BENCHMARKS.md`` check
that the texts are the same as eager decoding's.
"""

from __future__ import annotations

import functools
import logging
import shutil

import torch
import torch._inductor
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_flatten, tree_unflatten

from .. import rng
from ..errors import ConfigError
from ..layers.attention import KVCache, rope_angles, split_heads
from ..layers.ffn import activation
from ..layers.norm import rms_norm
from ..layers.thoughts import TAU_MIN, ThoughtsFFN, gumbel_top_k, scaled_logits, slot_weights
from .transformer import ModelOutput, Transformer

log = logging.getLogger(__name__)

FEW_ROWS = 8  # rows (batch x new tokens) up to which a projection is a fused reduction, not a BLAS call


def project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + b`` for ``x`` ``(B, T, K)`` and ``w`` ``(N, K)``; a reduction when there are few rows."""
    if x.shape[0] * x.shape[1] <= FEW_ROWS:
        y = (x.unsqueeze(-2) * w).sum(-1)
        return y if b is None else y + b
    return F.linear(x, w, b)


def _ffn_residual(x, act, w_out, b_out):
    """``x + fc_out(act)``: a dense FFN's output projection and residual (``act`` ``None``: ``x``)."""
    return x if act is None else x + project(act, w_out, b_out)


def _attention_in(x, act, w_out, b_out, norm_w, eps: float, qkv_w, qkv_b, positions, n_head: int,
                  rope_base: float):
    """The previous dense FFN's output (when ``act`` is given), pre-norm, the fused q/k/v projection and
    RoPE: ``(x, q, k, v, h)``, q/k/v each ``(B, nh, 1, hs)``.

    ``h`` (the normalised ``x``) is returned, and ignored, so that Inductor writes it to a buffer:
    otherwise it inlines the norm into the projection's reduction and computes it, a square root and
    a division included, once per output (at 8 rows this graph took 3x as long). The same holds for
    the norms returned by the graphs below."""
    x = _ffn_residual(x, act, w_out, b_out)
    C = x.shape[-1]
    cos, sin = rope_angles(positions, C // n_head, rope_base)
    h = rms_norm(x, norm_w, eps)
    return x, *split_heads(project(h, qkv_w, qkv_b), n_head, cos, sin), h


def _attention_out(x, q, keys, vals, bias, proj_w, proj_b, norm_w, eps: float, w_in, b_in):
    """Attention of the new queries ``q`` ``(B, nh, 1, hs)`` over the cache's buffers ``(B, nh, cap,
    hs)`` (``bias`` ``(cap,)``: 0 where a slot is seen, ``-inf`` where not), the output projection
    and residual, the FFN's pre-norm and, for a dense FFN (``w_in`` given), its hidden activation:
    ``(x, norm2(x) or act(fc_in(norm2(x))), norm2(x))``.

    One query per row is a few thousand multiply-adds per head: as reductions fused with the rest of
    the step it costs a few microseconds, where the library's attention kernel costs ~20 us at one
    row and ~40 us at eight on the machines of ``BENCHMARKS.md`` (its set-up, not its arithmetic).

    A dense FFN is split across two compiled graphs on purpose: in one graph Inductor inlines the
    activation into the output projection's reduction and evaluates ``erf`` once per weight instead
    of once per hidden unit."""
    B, nh, T, hs = q.shape
    scores = (q * keys).sum(-1, keepdim=True) * hs**-0.5 + bias[:, None]  # (B, nh, cap, 1)
    y = (torch.softmax(scores, dim=-2) * vals).sum(-2, keepdim=True)  # (B, nh, 1, hs)
    x = x + project(y.transpose(1, 2).reshape(B, T, nh * hs), proj_w, proj_b)
    h = rms_norm(x, norm_w, eps)
    return x, h if w_in is None else activation(project(h, w_in, b_in)), h


def _head(x, act, w_out, b_out, norm_w, eps: float, w):
    """The last dense FFN's output, the final norm and the (tied) LM head: ``(B, 1, V)`` logits (and the
    normalised ``x``)."""
    x = _ffn_residual(x, act, w_out, b_out)
    h = rms_norm(x, norm_w, eps)
    return project(h, w), h


def _per_slot(p, idx):
    """Rows of a per-branch parameter ``(E, ...)`` for the selected branches ``idx``."""
    return p[idx] if p.shape[0] > 1 else p[0]


def _branch_order(idx):
    """The (token, slot) pairs in branch order, as static-shape tensors: ``(e, perm, rank)`` where
    ``perm`` lists the ``S`` flattened slots of ``idx`` sorted by branch (stable), ``e = idx[perm]`` and
    ``rank`` is each slot's place in that order (``perm[rank] = arange(S)``).

    Computed by counting (slot ``i`` comes after every slot of a smaller branch and every earlier slot
    of its own), an ``S x S`` comparison that Inductor fuses into the layer's kernels, where
    ``torch.sort`` would be a library call that splits them (measured slower at every batch size).
    """
    flat = idx.reshape(-1)
    ar = torch.arange(flat.shape[0], device=idx.device)
    ei, ej = flat[:, None], flat[None, :]
    rank = ((ej < ei) | ((ej == ei) & (ar[None, :] < ar[:, None]))).sum(1)
    perm = ((rank[None, :] == ar[:, None]) * ar[None, :]).sum(1)
    return flat[perm], perm, rank


def _thought_ffn(x, h, router_w, rho, tau_min: float, k: int, k_min: int | None, w_in, b_in, w_out, b_out,
                 s_in, s_hid, relative: bool, c, gumbel, u_k, n_in, n_hid):
    """One decoding step of a :class:`~mixture_of_thoughts.layers.thoughts.ThoughtsFFN` (weighted
    combiner, token noise) and its residual: ``(x + y, (load, row_load, active_k), xin, act)``.

    The eager layer sorts the (token, slot) pairs by branch and runs the branches on contiguous
    slices of shapes that depend on the routing. Here every (token, slot) pair is one row that reads
    its branch's weights where it needs them, so the shapes are static and the whole layer is one
    graph. The rows are still put in branch order (:func:`_branch_order`): pairs of the same branch
    run one after the other on the same thread and read its weights from cache, not from memory
    again (with 8 rows over 8 branches this layer ran 1.3x faster on the Intel machine of
    ``BENCHMARKS.md``); each row's numbers are the same in any order. The noise is drawn outside
    (``gumbel`` ``(B, 1|T, E)``, ``u_k`` for a k range, ``n_in`` ``(B, 1, k, d)`` and ``n_hid``
    ``(B, 1, k, h)`` in the canonical layout; ``None`` without draws), and ``c`` is ``(B, 1, 1)``.
    The same maths as the eager layer, term by term.
    """
    z = scaled_logits(project(h, router_w), F.softplus(rho) + tau_min)  # (B, T, E)
    idx, active = gumbel_top_k(z, k, k_min, c, gumbel, u_k)  # (B, T, k)
    w, _ = slot_weights(z, idx, active)
    B, T, K = idx.shape
    e, perm, rank = _branch_order(idx)  # (S,) each, S = B T k
    row = perm // K  # the token of each pair, in branch order
    xin = h.reshape(B * T, -1)[row]  # (S, d): each pair's input
    cs = c.reshape(B, 1).expand(B, T).reshape(B * T)[row].unsqueeze(-1)  # (S, 1)
    if n_in is not None:
        a1 = cs * _per_slot(s_in, e).unsqueeze(-1)
        if relative:
            a1 = a1 * xin.pow(2).mean(-1, keepdim=True).sqrt()
        xin = torch.addcmul(xin, a1, n_in.reshape(B * T * K, -1)[perm])
    hid = (xin.unsqueeze(-1) * _per_slot(w_in, e)).sum(-2)  # (S, h)
    if b_in is not None:
        hid = hid + _per_slot(b_in, e)
    if n_hid is not None:
        a2 = cs * _per_slot(s_hid, e).unsqueeze(-1)
        if relative:
            a2 = a2 * hid.pow(2).mean(-1, keepdim=True).sqrt()
        hid = torch.addcmul(hid, a2, n_hid.reshape(B * T * K, -1)[perm])
    act = activation(hid)
    out = (act.unsqueeze(-1) * _per_slot(w_out, e)).sum(-2)  # (S, d)
    if b_out is not None:
        out = out + _per_slot(b_out, e)
    y = (out[rank].view(B, T, K, -1) * w.unsqueeze(-1)).sum(2)  # (B, T, d), slots back in token order
    E = router_w.shape[0]
    branches = torch.arange(E, device=h.device)
    # active slots per row and branch: a one-hot sum Inductor fuses (a scatter_add would be a library call)
    counts = ((idx.flatten(1)[..., None] == branches) & active.flatten(1)[..., None]).sum(1).to(h.dtype)  # (B, E)
    # xin and act are returned (and ignored) only so that Inductor writes them to buffers: otherwise it
    # inlines them into the reductions that read them and recomputes the noise and erf once per
    # output block (3x slower)
    stats = (counts.sum(0) / counts.sum().clamp(min=1), counts / counts.sum(1, keepdim=True).clamp(min=1),
             active.to(h.dtype).sum(-1).mean())
    return x + y, stats, xin, act


def compiler_available() -> bool:
    """Whether a C++ compiler for TorchInductor's CPU backend is on the PATH."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


class _Static:
    """``fn`` compiled by TorchInductor once per call signature, called without Dynamo.

    ``torch.compile`` checks its guards (every tensor's shape, stride and dtype, every constant) and
    patches its configuration at each call: ~50-100 us a call on the 2-core machines of
    ``BENCHMARKS.md``, where a decode step makes 2 calls a layer and its graphs run for ~100 us each.
    Here the signature (shapes, strides, dtypes and the non-tensor arguments) is the key of a dict
    of compiled graphs, each traced by ``make_fx`` and compiled by ``torch._inductor.compile``: a
    call costs a dictionary lookup. The traced graph is the same ATen graph Dynamo would hand
    Inductor, so the kernels and numbers are the same.

    At most ``MAX_GRAPHS`` signatures are compiled (each takes seconds); calls with further ones run
    ``fn`` eagerly, the same maths without the speed-up (as ``torch.compile`` does past its
    recompile limit), with a warning the first time.
    """

    MAX_GRAPHS = 16

    def __init__(self, fn):
        self.fn = fn
        self.graphs: dict[tuple, tuple] = {}
        self.full_warned = False

    def __call__(self, *args):
        Tensor = torch.Tensor
        key = tuple([(a.shape, a.stride(), a.dtype, a.device) if isinstance(a, Tensor) else a for a in args])
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.MAX_GRAPHS:
                if not self.full_warned:
                    log.warning("compiled decoding: %s has %d shapes compiled; further shapes run eagerly",
                                self.fn.__name__, self.MAX_GRAPHS)
                    self.full_warned = True
                return self.fn(*args)
            entry = self.graphs[key] = self._compile(args)
        compiled, rebuild = entry
        return rebuild(compiled(*[a for a in args if isinstance(a, Tensor)]))

    def _compile(self, args) -> tuple:
        where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        spec = []

        def flat(*tensors):
            full = list(args)
            for i, t in zip(where, tensors, strict=True):
                full[i] = t
            leaves, out_spec = tree_flatten(self.fn(*full))
            spec.append(out_spec)
            return leaves

        tensors = [args[i] for i in where]
        with torch.no_grad():
            graph = make_fx(flat)(*tensors)
            compiled = torch._inductor.compile(graph, tensors)
        out_spec = spec[-1]
        if out_spec.type is tuple and all(c.is_leaf() for c in out_spec.children()):
            return compiled, tuple  # a flat tuple of tensors: no pytree walk per call
        return compiled, lambda out: tree_unflatten(list(out), out_spec)


@functools.cache
def _compiled():
    """The compiled functions, made once per process and shared by every decoder (a graph per shape;
    models of the same shapes share them)."""
    return tuple(_Static(f) for f in (_attention_in, _attention_out, _head, _thought_ffn))


class CompiledDecoder:
    """The decode step of a causal :class:`Transformer`, compiled (see the module docstring).

    Call it like the model on one new token per row with a :class:`KVCache`; it returns the same
    :class:`ModelOutput` (logits of the new position, routing statistics of its thought layers).
    The first calls compile (seconds to tens of seconds; Inductor caches the result on disk, so a
    later process starts faster).

    Args:
        model: a causal model in eval mode; its weights are read at every call, so the decoder
            follows later changes to them.
    Raises:
        ConfigError: a non-causal model, or no C++ compiler for TorchInductor.
    """

    def __init__(self, model: Transformer):
        if not model.config.causal:
            raise ConfigError("a compiled decode step needs a causal model")
        if model.wte.weight.device.type == "cpu" and not compiler_available():
            raise ConfigError("compiled decoding needs a C++ compiler for TorchInductor (g++ or clang++ on the "
                              "PATH); install one, or decode without --compile")
        self.model = model
        self._attention_in, self._attention_out, self._head, self._thought_ffn = _compiled()
        self._creativity: dict[int, tuple] = {}  # layer -> (creativity tensor, key, c, draws)

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, cache: KVCache, *, noise=None, creativity=None,
                 route: str | None = None) -> ModelOutput:
        """Logits ``(B, 1, V)`` for one new token per row ``idx`` ``(B, 1)``, appending it to ``cache``."""
        m = self.model
        if idx.shape[1] != 1 or cache.length == 0:
            raise ValueError("the compiled step decodes one token per row after a prefill; "
                             "run the prompt through the model itself")
        if m.training:
            raise ValueError("the compiled step has no dropout: put the model in eval mode (model.eval())")
        if _hooked(m):  # a hook on the model (e.g. the playground's) must see every step's output
            return m(idx, cache=cache, noise=noise, creativity=creativity, route=route, last_only=True, aux=False)
        positions = cache.positions(1)
        x = m.wte(idx)
        stats: dict[int, dict[str, torch.Tensor]] = {}
        act = w_out = b_out = None  # the pending output projection of the previous dense FFN
        for block in m.blocks:
            a, f = block.attn, block.ffn
            x, q, k, v, _ = self._attention_in(x, act, w_out, b_out, block.norm1.weight, block.norm1.eps,
                                               a.qkv.weight, a.qkv.bias, positions, a.n_head, a.rope_base)
            keys, vals, _ = cache.write_step(block.layer_idx, k, v, positions)
            dense = not block.is_thought
            x, h, _ = self._attention_out(x, q, keys, vals, cache.step_bias(positions), a.proj.weight,
                                          a.proj.bias, block.norm2.weight, block.norm2.eps,
                                          f.fc_in.weight if dense else None, f.fc_in.bias if dense else None)
            if dense:
                act, w_out, b_out = h, f.fc_out.weight, f.fc_out.bias
            else:
                x, stats[block.layer_idx] = self._thoughts(f, x, h, noise, positions, creativity, route)
                act = w_out = b_out = None
        cache.advance(positions)
        logits, _ = self._head(x, act, w_out, b_out, m.norm_f.weight, m.norm_f.eps, m.lm_head.weight)
        return ModelOutput(logits, None, x.new_zeros(()), stats)

    def _thoughts(self, f: ThoughtsFFN, x, h, noise, positions, creativity, route):
        """A thought layer's step and residual: compiled (:func:`_thought_ffn`) where its configuration
        allows (weighted combiner, per-token counter-based noise, no hooks on the layer or its router),
        else the layer itself, eagerly. Returns ``(x, stats)``."""
        cfg = f.cfg
        if (type(f) is not ThoughtsFFN or cfg.combine != "weighted" or cfg.noise_mode != "token" or f.training
                or (noise is not None and not noise.per_row) or _hooked(f) or _hooked(f.router)):
            out = f(h, noise=noise, positions=positions, creativity=creativity, route=route, aux=False)
            return x + out.y, out.stats
        c, draws = self._layer_creativity(f, creativity, noise, h)
        gumbel = u_k = n_in = n_hid = None
        if draws:  # the eager layer's own draws, in their canonical layout
            gumbel, u_k = f.router_draws(noise, positions, route, h)
            n_in = f.slot_normals(noise, rng.INPUT_NOISE, positions, f.n_embd, h)
            n_hid = f.slot_normals(noise, rng.HIDDEN_NOISE, positions, f.hidden, h)
        x, (load, row_load, active_k), _, _ = self._thought_ffn(
            x, h, f.router.weight, f.rho, TAU_MIN, cfg.k, cfg.k_min, f.w_in, f.b_in, f.w_out, f.b_out, f.s_in,
            f.s_hid, cfg.noise_scale == "relative", c, gumbel, u_k, n_in, n_hid)
        return x, {"load": load, "row_load": row_load, "active_k": active_k}  # as the eager layer's

    def _layer_creativity(self, f: ThoughtsFFN, creativity, noise, h) -> tuple[torch.Tensor, bool]:
        """The layer's creativity as a ``(B, 1, 1)`` tensor and whether to draw noise. A per-row tensor
        is the same object at every step of a generation: its conversion and the check that some row
        draws noise (a read of its values) are done once, not at every step of every layer."""
        if not torch.is_tensor(creativity):
            c, draws = f._creativity(creativity, noise, h.shape[0], h)
            return torch.as_tensor(c, dtype=h.dtype, device=h.device).expand(h.shape[0], 1, 1), draws
        key = (creativity._version, noise is None, h.shape[0], h.dtype, h.device)
        kept = self._creativity.get(f.layer_idx)
        if kept is None or kept[0] is not creativity or kept[1] != key:
            c, draws = f._creativity(creativity, noise, h.shape[0], h)
            kept = self._creativity[f.layer_idx] = (creativity, key, c, draws)
        return kept[2], kept[3]


def _hooked(module: torch.nn.Module) -> bool:
    """Whether forward hooks (steering, routing traces) must see this module's call."""
    return bool(module._forward_hooks or module._forward_pre_hooks)
