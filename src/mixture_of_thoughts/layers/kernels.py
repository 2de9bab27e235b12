"""The thought layer's kernels: its dispatch matmuls and noise arithmetic with hand-written gradients.

:mod:`.thoughts` reads top-down (router, branches, combiner); what makes it fast lives here:

* :func:`sliced_mm`: the branches' matmuls on rows sorted by branch, as ``F.grouped_mm`` where it
  works (probed once: CUDA, bfloat16), one padded ``bmm`` for a few rows (decoding), else at most E
  matmuls on contiguous slices, with a backward that never materialises per-row weights;
* :func:`add_scaled_noise` and :func:`scale_rows`: ``x + a * n`` and ``a * x`` per row, with
  gradients computed from saved inputs (no intermediate tensor of the noise's size is kept);
* :func:`row_dots`: the per-row dot products the scale gradients need, chunked to stay in cache;
* :class:`PackedLinear`: ``x W^T + b`` on weights prepacked once for oneDNN, for inference with a
  few rows (decoding): ~3x faster than MKL's ``F.linear`` there (used by the thought layer's tied
  branches and by the lean Hugging Face decode step, ``hf.fast``).

Each is tested against plain PyTorch autograd (``tests/test_thoughts.py``), outputs and gradients.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

SMALL_DISPATCH = 64  # at most this many (token, slot) rows (decoding): one padded bmm instead of E mm calls
_GROUPED_MM_OK: dict[tuple[str, torch.dtype], bool] = {}
_PACKED_OK: list[bool] = []


def packed_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's prepacked linear (x86 builds do); probed once."""
    if not _PACKED_OK:
        ok = torch.backends.mkldnn.is_available()
        if ok:
            try:
                w = torch.ones(4, 4)
                y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 4), torch.ops.mkldnn._reorder_linear_weight(w, 1),
                                                       None, "none", [], "")
                ok = bool((y == 4).all())
            except (RuntimeError, AttributeError):
                ok = False
        _PACKED_OK.append(ok)
    return _PACKED_OK[0]


class PackedLinear:
    """``y = x W^T + b`` with ``W`` (``(N, K)``, CPU) prepacked once into oneDNN's blocked layout.

    For the few rows of a decode step MKL's ``F.linear`` reads the weights at ~20 GB/s on a 2-core
    AMD EPYC, oneDNN's prepacked kernel at ~60 GB/s. It sums in another order (|diff| ~1e-6 relative),
    and a row's result does not depend on the other rows of the batch. No gradient flows through it.
    Without oneDNN (``packed=False``) it is ``F.linear``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, packed: bool = True, rows: int = 8):
        self.bias = bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if packed else None
        self.weight = None if packed else weight  # the packed copy is all a packed product reads

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


_PACKED_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner module -> {weight key: packed}


def packed_matmul(a: Tensor, w: Tensor | tuple[Tensor, ...], owner) -> Tensor | None:
    """``a @ w`` (``w`` of shape ``(K, N)``) through a :class:`PackedLinear` kept for ``owner`` (a
    module; held weakly, outside it, so copying or pickling the module never meets a packed tensor)
    while ``w`` is unchanged (same storage and in-place version); ``None`` where it does not apply (a
    gradient is wanted, not a float32 CPU tensor, no oneDNN): then the caller multiplies as usual.

    A tuple of weights ``(K, N_i)`` is one product with their columns side by side, ``a @ cat(w, 1)``
    (a gated MLP's gate and up: one read of ``a`` and one kernel call instead of two; each output
    column is the same sum as in its own product)."""
    ws = w if isinstance(w, tuple) else (w,)
    if (torch.is_grad_enabled() or a.device.type != "cpu" or a.dtype != torch.float32
            or any(t.dtype != torch.float32 for t in ws) or not packed_linear_available()):
        return None
    cache = _PACKED_CACHE.setdefault(owner, {})
    key = tuple((t.data_ptr(), tuple(t.shape), tuple(t.stride())) for t in ws)
    version = tuple(t._version for t in ws)
    hit = cache.get(key)
    if hit is None or hit[0] != version:
        hit = cache[key] = (version, PackedLinear(torch.cat([t.t() for t in ws]).contiguous(), None))
    return hit[1](a)


def grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe once per (device type, dtype) whether ``F.grouped_mm`` runs forward and backward."""
    key = (device.type, dtype)
    if key not in _GROUPED_MM_OK:
        ok = device.type == "cuda" and dtype == torch.bfloat16 and hasattr(F, "grouped_mm")
        if ok:
            try:
                a = torch.ones(32, 16, device=device, dtype=dtype, requires_grad=True)
                b = torch.ones(2, 16, 16, device=device, dtype=dtype, requires_grad=True)
                offs = torch.tensor([16, 32], device=device, dtype=torch.int32)
                F.grouped_mm(a, b, offs=offs).sum().backward()
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _GROUPED_MM_OK[key] = ok
    return _GROUPED_MM_OK[key]


