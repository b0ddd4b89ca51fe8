"""DropBlock 1d/2d/3d for torch tensors: calibrated seed rate, valid-region seeds, one custom op.

The specification (calibration, seed field, block mask, scaling) is ``docs/dropblock.md`` and
its executable reference :mod:`dropkit._drop_block_numpy`; this module computes the same bits
with torch operations (any device), for CPU tensors with the numba kernel of
:mod:`dropkit.kernels.drop_block_numba`, and for CUDA tensors with the Triton kernels of
:mod:`dropkit.kernels.triton_drop_block` (when ``kernels.uses_triton`` says so).

``dropkit::drop_block(x, key, p, block_size, per_channel, scale, channels_last)`` is one opaque
custom op: the calibration solver (cached NumPy code) runs *inside* it, so ``torch.compile``
never traces it and dynamic shapes need nothing special. Its backward is the same op applied
to the gradient: the mask is regenerated from the saved 2-word key (16 bytes are saved, no
mask), and with ``scale="batch"`` the scale ``count(M) / count_ones(M)`` is recomputed from the
regenerated mask, so it is treated as a constant (it does not depend on ``input``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _drop_block_numpy as spec
from . import _ops, kernels
from . import functional as _functional  # a partial module while functional.py imports this one
from .kernels import torch_ref

__all__ = ["drop_block1d", "drop_block2d", "drop_block3d"]


# ---------------------------------------------------------------------------------------------
# The torch path (any device)


def seed_field(key: tuple[int, int], shape: tuple[int, ...], threshold: int, device=None) -> Tensor:
    """Boolean seed field of ``shape``: element ``i`` reads word ``r[i % 4]`` of the Philox
    block ``(n_lo, n_hi, 2, 0)``, ``n = i // 4``, and is a seed iff ``r < threshold``."""
    count = math.prod(shape)
    n = torch.arange(-(-count // spec.WORDS_PER_BLOCK), dtype=torch.int64, device=device)
    words = torch_ref.block_words(key, n, spec.STREAM_DROPBLOCK).reshape(-1)[:count]
    return (words < threshold).reshape(shape)


def block_keep_mask(seeds: Tensor, block: Sequence[int]) -> Tensor:
    """Keep mask of a seed field ``(N, C, *starts)``: a unit is dropped iff a seed's block
    covers it. Separable prefix sums, so the cost does not depend on the block size."""
    covered = seeds
    for axis, b in enumerate(block, start=2):
        if b == 1:
            continue
        n_starts = covered.shape[axis]
        prefix = torch.cumsum(covered, dim=axis, dtype=torch.int32)
        head = torch.zeros_like(prefix.narrow(axis, 0, 1)).expand(
            *prefix.shape[:axis], b, *prefix.shape[axis + 1:]
        )
        tail = prefix.narrow(axis, n_starts - 1, 1).expand(
            *prefix.shape[:axis], b - 1, *prefix.shape[axis + 1:]
        )
        # padded[k] = prefix sum P[clip(k - b + 1, 0, V)], so that unit u is covered iff
        # P[min(u + 1, V)] - P[max(u - b + 1, 0)] > 0, i.e. padded[u + b] > padded[u].
        padded = torch.cat([head, prefix, tail], dim=axis)
        length = n_starts + b - 1
        covered = padded.narrow(axis, b, length) > padded.narrow(axis, 0, length)
    return ~covered


def block_keep_at(
    key: tuple[int, int],
    threshold: int,
    field: tuple[int, ...],
    block: Sequence[int],
    local: tuple[int, ...],
    offset: tuple[int, ...],
    device=None,
) -> Tensor:
    """Keep mask of one shard: the units ``offset ... offset + local`` (logical ``(N, C,
    *spatial)``, ``C`` of size 1 when the mask is shared) of the mask that the global seed field
    ``field = (N, C, *starts)`` gives. Only the seeds whose blocks can reach the shard are drawn
    (a halo of ``block - 1`` starts), read at their global field indices, so every shard gets
    exactly its slice of the unsplit mask."""
    lo = [offset[0], offset[1]]
    window = [local[0], local[1]]
    for axis in range(2, len(field)):
        first = max(0, offset[axis] - block[axis - 2] + 1)
        last = min(field[axis] - 1, offset[axis] + local[axis] - 1)
        lo.append(first)
        window.append(last - first + 1)
    index = torch_ref.field_index(tuple(window), field, tuple(lo), device)
    words = torch_ref.block_words(key, index >> 2, spec.STREAM_DROPBLOCK)
    word = torch.gather(words, -1, (index & 3).unsqueeze(-1)).squeeze(-1)
    covered = word < threshold
    for axis in range(2, len(field)):
        # Unit g (global) is covered iff a seed starts in [g - b + 1, g] on this axis; in window
        # coordinates that range is clipped to [0, W), and counted with a prefix sum.
        b, width = block[axis - 2], window[axis]
        prefix = torch.cumsum(covered, dim=axis, dtype=torch.int32)
        prefix = torch.cat([torch.zeros_like(prefix.narrow(axis, 0, 1)), prefix], dim=axis)
        g = torch.arange(local[axis], device=device) + offset[axis] - lo[axis]
        upper = prefix.index_select(axis, (g + 1).clamp(0, width))
        lower = prefix.index_select(axis, (g - b + 1).clamp(0, width))
        covered = upper > lower
    return ~covered


def _channels_first(x: Tensor, spatial_dims: int, channels_last: bool) -> Tensor:
    """``x`` as a logical ``(N, C, *spatial)`` view (unbatched inputs get ``N = 1``)."""
    if x.dim() == spatial_dims + 1:
        x = x.unsqueeze(0)
    return x.movedim(-1, 1) if channels_last else x


def _from_channels_first(out: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
    if channels_last:
        out = out.movedim(1, -1)
    return out.reshape(shape).contiguous()


def _apply_torch(x, keep, factor, channels_last, spatial_dims):
    """``where(keep, x * factor, 0)`` in the spec's arithmetic; ``factor`` None: no scaling."""
    xc = _channels_first(x, spatial_dims, channels_last)
    if factor is None:
        kept = xc
    else:
        kept = (xc.to(torch_ref.compute_dtype(x.dtype)) * factor).to(x.dtype)
    out = torch.where(keep, kept, torch.zeros((), dtype=x.dtype, device=x.device))
    return _from_channels_first(out, x.shape, channels_last)


def _batch_factor(keep: Tensor, ct: torch.dtype) -> Tensor:
    """``count(M) / count_ones(M)`` as a float64 division on the device, rounded to ``ct``;
    0 when nothing is kept. Stays on the device (no host synchronisation)."""
    ones = keep.sum().to(torch.float64)
    count = torch.tensor(float(keep.numel()), dtype=torch.float64, device=keep.device)
    return torch.where(ones > 0, count / ones, torch.zeros_like(ones)).to(ct)


def _torch_path(x, key, cal, n, c, spatial, per_channel, scale, channels_last):
    starts = tuple(s - b + 1 for s, b in zip(spatial, cal.block, strict=True))
    field = (n, c if per_channel else 1, *starts)
    keep = block_keep_mask(seed_field(key, field, cal.threshold, x.device), cal.block)
    ct = torch_ref.compute_dtype(x.dtype)
    if scale == "batch":
        factor = _batch_factor(keep, ct)
    elif scale == "expected":
        factor = torch.tensor(spec.expected_scale(cal), dtype=ct, device=x.device)
    else:
        factor = None
    return _apply_torch(x, keep, factor, channels_last, len(spatial))


def _numba():
    """The numba kernel module, or None (not importable, or the torch backend is forced)."""
    if kernels.get_backend() == "torch":
        return None
    return kernels._load("drop_block_numba", "numba")


# ---------------------------------------------------------------------------------------------
# The custom op


def _without_rng(x: Tensor, cal) -> Tensor | None:
    """The result when no random number is needed (empty input, ``p = 0``, or ``p = 1``: every
    start is a seed), else ``None``."""
    if x.numel() == 0 or cal.threshold == 0:
        return x.clone()
    if cal.threshold >= spec.WORD_RANGE:
        return torch.zeros_like(x)
    return None


def _flipped_order(rank: int, spatial_dims: int, channels_last: bool) -> tuple[int, ...]:
    """The memory order that stores an input of ``data_format`` ``channels_last`` as the other
    data format (e.g. a ``(N, C, H, W)`` tensor in ``torch.channels_last``)."""
    lead = (0,) if rank == spatial_dims + 2 else ()
    first = len(lead)
    if channels_last:
        return (*lead, rank - 1, *range(first, rank - 1))
    return (*lead, *range(first + 1, rank), first)


def _drop_block(x, key, p, block_size, per_channel, scale, channels_last) -> Tensor:
    """The op on ``x`` read in logical order: a row-major result."""
    spatial_dims = len(block_size)
    n, c, spatial = spec.layout(tuple(x.shape), spatial_dims, channels_last)
    cal = spec.calibrate(spatial, tuple(block_size), _ops.read_rate(p))
    trivial = _without_rng(x, cal)
    if trivial is not None:
        return trivial.contiguous()
    k0, k1 = _ops._key(key)
    backend = _numba() if x.device.type == "cpu" else None
    if backend is None and kernels.uses_triton(x.device):  # CUDA tensors, triton importable
        from .kernels import triton_drop_block as backend
    if backend is not None:
        return backend.apply(x, (k0, k1), cal, n, c, spatial, per_channel, scale, channels_last)
    return _torch_path(x, (k0, k1), cal, n, c, spatial, per_channel, scale, channels_last)


@torch.library.custom_op("dropkit::drop_block", mutates_args=())
def drop_block_op(
    x: Tensor,
    key: Tensor,
    p: Tensor,
    block_size: list[int],
    per_channel: bool,
    scale: str,
    channels_last: bool,
) -> Tensor:
    """DropBlock of ``x``; the result has x's memory format. An input stored as the other data
    format (``torch.channels_last`` memory for channels-first data, ...) is computed on its
    contiguous memory-order view as that data format (the mask depends only on the logical
    channels-first view, so the bits are the same); other layouts through a row-major copy."""
    args = (key, p, block_size, per_channel, scale)
    order = torch_ref.physical_order(x)
    if order is None:
        return _drop_block(x, *args, channels_last)
    if order == _flipped_order(x.dim(), len(block_size), channels_last):
        out = _drop_block(x.permute(order), *args, not channels_last)
        return torch_ref.unpermute(out, order)
    return torch.empty_like(x).copy_(_drop_block(x, *args, channels_last))


@drop_block_op.register_fake
def _(x, key, p, block_size, per_channel, scale, channels_last):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    _, key, *params = inputs
    _ops._save(ctx, key)
    ctx.params = params


def _backward(ctx, grad):
    (key,) = ctx.saved_tensors
    return drop_block_eager(grad, key, *ctx.params), None, None, None, None, None, None


drop_block_eager = _ops.differentiable(drop_block_op, _setup, _backward, name="_DropBlockFn")


@torch.library.custom_op("dropkit::drop_block_at", mutates_args=())
def drop_block_at_op(
    x: Tensor,
    key: Tensor,
    p: Tensor,
    block_size: list[int],
    per_channel: bool,
    scale: str,
    channels_last: bool,
    global_shape: list[int],
    offset: list[int],
) -> Tensor:
    """DropBlock of one shard ``x`` of a global input of ``global_shape`` (``offset`` per axis):
    the mask is the shard's slice of the global mask. ``scale`` is ``"expected"`` or ``"none"``
    (the batch count of ``"batch"`` would need every shard)."""
    spatial_dims = len(block_size)
    n, c, spatial = spec.layout(tuple(global_shape), spatial_dims, channels_last)
    cal = spec.calibrate(spatial, tuple(block_size), _ops.read_rate(p))
    trivial = _without_rng(x, cal)
    if trivial is not None:
        return trivial
    batched = len(global_shape) == spatial_dims + 2
    ln, lc, lspatial = spec.layout(tuple(x.shape), spatial_dims, channels_last)
    on, oc, ospatial = spec.layout(tuple(offset), spatial_dims, channels_last)
    on = on if batched else 0
    starts = tuple(s - b + 1 for s, b in zip(spatial, cal.block, strict=True))
    field = (n, c if per_channel else 1, *starts)
    local = (ln, lc if per_channel else 1, *lspatial)
    first = (on, oc if per_channel else 0, *ospatial)
    keep = block_keep_at(_ops._key(key), cal.threshold, field, cal.block, local, first, x.device)
    ct = torch_ref.compute_dtype(x.dtype)
    factor = (torch.tensor(spec.expected_scale(cal), dtype=ct, device=x.device)
              if scale == "expected" else None)
    out = _apply_torch(x, keep, factor, channels_last, spatial_dims)
    return torch_ref.like_memory_format(out, x)


@drop_block_at_op.register_fake
def _(x, key, p, block_size, per_channel, scale, channels_last, global_shape, offset):
    return torch.empty_like(x)


def _backward_at(ctx, grad):
    (key,) = ctx.saved_tensors
    return drop_block_at_eager(grad, key, *ctx.params), *(None,) * 8


drop_block_at_eager = _ops.differentiable(
    drop_block_at_op, _setup, _backward_at, name="_DropBlockAtFn"
)


# ---------------------------------------------------------------------------------------------
# Functions

_NO_KEY = (0, 0)  # p = 1 draws nothing


def _make(spatial_dims: int):
    name = f"drop_block{spatial_dims}d"
    axes = {1: "L", 2: "H, W", 3: "D, H, W"}[spatial_dims]

    def drop_block(
        input: Tensor,
        p: float = 0.1,
        block_size: int | Sequence[int] = 7,
        training: bool = True,
        inplace: bool = False,
        *,
        per_channel: bool = True,
        scale: str = "batch",
        data_format: str = "channels_first",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        p = _functional._check_common(name, input, p, training, inplace, seed, generator)
        block = spec.check_block_size(name, block_size, spatial_dims)
        spec.check_options(name, per_channel, scale, data_format)
        spec.check_rank(name, tuple(input.shape), spatial_dims, data_format)
        if not training or input.numel() == 0:
            return input
        if isinstance(p, Tensor):  # read when the op runs: no recompiles when it changes
            key, rate = _functional.draw_key(seed, generator, rate=p), p
        elif p == 0.0:
            return input
        else:
            key = (torch.tensor(_NO_KEY, dtype=torch.int64) if p == 1.0
                   else _functional.draw_key(seed, generator))
            rate = torch.tensor(p, dtype=torch.float64)
        out = drop_block_eager(input, key, rate, list(block), per_channel, scale,
                               data_format == "channels_last")
        return input.copy_(out) if inplace else out

    drop_block.__name__ = drop_block.__qualname__ = name
    example_shape = ", ".join(["2", "3"] + ["8"] * spatial_dims)
    drop_block.__doc__ = f"""DropBlock: drop contiguous blocks of a {spatial_dims}D map ({axes}).

    Ghiasi, Lin and Le (2018), Algorithm 1, with the seed rate *calibrated*: blocks start only
    where they fit in the map, and the seed probability ``gamma`` solves
    ``1 - mean_u (1 - gamma)**c(u) = p`` exactly (``c(u)`` = number of valid block starts that
    cover unit ``u``), so the expected dropped fraction is ``p`` for every map and block size,
    borders and overlaps included ([docs/dropblock.md](../dropblock.md)).

    Args:
        input: Feature map, see Shape.
        p: Expected fraction of units to drop, in ``[0, 1]`` (a float, or a 0-dim tensor read
            when the op runs).
        block_size: Block side: an int, or one int per spatial axis ({axes}). Even sizes work;
            a block larger than the map is clipped to the map on that axis.
        training: Apply DropBlock if ``True``; otherwise return ``input``.
        inplace: Write the result into ``input``.
        per_channel: One mask per channel (the paper's Algorithm 1, the default) or, if
            ``False``, one mask per sample shared by all channels.
        scale: ``"batch"`` multiplies kept units by ``count(M) / count_ones(M)`` over the whole
            block mask ``M`` (the paper; all-dropped gives zeros, never NaN); ``"expected"`` by
            ``1 / (1 - f)``, ``f`` the exact expected dropped fraction; ``"none"``: no scaling.
        data_format: ``"channels_first"`` or ``"channels_last"``. The mask depends only on
            the logical channels-first view: a channels-last input gets the mask of its
            permutation.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - channels_first: ``(N, C, {axes})`` batched or ``(C, {axes})`` unbatched (masked as
          a batch of one).
        - channels_last: ``(N, {axes}, C)`` batched or ``({axes}, C)`` unbatched.
        - Any other rank is a ``ValueError``. Output: same shape as input, in its memory
          format (``torch.channels_last`` stays so).

    Raises:
        TypeError: A non-floating ``input``, a non-real ``p``, non-bool ``training``,
            ``inplace`` or ``per_channel``, a ``block_size`` that is not an int or a tuple of
            ints, or a non-int ``seed``.
        ValueError: ``p`` outside ``[0, 1]``, a ``block_size`` entry below 1 or a tuple of the
            wrong length, an unknown ``scale`` or ``data_format``, a wrong rank, or a ``seed``
            outside ``[0, 2**64)``.

    Example:
        >>> import torch, dropkit
        >>> from dropkit._drop_block import {name}
        >>> y = {name}(torch.ones({example_shape}), 0.2, block_size=3, seed=0)
        >>> bool(((y == 0) | (y > 1)).all())  # dropped, or kept and rescaled
        True
    """
    return drop_block


drop_block1d = _make(1)
drop_block2d = _make(2)
drop_block3d = _make(3)
