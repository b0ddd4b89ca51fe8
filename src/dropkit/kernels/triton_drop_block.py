"""DropBlock's Triton kernels for CUDA tensors: seed field, block mask and apply.

Same bits as the torch path of :mod:`dropkit._drop_block`, the numba kernel and the NumPy
reference (``docs/dropblock.md``); same contract as :func:`dropkit.kernels.drop_block_numba.apply`.
Status: checked bit for bit in Triton's CPU interpreter (``tests/test_triton_drop_block.py``),
which checks logic and bits, not GPU code generation or speed: **not yet run or timed on a GPU**.

Three kinds of launches, every index in int64, every block size a constexpr power of two:

1. ``_seed_kernel`` writes the seed field ``(N, C or 1, *starts)`` as uint8, one byte per
   start: each program runs ``_BLOCK_N`` Philox blocks (stream 2) and writes their 4 words'
   decisions ``r < T`` to 4 consecutive bytes. Each Philox block is computed exactly once.
   Generating seeds inside the mask kernels instead would cost a Philox per seed (a tile's seed
   indices are not aligned to blocks of 4): 4x the integer work, and with seed fields almost as
   large as x (block 7 on 56 x 56 maps: 50 x 50 starts per plane) Philox (~60 integer ops per
   block) is the larger cost, not the byte of traffic per start.
2. ``_dilate_kernel``, once per spatial axis with ``b > 1`` (last axis first): the field
   ``(outer, V, inner)`` becomes ``(outer, V + b - 1, inner)``, unit ``u`` covered iff a seed
   lies in ``[u - b + 1, u]`` on that axis; the box rule is separable (spec section 4). A
   program loads a tile of ``T`` positions along the axis (``b - 1`` of them a halo shared with
   the previous tile) and takes a running maximum (``tl.associative_scan``) of the position of
   the last seed: ``covered(k) = last(k) > k - b``, the numba kernel's rule. No max-pooling and
   no window loop: the cost per unit does not depend on the block size. The last pass writes
   the keep mask ``M`` (uint8 ``(N, C or 1, *spatial)``) and, for ``scale="batch"``, adds its
   programs' counts of kept units to a device int64 with ``tl.atomic_add`` (integers: the sum
   does not depend on the order).
3. ``_apply_kernel``: one pass over x, ``where(M, round(x * factor), 0)`` in float32 (the
   factor rounded to float32 as the torch path rounds it), bfloat16 rounded with
   ``triton_cuda._round``. x is seen as ``(A, B, K)`` (channels first ``(N, C, S)``, or
   ``(1, 1, N C S)`` with per-channel masks, whose layout is x's; channels last ``(N, S, C)``)
   and tiled ``(BR, BC)`` inside one ``a``, so the mask offsets are contiguous along one tile
   axis in every layout (a channels-last tile reads ``BR`` consecutive mask bytes per channel)
   and shared masks are re-read from L2. With
   ``scale="batch"`` every program reads the count and divides in float64 on the device (no
   host synchronisation): ``where(ones > 0, numel(M) / ones, 0)`` rounded to float32, as
   ``_drop_block._batch_factor``.

Memory traffic (the kernels are memory-bound; Philox is ~0.25 blocks per unit), per element of
x for per-channel 2-D masks: seeds ~0.8 B written and read, one dilated intermediate ~0.9 B
written and read, ``M`` 1 B written and read, x read and y written once: about 5.4 B + 4 B
(bfloat16) or 5.4 B + 8 B (float32), against ~60 B for torchvision's ``drop_block2d``
(``pad``, ``max_pool2d``, ``sum``, two products in float32). Shared masks (``per_channel=False``)
make the mask traffic ``C`` times smaller. The design trades ~2 B per element more than a
single fused kernel for kernels that handle every rank, layout and block size the same way.

float64 inputs get the Triton mask and the torch path's ``where`` expression (same bits).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _drop_block_numpy as spec
from .triton_cuda import _round, _seed, philox_block

__all__ = ["apply", "keep_mask"]

_BLOCK_N = 256  # Philox blocks per program of the seed kernel: 1024 starts
_TILE = 4096  # units per program of the dilate and apply kernels
_SPLIT = 256  # an axis longer than this (plus halo) is split into tiles along it
_MAX_AXIS_TILE = 1 << 13  # larger blocks (b > 4096) fall back to the torch path
_STREAM = tl.constexpr(spec.STREAM_DROPBLOCK)
_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit(do_not_specialize=["seed", "t"])
def _seed_kernel(out_ptr, count, seed, t, BLOCK_N: tl.constexpr):
    """``out[i] = word_i < t`` (uint8) for field elements ``i < count``: word ``i % 4`` of the
    Philox block ``i // 4`` of stream 2."""
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    r0, r1, r2, r3 = philox_block(seed, n, _STREAM)
    j = tl.arange(0, 4)[None, :]
    word = tl.where(j == 0, r0[:, None],
                    tl.where(j == 1, r1[:, None], tl.where(j == 2, r2[:, None], r3[:, None])))
    offs = n[:, None] * 4 + j
    seeds = (word.to(tl.int64) < t).to(tl.uint8)
    tl.store(out_ptr + offs, seeds, mask=offs < count)


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _dilate_kernel(src_ptr, dst_ptr, count_ptr, outer, n_in, n_out, inner, b, per_tile,
                   axis_tiles, inner_tiles, FINAL: tl.constexpr, COUNT: tl.constexpr,
                   BO: tl.constexpr, T: tl.constexpr, BI: tl.constexpr):
    """Dilate the middle axis of ``src`` ``(outer, n_in, inner)`` into ``dst``
    ``(outer, n_out, inner)``, ``n_out = n_in + b - 1``; ``FINAL``: write ``1 - covered`` (the
    keep mask) and, if ``COUNT``, add the number of kept units to ``count_ptr[0]``.

    A program covers a ``(BO, T, BI)`` tile. Along the axis, tile ``ta`` reads the positions
    ``ta * per_tile - (b - 1) + k``, ``k < T`` (``per_tile = T - b + 1``) and writes those with
    ``k >= b - 1``: every written unit sees all ``b`` positions that can cover it."""
    pid = tl.program_id(0).to(tl.int64)
    ti = pid % inner_tiles
    rest = pid // inner_tiles
    ta = rest % axis_tiles
    o = (rest // axis_tiles) * BO + tl.arange(0, BO)[:, None, None]
    k = tl.arange(0, T)[None, :, None]
    i = ti * BI + tl.arange(0, BI)[None, None, :]
    u = ta * per_tile - (b - 1) + k
    inside = (o < outer) & (i < inner)
    seeds = tl.load(src_ptr + (o * n_in + u) * inner + i,
                    mask=inside & (u >= 0) & (u < n_in), other=0)
    last = tl.associative_scan(tl.where(seeds != 0, k, -T), 1, _max)  # -T: no seed yet
    covered = last > k - b
    ok = inside & (k >= b - 1) & (u < n_out)
    if FINAL:
        tl.store(dst_ptr + (o * n_out + u) * inner + i, tl.where(covered, 0, 1).to(tl.uint8),
                 mask=ok)
        if COUNT:
            kept = tl.sum(tl.where(ok & ~covered, 1, 0))
            tl.atomic_add(count_ptr, kept.to(tl.int64))
    else:
        tl.store(dst_ptr + (o * n_out + u) * inner + i, covered.to(tl.uint8), mask=ok)


@triton.jit(do_not_specialize=["total"])
def _apply_kernel(x_ptr, keep_ptr, out_ptr, count_ptr, rows, cols, size, mask_plane,
                  row_tiles, col_tiles, total, factor, CHANNELS_LAST: tl.constexpr,
                  PER_CHANNEL: tl.constexpr, MODE: tl.constexpr, IS_BF16: tl.constexpr,
                  BR: tl.constexpr, BC: tl.constexpr):
    """``where(keep, x * factor, 0)`` over x seen as ``(A, rows, cols)``; the keep mask is
    ``(A, C or 1, size)``. ``MODE``: 0 no scaling, 1 the float32 ``factor``, 2 the batch factor
    ``total / count_ptr[0]`` (float64, rounded to float32; 0 if nothing is kept)."""
    pid = tl.program_id(0).to(tl.int64)
    tc = pid % col_tiles
    rest = pid // col_tiles
    tr = rest % row_tiles
    a = rest // row_tiles
    r = tr * BR + tl.arange(0, BR)[:, None]
    c = tc * BC + tl.arange(0, BC)[None, :]
    mask = (r < rows) & (c < cols)
    if CHANNELS_LAST:  # rows: spatial positions, cols: channels
        m_offs = a * mask_plane + r + (c * size if PER_CHANNEL else 0)
    else:  # rows: channels, cols: spatial positions
        m_offs = a * mask_plane + (r * size if PER_CHANNEL else 0) + c
    keep = tl.load(keep_ptr + m_offs, mask=mask, other=0) != 0
    offs = (a * rows + r) * cols + c
    x = tl.load(x_ptr + offs, mask=mask)
    if MODE == 0:
        kept = x
    else:
        if MODE == 2:
            ones = tl.load(count_ptr)
            ratio = total.to(tl.float64) / tl.maximum(ones, 1).to(tl.float64)
            f = tl.where(ones > 0, ratio, 0.0).to(tl.float32)
        else:
            f = factor
        # Dropped units are zeroed before the product: with f = 0 (nothing kept) no inf * 0.
        kept = _round(tl.where(keep, x.to(tl.float32), 0.0) * f, IS_BF16, x.dtype)
    tl.store(out_ptr + offs, tl.where(keep, kept, 0.0).to(x.dtype), mask=mask)


def _axis_tiles(outer: int, n_out: int, inner: int, b: int) -> tuple[int, int, int] | None:
    """``(BO, T, BI)`` of a dilation pass: one tile along the axis when it fits in ``_SPLIT``
    with its halo, else tiles of ``T >= 2 b - 1`` (at least half of each tile is output);
    None when ``T`` would exceed ``_MAX_AXIS_TILE``."""
    t = triton.next_power_of_2(n_out + b - 1)
    if t > _SPLIT:
        t = max(_SPLIT, triton.next_power_of_2(2 * b - 1))
        if t > _MAX_AXIS_TILE:
            return None
    bi = min(triton.next_power_of_2(inner), max(1, _TILE // t))
    bo = min(triton.next_power_of_2(outer), max(1, _TILE // (t * bi)))
    return bo, t, bi


def keep_mask(
    key: tuple[int, int], cal, n_planes: int, spatial: tuple[int, ...], device, count: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The block keep mask of ``n_planes`` planes (uint8, flat ``n_planes * prod(spatial)``)
    and a device int64 tensor ``(1,)`` holding its count of ones when ``count`` (zeros
    otherwise), for calibrated parameters ``cal`` (``0 < threshold < 2**32``).

    Returns None when a block is too large for the kernels' tiles (``b > 4096``)."""
    starts = [s - b + 1 for s, b in zip(spatial, cal.block, strict=True)]
    n_seeds = n_planes * math.prod(starts)
    cur = torch.empty(n_seeds, dtype=torch.uint8, device=device)
    grid = (triton.cdiv(triton.cdiv(n_seeds, 4), _BLOCK_N),)
    _seed_kernel[grid](cur, n_seeds, _seed(key), cal.threshold, BLOCK_N=_BLOCK_N,
                       enable_fp_fusion=False)  # as every launch: no FMA, no triton warning
    ones = torch.zeros(1, dtype=torch.int64, device=device)
    dims = [n_planes, *starts]
    axes = [d for d in range(len(spatial)) if cal.block[d] > 1] or [len(spatial) - 1]
    for d in reversed(axes):
        outer, inner = math.prod(dims[:d + 1]), math.prod(dims[d + 2:])
        b, n_in = cal.block[d], dims[d + 1]
        tiles = _axis_tiles(outer, n_in + b - 1, inner, b)
        if tiles is None:
            return None
        bo, t, bi = tiles
        dims[d + 1] = n_in + b - 1
        dst = torch.empty(math.prod(dims), dtype=torch.uint8, device=device)
        per_tile = t - b + 1
        axis_tiles, inner_tiles = triton.cdiv(dims[d + 1], per_tile), triton.cdiv(inner, bi)
        grid = (triton.cdiv(outer, bo) * axis_tiles * inner_tiles,)
        _dilate_kernel[grid](cur, dst, ones, outer, n_in, dims[d + 1], inner, b, per_tile,
                             axis_tiles, inner_tiles, FINAL=d == axes[0], COUNT=count,
                             BO=bo, T=t, BI=bi, enable_fp_fusion=False)
        cur = dst
    return cur, ones


def apply(x, key, cal, n, c, spatial, per_channel, scale, channels_last) -> torch.Tensor:
    """DropBlock of a CUDA tensor (or a CPU tensor in Triton's interpreter): same contract and
    bits as the torch path of :mod:`dropkit._drop_block` (``0 < cal.threshold < 2**32``).

    Args:
        x: ``(N, C, *spatial)`` / ``(C, *spatial)``, or channels last ``(N, *spatial, C)`` /
            ``(*spatial, C)``; float32, float16 and bfloat16 are applied by ``_apply_kernel``,
            float64 by the torch path's expression on the Triton mask.
        key: the two key words; cal: ``spec.calibrate(spatial, block, p)``.
        n, c, spatial: ``spec.layout`` of ``x``.
        per_channel: one mask per channel, else one per sample.
        scale: ``"batch"``, ``"expected"`` or ``"none"``.
        channels_last: the layout of ``x``.

    Returns:
        A new contiguous tensor of ``x``'s shape and dtype.
    """
    from .. import _drop_block as db

    c_mask = c if per_channel else 1
    size = math.prod(spatial)
    fused = x.dtype in _DTYPES
    result = keep_mask(key, cal, n * c_mask, tuple(spatial), x.device,
                       count=fused and scale == "batch")
    if result is None:
        return db._torch_path(x, key, cal, n, c, spatial, per_channel, scale, channels_last)
    keep, ones = result
    if not fused:
        keep_t = keep.view(torch.bool).reshape(n, c_mask, *spatial)
        ct = torch.float64
        factor = (db._batch_factor(keep_t, ct) if scale == "batch" else
                  torch.tensor(spec.expected_scale(cal), dtype=ct, device=x.device)
                  if scale == "expected" else None)
        return db._apply_torch(x, keep_t, factor, channels_last, len(spatial))
    src = x.detach().contiguous()
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    if channels_last:
        groups, rows, cols = n, size, c
    elif per_channel:  # x and the mask have the same flat layout: one long row
        groups, rows, cols = 1, 1, x.numel()
    else:
        groups, rows, cols = n, c, size
    bc = min(triton.next_power_of_2(cols), _TILE)
    br = min(triton.next_power_of_2(rows), max(1, _TILE // bc))
    row_tiles, col_tiles = triton.cdiv(rows, br), triton.cdiv(cols, bc)
    mode = {"none": 0, "expected": 1, "batch": 2}[scale]
    factor = 0.0
    if scale == "expected":  # rounded to float32 here, as the torch path's tensor: exact below
        factor = float(torch.tensor(spec.expected_scale(cal), dtype=torch.float32))
    _apply_kernel[(groups * row_tiles * col_tiles,)](
        src, keep, out, ones, rows, cols, size, c_mask * size, row_tiles, col_tiles,
        keep.numel(), factor, CHANNELS_LAST=channels_last, PER_CHANNEL=per_channel, MODE=mode,
        IS_BF16=x.dtype == torch.bfloat16, BR=br, BC=bc, enable_fp_fusion=False,
    )
    return out