class _SlicedMM(torch.autograd.Function):
    """``a[rows of branch e] @ w[e]`` for rows sorted by branch, one ``mm`` per non-empty branch.

    Every product is written with ``out=`` into its slice of one preallocated output, and the backward
    writes ``grad_a`` and ``grad_w`` the same way: no ``cat`` of the parts and no zero-filled buffers
    (what ``split`` + ``cat`` under autograd costs). The values are those of ``a_e @ w[e]``.
    """

    @staticmethod
    def forward(ctx, a: Tensor, w: Tensor, counts: list[int]) -> Tensor:
        out = a.new_empty(a.shape[0], w.shape[-1])
        start = 0
        for e, n in enumerate(counts):
            if n:
                torch.mm(a[start:start + n], w[e], out=out[start:start + n])
            start += n
        if ctx is not None:
            ctx.save_for_backward(a, w)
            ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, w = ctx.saved_tensors
        grad = grad.contiguous()
        ga = a.new_empty(a.shape) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            empty = [e for e, n in enumerate(ctx.counts) if not n]
            gw = w.new_empty(w.shape)
            if empty:
                gw[empty] = 0
        start = 0
        for e, n in enumerate(ctx.counts):
            if n:
                rows = slice(start, start + n)
                if ga is not None:
                    torch.mm(grad[rows], w[e].t(), out=ga[rows])
                if gw is not None:
                    torch.mm(a[rows].t(), grad[rows], out=gw[e])
            start += n
        return ga, gw, None


ROW_DOTS_CHUNK = 512  # rows of the scratch product in row_dots: 512 x 768 floats (1.5 MB) stay in L2


def row_dots(a: Tensor, b: Tensor) -> Tensor:
    """``(M,)``: ``<a[r], b[r]>`` for every row of two ``(M, W)`` tensors.

    The product is formed in chunks of :data:`ROW_DOTS_CHUNK` rows in one scratch buffer that stays in
    cache, each chunk summed into its slice of the result. A batched matmul of ``M`` 1 x 1 products
    (the obvious way, and ``einsum``'s) took 20 ms for 16384 x 768 on the machines of
    ``BENCHMARKS.md``, a full-size ``(a * b).sum(-1)`` 17 ms (mostly first-touch page faults on a
    50 MB temporary); this takes ~6 ms.
    """
    M, W = a.shape
    out = a.new_empty(M, dtype=torch.promote_types(a.dtype, b.dtype))
    if M <= ROW_DOTS_CHUNK:
        return torch.sum(a * b, -1, out=out)
    buf = out.new_empty(ROW_DOTS_CHUNK, W)
    for s in range(0, M, ROW_DOTS_CHUNK):  # M / 512 chunks: a few dozen ops for a training batch
        e = min(s + ROW_DOTS_CHUNK, M)
        torch.sum(torch.mul(a[s:e], b[s:e], out=buf[:e - s]), -1, out=out[s:e])
    return out


