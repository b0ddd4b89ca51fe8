"""Pure-PyTorch Philox4x32-10: the backend for any device (CUDA's default for now).

32-bit words are held in int64 tensors. The 32x32 -> 64-bit products that Philox needs are
split into two 32x16-bit products, so every intermediate stays below 2**49 and no int64
arithmetic ever overflows, on any device.
"""

from __future__ import annotations

import math

import torch

from .. import rng

__all__ = [
    "apply",
    "apply_keep",
    "block_words",
    "collapse",
    "compute_dtype",
    "field_index",
    "in_memory_order",
    "inverse",
    "is_dense",
    "keep_field",
    "keep_runs",
    "lanes_at",
    "like_memory_format",
    "normal_field",
    "philox4x32",
    "physical_order",
]

_MASK32 = rng.MASK32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the spec computes in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mulhilo(m: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``m * b`` for a constant ``m`` and int64-held uint32 ``b``."""
    t_lo = b * (m & 0xFFFF)
    t_hi = b * (m >> 16)
    mid = t_lo + ((t_hi & 0xFFFF) << 16)
    return (t_hi >> 16) + (mid >> 32), mid & _MASK32


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = rng.PHILOX_ROUNDS):
    """Philox4x32 on int64 tensors holding 32-bit words (broadcasting); returns four tensors."""
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + rng.PHILOX_W0) & _MASK32, (k1 + rng.PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(rng.PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(rng.PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def block_words(key, n: torch.Tensor, stream: int) -> torch.Tensor:
    """The four Philox words of blocks ``n`` (an int64 tensor of any shape): shape ``(*n, 4)``.
    ``key`` is two ints, or two int64 tensors."""
    zero = torch.zeros((), dtype=torch.int64, device=n.device)
    return torch.stack(philox4x32(n & _MASK32, n >> 32, zero + stream, zero, *key), dim=-1)


def _words(key: tuple[int, int], n_blocks: int, stream: int, device) -> torch.Tensor:
    return block_words(key, torch.arange(n_blocks, dtype=torch.int64, device=device), stream)


def lanes_at(key: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
    """The 16-bit values ``u_i`` (stream 0) of the field elements ``index`` (int64, any shape):
    element ``i`` reads lane ``i % 8`` of block ``i // 8``, as :func:`keep_field` numbers them."""
    words = block_words(key, index >> 3, rng.STREAM_BERNOULLI)
    word = torch.gather(words, -1, ((index & 7) >> 1).unsqueeze(-1)).squeeze(-1)
    return (word >> ((index & 1) << 4)) & 0xFFFF


def field_index(
    local_shape: tuple[int, ...],
    field_shape: tuple[int, ...],
    offset: tuple[int, ...],
    device=None,
) -> torch.Tensor:
    """Row-major indices in the global field ``field_shape`` of a local block of an input.

    The input block has ``local_shape`` and starts at ``offset`` of the global input; an axis
    where the field has size 1 is shared (index 0 there, local noise size 1). The result is an
    int64 tensor of the local noise shape, so a shard reads exactly its slice of the field.
    """
    index = torch.zeros((), dtype=torch.int64, device=device)
    stride = 1
    for axis in reversed(range(len(field_shape))):
        if field_shape[axis] != 1:
            view = [1] * len(field_shape)
            view[axis] = local_shape[axis]
            pos = torch.arange(local_shape[axis], dtype=torch.int64, device=device)
            index = index + ((pos + offset[axis]) * stride).reshape(view)
        stride *= field_shape[axis]
    local_noise = [n if f != 1 else 1 for n, f in zip(local_shape, field_shape, strict=True)]
    return index.expand(local_noise)


def physical_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The axes of ``t`` from outermost to innermost in the layout ``torch.empty_like(t)`` gives
    (``torch.preserve_format``: ``t``'s own strides when ``t`` is dense, else its suggested
    memory format), so that ``t.permute(order)`` of a tensor in that layout is contiguous.
    ``None`` when that layout is row-major (checked first: the common case costs one call)."""
    if t.is_contiguous():
        return None
    strides = torch.empty_like(t, device="meta").stride()
    order = tuple(sorted(range(t.dim()), key=lambda d: -strides[d]))  # stable: size-1 ties
    return None if order == tuple(range(t.dim())) else order


def inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``order`` (``t.permute(order).permute(inverse(order))``)."""
    inv = [0] * len(order)
    for position, axis in enumerate(order):
        inv[axis] = position
    return tuple(inv)


def unpermute(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``t.permute(inverse(order))`` as a tensor of its own (sharing ``t``'s storage), not a
    view: an op's output must not be a view of a temporary, or autograd forbids in-place ops on
    it (``relu_`` after a dropout of a channels_last input)."""
    v = t.permute(inverse(order))
    return v.new_empty(0).set_(v.untyped_storage(), v.storage_offset(), v.size(), v.stride())


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` is non-overlapping and dense (any permutation of a contiguous layout)."""
    return t.is_contiguous() or torch.empty_like(t, device="meta").stride() == t.stride()


def in_memory_order(fn, x: torch.Tensor, *fields: torch.Tensor) -> torch.Tensor:
    """``fn(x, *fields)`` (elementwise, ``fields`` of x's rank broadcasting to it) computed on
    the view of ``x`` in its physical axis order, so the result has the layout
    ``torch.empty_like(x)`` gives (x's memory format) at no extra pass; values are unchanged,
    since each element still meets its own logical field element."""
    order = physical_order(x)
    if order is None:
        return fn(x, *fields).contiguous()
    views = (f.permute(order) for f in fields)
    return unpermute(fn(x.permute(order), *views).contiguous(), order)


def like_memory_format(result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A row-major ``result`` of x's shape in x's memory format (a copy only when that is not
    row-major): for kernels that can only walk the logical order."""
    if physical_order(x) is None:
        return result
    return torch.empty_like(x).copy_(result)


def collapse(
    shape: tuple[int, ...], noise_shape: tuple[int, ...], order: tuple[int, ...] | None = None
) -> tuple[list[int], list[int]]:
    """Merge neighbouring axes of x, taken in memory ``order`` (outermost first; default
    row-major, see :func:`physical_order`), that are both broadcast in the noise field or
    consecutive in it (size-1 axes are dropped): the layout the numba and Triton broadcast
    kernels walk. The field stays indexed by the logical row-major position: an axis' field
    stride is its row-major stride in ``noise_shape``, whatever the memory order.

    Returns:
        ``(sizes, strides)``: the merged axes' sizes and field strides (0 where broadcast),
        at least one axis. Raises ``ValueError`` if ``noise_shape`` does not broadcast to
        ``shape`` axis by axis (same rank, each size 1 or x's).
    """
    if len(shape) != len(noise_shape) or any(
            n not in (1, s) for s, n in zip(shape, noise_shape, strict=True)):
        raise ValueError(f"noise_shape {noise_shape} does not broadcast to {shape}.")
    field_strides, step = [0] * len(shape), 1
    for d in reversed(range(len(shape))):
        if noise_shape[d] != 1:
            field_strides[d], step = step, step * noise_shape[d]
    groups: list[list[int]] = []  # [size, field stride of the group's innermost axis]
    for d in range(len(shape)) if order is None else order:
        size, stride = shape[d], field_strides[d]
        if size == 1:
            continue
        if groups and groups[-1][1] == stride * size:  # both broadcast, or consecutive
            groups[-1] = [groups[-1][0] * size, stride]
        else:
            groups.append([size, stride])
    groups = groups or [[1, 1]]
    return [g[0] for g in groups], [g[1] for g in groups]


def keep_field(key: tuple[int, int], t: int, count: int, device=None) -> torch.Tensor:
    """Boolean keep decisions of field elements ``0 ... count - 1``."""
    words = _words(key, -(-count // 8), rng.STREAM_BERNOULLI, device)
    lanes = torch.stack([words & 0xFFFF, words >> 16], dim=-1).reshape(-1)[:count]
    return lanes >= t


_TORCH_OPS = rng.ArrayOps(torch.frexp, torch.where, torch.floor)


def normal_field(key: tuple[int, int], count: int, device=None) -> torch.Tensor:
    """Standard normal float64 noise of field elements ``0 ... count - 1`` (Box-Muller, stream 1,
    with the spec's fixed formulas: ``dropkit.rng.box_muller``)."""
    words = _words(key, -(-count // 4), rng.STREAM_NORMAL, device).to(torch.float64)
    z_even, z_odd = rng.box_muller(words[:, 0::2], words[:, 1::2], _TORCH_OPS)
    return torch.stack([z_even, z_odd], dim=-1).reshape(-1)[:count]


def apply_keep(
    x: torch.Tensor,
    keep: torch.Tensor,
    scale: float,
    shift: float,
    fill: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``where(keep, x * scale + shift, fill)``, ``keep`` (x's rank) broadcast to ``x``; the
    result has x's memory format (the layout ``torch.empty_like(x)`` gives).

    This one expression is the arithmetic of every backend that does not fuse, so backends that
    draw the same ``keep`` give the same bits. ``shift`` is only added when non-zero, so that
    plain dropout keeps the sign of ``-0.0``.
    """
    def affine(xv: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kept = xv * scale
        if shift != 0.0:  # in the compute dtype: torch would round `shift` to float16 first
            kept = (kept.to(compute_dtype(x.dtype)) + shift).to(x.dtype)
        fill_value = torch.tensor(fill, dtype=x.dtype, device=x.device)
        return torch.where(kv.to(x.device), kept, fill_value)

    result = in_memory_order(affine, x, keep)
    return result if out is None else out.copy_(result)


def apply(
    x: torch.Tensor,
    key: tuple[int, int],
    t: int,
    noise_shape: tuple[int, ...],
    scale: float,
    shift: float,
    fill: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``where(keep, x * scale + shift, fill)``, the keep field broadcast from ``noise_shape``."""
    keep = keep_field(key, t, math.prod(noise_shape), device=x.device)
    return apply_keep(x, keep.reshape(noise_shape), scale, shift, fill, out=out)


def keep_runs(key: tuple[int, int], t: int, starts: torch.Tensor, length: int,
              device=None) -> torch.Tensor:
    """Boolean keep decisions of ``len(starts)`` runs of field elements: row ``r`` holds
    elements ``starts[r] ... starts[r] + length - 1`` (``starts``: int64). Shape
    ``(len(starts), length)``; the same bits as :func:`keep_field` at those positions."""
    starts = starts.to(device=device, dtype=torch.int64)
    n_blocks = (length + 7) // 8 + 1  # enough blocks for any alignment of a run
    blocks = (starts >> 3).unsqueeze(-1) + torch.arange(n_blocks, device=device)
    words = block_words(key, blocks, rng.STREAM_BERNOULLI)
    lanes = torch.stack([words & 0xFFFF, words >> 16], dim=-1).reshape(len(starts), -1)
    index = (starts & 7).unsqueeze(-1) + torch.arange(length, device=device)
    return torch.gather(lanes, 1, index) >= t