class _AddScaledNoise(torch.autograd.Function):
    """``x += a[:, None] * n``, in place, for a per-row scale ``a`` (M,) and constant noise ``n`` (M, W).

    In place because ``x`` is always a fresh buffer no backward needs (a gather or a matmul output):
    a new tensor of this size (tens of MB in training) costs more in first-touch page faults than the
    addition itself (17 against 3 ms for 16384 x 768 on the machines of ``BENCHMARKS.md``).
    ``addcmul``'s own backward reduces ``grad * n`` (a full-size product) to the scale's shape; here
    the per-row dot products ``grad_a[r] = <grad[r], n[r]>`` are :func:`row_dots`, and ``grad_x`` is
    ``grad`` itself.
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, n: Tensor) -> Tensor:
        ctx.save_for_backward(n)
        ctx.mark_dirty(x)
        return x.addcmul_(a.unsqueeze(1), n)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (n,) = ctx.saved_tensors
        ga = None
        if ctx.needs_input_grad[1]:
            ga = row_dots(grad, n)
        return grad, ga, None


class _ScaleRows(torch.autograd.Function):
    """``x * a[:, None]`` with the per-row dot products of the backward by :func:`row_dots`."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor) -> Tensor:
        ctx.save_for_backward(x, a)
        return x * a.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, a = ctx.saved_tensors
        gx = grad * a.unsqueeze(1) if ctx.needs_input_grad[0] else None
        ga = None
        if ctx.needs_input_grad[1]:
            ga = row_dots(grad, x)
        return gx, ga


def row_rms(x: Tensor) -> Tensor:
    """Root mean square of each row, ``(M,)``, without gradient (a noise scale, not a path)."""
    with torch.no_grad():
        return x.float().pow(2).mean(1).sqrt().to(x.dtype)


def _needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd must record: ``autograd.Function.apply`` costs ~0.1 ms a call, a lot per decode step."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors if torch.is_tensor(t))


def sliced_mm(a: Tensor, w: Tensor, counts: list[int]) -> Tensor:
    """:class:`_SlicedMM` (through autograd only when a gradient is needed)."""
    if _needs_graph(a, w):
        return _SlicedMM.apply(a, w, counts)
    if a.shape[0] <= SMALL_DISPATCH:
        return _padded_bmm(a, w, counts)
    return _SlicedMM.forward(None, a, w, counts)


def _padded_bmm(a: Tensor, w: Tensor, counts: list[int]) -> Tensor:
    """The same products as one batched matmul over the branches' rows padded to the largest count.

    A decoding step has a few rows per branch, where E separate ``mm`` calls cost their overhead
    E times; here it is one gather, one ``bmm`` and one gather back.
    """
    E, m = len(counts), max(counts)
    cnt = torch.tensor(counts, device=a.device)
    starts = torch.cumsum(cnt, 0) - cnt
    slot = torch.arange(m, device=a.device)
    valid = slot[None, :] < cnt[:, None]  # (E, m)
    src = (starts[:, None] + slot[None, :]).masked_fill(~valid, 0)  # (E, m) row of a for each slot
    out = torch.bmm(a[src.reshape(-1)].view(E, m, -1), w)  # (E, m, N)
    return out.reshape(E * m, -1)[valid.reshape(-1)]


def add_scaled_noise(x: Tensor, a: Tensor, n: Tensor) -> Tensor:
    """``x += a[:, None] * n`` in place, for a fresh ``x`` that nothing else holds (a gather or matmul
    output): see :class:`_AddScaledNoise`, used when a gradient is needed."""
    if _needs_graph(x, a):
        return _AddScaledNoise.apply(x, a, n)
    return x.addcmul_(a.unsqueeze(1), n)


def scale_rows(x: Tensor, a: Tensor) -> Tensor:
    """``x * a[:, None]`` (:class:`_ScaleRows` when a gradient is needed)."""
    if _needs_graph(x, a):
        return _ScaleRows.apply(x, a)
    return x * a.unsqueeze(1)


__all__ = ["grouped_mm_works", "row_rms", "sliced_mm", "add_scaled_noise", "scale_rows", "row_dots",
           "SMALL_DISPATCH", "ROW_DOTS_CHUNK"]
