"""Fused CPU kernels written with numba: Philox4x32-10 generated and applied in one parallel pass.

The work is split into fixed chunks of Philox blocks (never into "one chunk per thread"), and
every element's decision depends only on ``(key, field index)``, so the result does not depend on
the number of threads. numba follows ``torch.get_num_threads()`` (capped by numba's own limit).

float32, float64, bfloat16 and float16 run fused: a full-shape noise field (plain dropout and
its backward) generates and applies the mask in one pass; a broadcast field (spatial, timestep,
noise_shape) is drawn once (it is small) and applied in one pass. 16-bit alpha dropout draws the
keep field here and applies it with ``torch_ref``'s ``torch.where`` expression, so both backends
share that arithmetic.

Gaussian noise (stream 1) is the spec's Box-Muller (:func:`dropkit.rng.box_muller`) transcribed
to scalar float64 code with the same bits; :func:`gaussian` generates it and multiplies float32
and float64 inputs in one pass.

Since no bit depends on how the work is split, the serial kernels stand in wherever a parallel
launch cannot run: in a forked child under a threading layer that is not fork-safe, and small
inputs always. Launches are serialized under numba's ``workqueue`` layer (not thread-safe), and
the kernels compile uncached where numba cannot cache (docs/guides/processes.md). The module
does not import under ``NUMBA_DISABLE_JIT`` (the dispatcher then uses ``torch_ref``).
"""

from __future__ import annotations

import math
import os
import threading

import llvmlite.binding as llvm_binding
import numba as nb
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .. import rng
from . import torch_ref

if nb.config.DISABLE_JIT:  # interpreted, the intrinsics below cannot run (and loops would crawl)
    raise ImportError("dropkit's numba kernels need numba's JIT (NUMBA_DISABLE_JIT is set)")

__all__ = ["apply", "box_muller_words", "gaussian", "keep_field", "keep_runs", "normal_field"]


def _njit(**options):
    """``numba.njit(**options)``, without ``cache`` where numba has nowhere to cache (a read-only
    install without a writable user cache directory: numba raises ``RuntimeError: cannot cache
    function ...: no locator available``); the kernels are then compiled in each process."""

    def decorate(fn):
        try:
            return nb.njit(**options)(fn)
        except RuntimeError:
            return nb.njit(**{**options, "cache": False})(fn)

    return decorate

_M0 = np.uint64(rng.PHILOX_M0)
_M1 = np.uint64(rng.PHILOX_M1)
_W0 = np.uint32(rng.PHILOX_W0)
_W1 = np.uint32(rng.PHILOX_W1)
_S32 = np.uint64(32)
_ROUNDS = rng.PHILOX_ROUNDS
_TILE = 1024  # Philox blocks generated per buffer fill (8192 decisions)
_ITEM = 16 * _TILE  # blocks per parallel work item: fixed, never "one per thread"


@_njit(inline="always", cache=True)
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 scalars; written branch-free so LLVM vectorizes the tile loop."""
    for r in range(_ROUNDS):
        if r:
            k0 = np.uint32(k0 + _W0)
            k1 = np.uint32(k1 + _W1)
        p0 = np.uint64(c0) * _M0
        p1 = np.uint64(c2) * _M1
        c0, c1, c2, c3 = (
            np.uint32(p1 >> _S32) ^ c1 ^ k0,
            np.uint32(p1),
            np.uint32(p0 >> _S32) ^ c3 ^ k1,
            np.uint32(p0),
        )
    return c0, c1, c2, c3


@_njit(cache=True)
def _fill_tile(words, first_block, n_blocks, stream, k0, k1):
    """Philox words of blocks ``first_block ...`` into ``words`` (uint32, 4 per block)."""
    zero = np.uint32(0)
    for k in range(n_blocks):
        b = np.uint64(first_block + k)
        r0, r1, r2, r3 = _philox(np.uint32(b), np.uint32(b >> _S32), stream, zero, k0, k1)
        words[4 * k] = r0
        words[4 * k + 1] = r1
        words[4 * k + 2] = r2
        words[4 * k + 3] = r3


# Each parallel work item covers a fixed range of blocks (or rows); inside it, tiles of _TILE
# blocks are generated into a small buffer and applied. Work that fits in one item runs serially
# (no parallel launch). The innermost loops are tiny functions of their own, one per case, that
# index through slices: LLVM vectorizes those, but not x[i0 + j] indexing nor a loop that sits
# next to other branches (measured: 1.5x slower for spatial rows). In place, a tile is read from
# a private copy, since aliased slices defeat vectorization too. 16-bit floats are handled as
# uint16 bits: each element is widened to float32 (a bit cast, or F16C for float16), multiplied,
# and rounded back to nearest even, as torch's 16-bit arithmetic does (NaN payloads unspecified).


@_njit(cache=True)
def _select(xs, os_, keep, tt, scale, fill):
    for j in range(xs.size):
        os_[j] = xs[j] * scale if keep[j] >= tt else fill


@_njit(cache=True)
def _select_shift(xs, os_, keep, tt, scale, shift, fill):
    for j in range(xs.size):
        os_[j] = (xs[j] * scale + shift) if keep[j] >= tt else fill


@_njit(cache=True)
def _scale(xs, os_, scale):
    for j in range(xs.size):
        os_[j] = xs[j] * scale


@_njit(cache=True)
def _scale_shift(xs, os_, scale, shift):
    for j in range(xs.size):
        os_[j] = xs[j] * scale + shift


@_njit(inline="always", cache=True)
def _apply_lanes(xs, os_, lanes, tt, scale, shift, fill):
    if shift != 0:
        _select_shift(xs, os_, lanes, tt, scale, shift, fill)
    else:
        _select(xs, os_, lanes, tt, scale, fill)


@_njit(inline="always", cache=True)
def _apply_row(xs, os_, keep, shared, scale, shift, fill):
    """One row: ``keep`` is the row's field slice (one element when ``shared``)."""
    if shared and not keep[0]:
        os_[:] = fill
    elif shared and shift != 0:
        _scale_shift(xs, os_, scale, shift)
    elif shared:
        _scale(xs, os_, scale)
    elif shift != 0:
        _select_shift(xs, os_, keep, np.uint8(1), scale, shift, fill)
    else:
        _select(xs, os_, keep, np.uint8(1), scale, fill)


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _f32_to_bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _f32_from_f16_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _f16_bits_from_f32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@_njit(inline="always", cache=True)
def _half_mul(h, scale, f16):
    """16-bit float bits ``h`` (float16 if ``f16`` else bfloat16) times a float32 ``scale``,
    rounded to nearest even, as bits. float16 uses LLVM's half conversions (F16C)."""
    if f16:
        return _f16_bits_from_f32(_f32_from_f16_bits(h) * scale)
    b = _f32_to_bits(_f32_from_bits(np.uint32(h) << np.uint32(16)) * scale)
    rounded = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> 16)
    return np.uint16(0x7FC0) if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded


@_njit(cache=True)
def _select_half(xs, os_, keep, tt, scale, fill, f16):
    for j in range(xs.size):
        os_[j] = _half_mul(xs[j], scale, f16) if keep[j] >= tt else fill


@_njit(cache=True)
def _scale_half(xs, os_, scale, f16):
    for j in range(xs.size):
        os_[j] = _half_mul(xs[j], scale, f16)


@_njit(inline="always", cache=True)
def _apply_row_half(xs, os_, keep, shared, scale, fill, f16):
    if shared and not keep[0]:
        os_[:] = fill
    elif shared:
        _scale_half(xs, os_, scale, f16)
    else:
        _select_half(xs, os_, keep, np.uint8(1), scale, fill, f16)


@_njit(cache=True)
def _fused_range(x, out, b_start, b_stop, k0, k1, tt, scale, shift, fill, inplace):
    n = x.size
    words = np.empty(_TILE * 4, dtype=np.uint32)
    lanes = words.view(np.uint16)  # little-endian: lane 2k is the low half of word k
    for c in range((b_stop - b_start + _TILE - 1) // _TILE):
        first = b_start + c * _TILE
        _fill_tile(words, first, min(_TILE, b_stop - first), np.uint32(0), k0, k1)
        i0 = first * 8
        m = min(_TILE * 8, n - i0)
        xs = x[i0:i0 + m].copy() if inplace else x[i0:i0 + m]
        _apply_lanes(xs, out[i0:i0 + m], lanes[:m], tt, scale, shift, fill)


@_njit(cache=True)
def _fused_range_half(x, out, b_start, b_stop, k0, k1, tt, scale, shift, fill, inplace, f16):
    """:func:`_fused_range` on 16-bit float bits (``shift`` must be 0; ``fill`` is bits)."""
    n = x.size
    words = np.empty(_TILE * 4, dtype=np.uint32)
    lanes = words.view(np.uint16)
    for c in range((b_stop - b_start + _TILE - 1) // _TILE):
        first = b_start + c * _TILE
        _fill_tile(words, first, min(_TILE, b_stop - first), np.uint32(0), k0, k1)
        i0 = first * 8
        m = min(_TILE * 8, n - i0)
        xs = x[i0:i0 + m].copy() if inplace else x[i0:i0 + m]
        _select_half(xs, out[i0:i0 + m], lanes[:m], tt, scale, fill, f16)


@_njit(parallel=True, cache=True)
def _fused(x, out, k0, k1, tt, scale, shift, fill, inplace):
    """out[i] = (x[i] * scale [+ shift]) if u_i >= t else fill; flat contiguous float32/64."""
    n_blocks = (x.size + 7) // 8
    for c in nb.prange((n_blocks + _ITEM - 1) // _ITEM):
        start = np.int64(c) * _ITEM  # prange indices are unsigned; keep block math in int64
        stop = min(start + _ITEM, n_blocks)
        _fused_range(x, out, start, stop, k0, k1, tt, scale, shift, fill, inplace)


@_njit(parallel=True, cache=True)
def _fused_half(x, out, k0, k1, tt, scale, shift, fill, inplace, f16):
    """:func:`_fused` for float16/bfloat16 data held as uint16."""
    n_blocks = (x.size + 7) // 8
    for c in nb.prange((n_blocks + _ITEM - 1) // _ITEM):
        start = np.int64(c) * _ITEM
        stop = min(start + _ITEM, n_blocks)
        _fused_range_half(x, out, start, stop, k0, k1, tt, scale, shift, fill, inplace, f16)


@_njit(cache=True)
def _keep_range(out, b_start, b_stop, k0, k1, tt):
    n = out.size
    words = np.empty(_TILE * 4, dtype=np.uint32)
    lanes = words.view(np.uint16)
    for c in range((b_stop - b_start + _TILE - 1) // _TILE):
        first = b_start + c * _TILE
        _fill_tile(words, first, min(_TILE, b_stop - first), np.uint32(0), k0, k1)
        i0 = first * 8
        m = min(_TILE * 8, n - i0)
        os_ = out[i0:i0 + m]
        for j in range(m):
            os_[j] = lanes[j] >= tt


@_njit(parallel=True, cache=True)
def _keep(out, k0, k1, tt):
    """out[i] = u_i >= t, for a flat field (uint8)."""
    n_blocks = (out.size + 7) // 8
    for c in nb.prange((n_blocks + _ITEM - 1) // _ITEM):
        start = np.int64(c) * _ITEM
        _keep_range(out, start, min(start + _ITEM, n_blocks), k0, k1, tt)


@_njit(inline="always", cache=True)
def _row_base(row, sizes, field_strides):
    """Field offset of the first element of ``row`` (all axes but the last)."""
    base = 0
    rest = row
    for d in range(sizes.size - 2, -1, -1):
        base += (rest % sizes[d]) * field_strides[d]
        rest //= sizes[d]
    return base


@_njit(inline="always", cache=True)
def _run_end(row, r_stop, keep, base, sizes, field_strides, merge):
    """End of the run of rows from ``row`` that share one decision (when ``merge``), so that
    spatial dropout scales or fills many rows per inner loop; otherwise ``row + 1``."""
    stop = row + 1
    if merge:
        while stop < r_stop and keep[_row_base(stop, sizes, field_strides)] == keep[base]:
            stop += 1
    return stop


@_njit(cache=True)
def _broadcast_range(x, out, keep, sizes, field_strides, r_start, r_stop, scale, shift, fill,
                     inplace):
    """Rows ``r_start ... r_stop - 1`` of :func:`_broadcast`."""
    row_len = sizes[-1]
    step = field_strides[-1]  # the field's stride along a row: 0 (shared), 1 or more
    shared = step == 0
    k_len = 1 if shared else row_len
    row = r_start
    while row < r_stop:
        base = _row_base(row, sizes, field_strides)
        stop = _run_end(row, r_stop, keep, base, sizes, field_strides, shared and not inplace)
        i0, i1 = row * row_len, stop * row_len
        xs = x[i0:i1].copy() if inplace else x[i0:i1]
        if step > 1:  # the field is not row-major in memory order (channels_last, ...)
            ks = keep[base:base + step * (row_len - 1) + 1:step]
            _apply_row(xs, out[i0:i1], ks, False, scale, shift, fill)
        else:
            _apply_row(xs, out[i0:i1], keep[base:base + k_len], shared, scale, shift, fill)
        row = stop


@_njit(cache=True)
def _broadcast_range_half(x, out, keep, sizes, field_strides, r_start, r_stop, scale, shift,
                          fill, inplace, f16):
    """:func:`_broadcast_range` on 16-bit float bits (``shift`` must be 0; ``fill`` is bits)."""
    row_len = sizes[-1]
    step = field_strides[-1]  # the field's stride along a row: 0 (shared), 1 or more
    shared = step == 0
    k_len = 1 if shared else row_len
    row = r_start
    while row < r_stop:
        base = _row_base(row, sizes, field_strides)
        stop = _run_end(row, r_stop, keep, base, sizes, field_strides, shared and not inplace)
        i0, i1 = row * row_len, stop * row_len
        xs = x[i0:i1].copy() if inplace else x[i0:i1]
        if step > 1:  # the field is not row-major in memory order (channels_last, ...)
            ks = keep[base:base + step * (row_len - 1) + 1:step]
            _apply_row_half(xs, out[i0:i1], ks, False, scale, fill, f16)
        else:
            _apply_row_half(xs, out[i0:i1], keep[base:base + k_len], shared, scale, fill, f16)
        row = stop


@_njit(parallel=True, cache=True)
def _broadcast(x, out, keep, sizes, field_strides, rows_per_item, scale, shift, fill, inplace):
    """Apply a keep field broadcast over x: both flattened, x viewed with shape ``sizes``.

    ``field_strides[d]`` is the field's stride of axis d (0 where the field is broadcast). Rows
    are the last axis; each row finds its field offset once, and a row that shares one decision
    (spatial dropout) is a plain scaled copy or a fill.
    """
    n_rows = x.size // sizes[-1]
    for c in nb.prange((n_rows + rows_per_item - 1) // rows_per_item):
        start = np.int64(c) * rows_per_item
        stop = min(start + rows_per_item, n_rows)
        _broadcast_range(x, out, keep, sizes, field_strides, start, stop, scale, shift, fill,
                         inplace)


@_njit(parallel=True, cache=True)
def _broadcast_half(x, out, keep, sizes, field_strides, rows_per_item, scale, shift, fill,
                    inplace, f16):
    """:func:`_broadcast` for float16/bfloat16 data held as uint16."""
    n_rows = x.size // sizes[-1]
    for c in nb.prange((n_rows + rows_per_item - 1) // rows_per_item):
        start = np.int64(c) * rows_per_item
        stop = min(start + rows_per_item, n_rows)
        _broadcast_range_half(x, out, keep, sizes, field_strides, start, stop, scale, shift,
                              fill, inplace, f16)


# A full field in a memory order that is not row-major (channels_last, channels_last_3d, ...):
# collapsed in memory order, x is (rows..., A, B) with the field's stride 1 along A (w, or h*w
# merged) and ``step`` along the innermost axis B (channels). A tile is ``ta`` positions along A
# times ``tb`` channels (all of them, up to _T_B): each channel's ``ta`` decisions are a run of
# consecutive field elements, so the tile's Philox blocks (one more per run for a run not
# aligned to 8) are generated in one loop, their lanes transposed into a buffer in memory order,
# and the tile, contiguous in memory when it holds every channel, is applied by the loops of the
# fused pass. A work item is one (row, A-tile) pair; the tile shape depends only on B.
_T_DECISIONS = 8192  # decisions per tile (as _TILE * 8), at least _T_A_MIN per channel
_T_B = 256  # channels per tile, at most
_T_A_MIN, _T_A_MAX = 64, 1024  # positions along A per tile


def _tile_shape(b_len: int) -> tuple[int, int]:
    """``(ta, tb)`` of :func:`_transposed`'s tiles for B = ``b_len`` (``ta`` a multiple of 8)."""
    tb = min(b_len, _T_B)
    return min(_T_A_MAX, max(_T_A_MIN, _T_DECISIONS // tb // 8 * 8)), tb


@_njit(inline="always", cache=True)
def _tile_keep(keep_t, words, lanes, blocks, lane0, base, step, a0, ta, b0, tb, k0, k1):
    """``keep_t[a * tb + b] = u_(base + (b0 + b) * step + a0 + a)`` for ``a < ta, b < tb``:
    the lanes of one tile in memory order; ``lanes`` is ``words`` seen as uint16, ``blocks``
    holds the block numbers' low and high words (uint32 loads keep the loop 8 wide)."""
    n_blocks = 0
    for b in range(tb):
        start = base + (b0 + b) * step + a0
        first = start // 8
        count = (start + ta - 1) // 8 - first + 1
        lane0[b] = np.uint64(n_blocks * 8 + start - first * 8)
        for k in range(count):
            blk = np.uint64(first + k)
            blocks[0, n_blocks + k] = np.uint32(blk)
            blocks[1, n_blocks + k] = np.uint32(blk >> _S32)
        n_blocks += count
    zero = np.uint32(0)
    lo, hi = blocks[0], blocks[1]
    for k in range(n_blocks):
        r0, r1, r2, r3 = _philox(lo[k], hi[k], zero, zero, k0, k1)
        words[4 * k] = r0
        words[4 * k + 1] = r1
        words[4 * k + 2] = r2
        words[4 * k + 3] = r3
    for a in range(ta):
        _gather_row(keep_t[a * tb:(a + 1) * tb], lanes, lane0, np.uint64(a))


@_njit(cache=True)
def _gather_row(dst, lanes, lane0, a):
    """``dst[b] = lanes[lane0[b] + a]``: one memory row of a tile (unsigned indices: no
    negative-index wrap, 3x faster than the same loop inline)."""
    for b in range(dst.size):
        dst[b] = lanes[lane0[b] + a]


@_njit(inline="always", cache=True)
def _tile_buffers(ta, tb, dtype):
    """Scratch of one tile: Philox words, their block numbers, run offsets, lanes, a copy of x."""
    words = np.empty(tb * (ta // 8 + 1) * 4, dtype=np.uint32)
    blocks = np.empty((2, tb * (ta // 8 + 1)), dtype=np.uint32)
    return (words, words.view(np.uint16), blocks, np.empty(tb, dtype=np.uint64),
            np.empty(ta * tb, dtype=np.uint16), np.empty(ta * tb, dtype=dtype))


@_njit(cache=True)
def _transposed_range(x, out, sizes, field_strides, ta, tb, i_start, i_stop, k0, k1, tt, scale,
                      shift, fill, inplace):
    """Work items (row, A-tile) ``i_start ... i_stop - 1`` of :func:`_transposed`."""
    a_len, b_len, step = sizes[-2], sizes[-1], field_strides[-1]
    a_tiles = (a_len + ta - 1) // ta
    words, lanes, blocks, lane0, keep_t, scratch = _tile_buffers(ta, tb, x.dtype)
    for item in range(i_start, i_stop):
        row, a0 = item // a_tiles, (item % a_tiles) * ta
        m_a = min(ta, a_len - a0)
        base = _row_base(row, sizes[:-1], field_strides[:-1])
        for b0 in range(0, b_len, tb):
            m_b = min(tb, b_len - b0)
            _tile_keep(keep_t, words, lanes, blocks, lane0, base, step, a0, m_a, b0, m_b, k0, k1)
            i0 = (row * a_len + a0) * b_len + b0
            rows, cols = (1, m_a * m_b) if m_b == b_len else (m_a, m_b)  # contiguous: one run
            for r in range(rows):
                j0 = i0 + r * b_len
                if inplace:
                    scratch[:cols] = x[j0:j0 + cols]
                xs = scratch[:cols] if inplace else x[j0:j0 + cols]
                _apply_lanes(xs, out[j0:j0 + cols], keep_t[r * cols:(r + 1) * cols], tt, scale,
                             shift, fill)


@_njit(cache=True)
def _transposed_range_half(x, out, sizes, field_strides, ta, tb, i_start, i_stop, k0, k1, tt,
                           scale, shift, fill, inplace, f16):
    """:func:`_transposed_range` on 16-bit float bits (``shift`` must be 0; ``fill`` is bits)."""
    a_len, b_len, step = sizes[-2], sizes[-1], field_strides[-1]
    a_tiles = (a_len + ta - 1) // ta
    words, lanes, blocks, lane0, keep_t, scratch = _tile_buffers(ta, tb, x.dtype)
    for item in range(i_start, i_stop):
        row, a0 = item // a_tiles, (item % a_tiles) * ta
        m_a = min(ta, a_len - a0)
        base = _row_base(row, sizes[:-1], field_strides[:-1])
        for b0 in range(0, b_len, tb):
            m_b = min(tb, b_len - b0)
            _tile_keep(keep_t, words, lanes, blocks, lane0, base, step, a0, m_a, b0, m_b, k0, k1)
            i0 = (row * a_len + a0) * b_len + b0
            rows, cols = (1, m_a * m_b) if m_b == b_len else (m_a, m_b)  # contiguous: one run
            for r in range(rows):
                j0 = i0 + r * b_len
                if inplace:
                    scratch[:cols] = x[j0:j0 + cols]
                xs = scratch[:cols] if inplace else x[j0:j0 + cols]
                _select_half(xs, out[j0:j0 + cols], keep_t[r * cols:(r + 1) * cols], tt, scale,
                             fill, f16)


@_njit(parallel=True, cache=True)
def _transposed(x, out, sizes, field_strides, ta, tb, items_per_task, k0, k1, tt, scale, shift,
                fill, inplace):
    """out = where(u >= t, x * scale [+ shift], fill) for a full field read through its strides:
    x (flat, float32/64) viewed with shape ``sizes``, ``field_strides[-2] == 1``."""
    n_items = x.size // (sizes[-2] * sizes[-1]) * ((sizes[-2] + ta - 1) // ta)
    for c in nb.prange((n_items + items_per_task - 1) // items_per_task):
        start = np.int64(c) * items_per_task
        _transposed_range(x, out, sizes, field_strides, ta, tb, start,
                          min(start + items_per_task, n_items), k0, k1, tt, scale, shift, fill,
                          inplace)


@_njit(parallel=True, cache=True)
def _transposed_half(x, out, sizes, field_strides, ta, tb, items_per_task, k0, k1, tt, scale,
                     shift, fill, inplace, f16):
    """:func:`_transposed` for float16/bfloat16 data held as uint16."""
    n_items = x.size // (sizes[-2] * sizes[-1]) * ((sizes[-2] + ta - 1) // ta)
    for c in nb.prange((n_items + items_per_task - 1) // items_per_task):
        start = np.int64(c) * items_per_task
        _transposed_range_half(x, out, sizes, field_strides, ta, tb, start,
                               min(start + items_per_task, n_items), k0, k1, tt, scale, shift,
                               fill, inplace, f16)


_synced = threading.local()  # numba's thread count is per calling thread


def _sync_threads() -> None:
    """Run numba with torch's thread count. Launching numba's OpenMP pool (the first call)
    resets the process' OpenMP thread count, which torch reads, so torch's is restored. Done
    again only when torch's count changed (a few microseconds a call otherwise)."""
    wanted = torch.get_num_threads()
    if getattr(_synced, "threads", None) == wanted:
        return
    nb.set_num_threads(max(1, min(wanted, nb.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    _synced.threads = wanted


# numba's threading layers differ in what they survive (numba.threading_layer() names the one in
# use). "omp" with GNU OpenMP kills a forked child that launches a parallel kernel once the
# parent has launched one; "workqueue" aborts the process when two threads launch at once. So a
# forked child runs the serial kernels unless the layer is fork-safe, and launches take a lock
# under workqueue. Neither changes a bit: no result depends on how the work is split.
_FORK_SAFE_LAYERS = ("tbb", "workqueue")
_parallel_ok = True  # False in a forked child whose threading layer is not fork-safe
_launch_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _parallel_ok, _launch_lock
    try:
        layer = nb.threading_layer()
    except ValueError:  # no parallel launch yet: the layer numba would load, if named
        layer = nb.config.THREADING_LAYER
    _parallel_ok = _parallel_ok and layer in _FORK_SAFE_LAYERS
    _launch_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def _parallel(work: int, per_item: int) -> bool:
    """Whether ``work`` units (``per_item`` per parallel work item) get a parallel launch:
    more than one item, in a process where parallel kernels may run (see above)."""
    return work > per_item and _parallel_ok


def _launch(kernel, *args) -> None:
    """Run a parallel kernel with torch's thread count (serialized under numba's workqueue
    threading layer, which is not thread-safe)."""
    _sync_threads()
    if nb.threading_layer() == "workqueue":
        with _launch_lock:
            kernel(*args)
    else:
        kernel(*args)


def _key32(key: tuple[int, int]) -> tuple[np.uint32, np.uint32]:
    return np.uint32(key[0]), np.uint32(key[1])


def keep_field(key: tuple[int, int], t: int, count: int, device=None) -> torch.Tensor:
    """Boolean keep decisions of field elements ``0 ... count - 1`` (a CPU tensor; ``device``
    is accepted for signature parity with ``torch_ref`` and ignored)."""
    if t >= rng.LANE_RANGE:  # the kernels compare 16-bit lanes: 65536 would wrap to 0
        return torch.zeros(count, dtype=torch.bool)
    out = np.empty(count, dtype=np.uint8)
    n_blocks = (count + 7) // 8
    if _parallel(n_blocks, _ITEM):
        _launch(_keep, out, *_key32(key), np.uint16(t))
    else:
        _keep_range(out, 0, n_blocks, *_key32(key), np.uint16(t))
    return torch.from_numpy(out).view(torch.bool)


# Gaussian noise (stream 1): dropkit.rng.box_muller transcribed operation by operation, in the same
# order, on float64 scalars (numba emits no fast-math flags, so LLVM fuses no multiply-add and
# the bits equal the spec's; the tests compare them bit for bit). The spec's ``where`` selections
# are plain conditionals. Written so that LLVM vectorizes the Box-Muller loop (4x faster): frexp
# by bit operations, not a library call; coefficients as constant tuples, not arrays; NumPy's
# error model, i.e. no ZeroDivisionError check on ``/`` (no divisor here is ever 0).
_LOG_C = rng._LOG_COEF
_SIN_C = rng._SIN_COEF
_COS_C = rng._COS_COEF
_POW2_STEPS = tuple(2.0 ** (2**bit) for bit in range(5))
_GAUSS_ITEM = 4 * _TILE  # Philox blocks (4 normals each) per parallel work item


@intrinsic
def _f64_to_bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


@_njit(inline="always", cache=True)
def _frexp(a):
    """``math.frexp(a)`` by bit operations, exact for every nonzero normal ``a``. Zero (and
    subnormals, inf, NaN) give another pair; the callers never use it: u1 is in [2**-32, 1], and
    :func:`_sqrt` returns 0 for ``a == 0`` as the spec's ``where`` does."""
    b = _f64_to_bits(a)
    e = np.int64((b >> np.uint64(52)) & np.uint64(0x7FF)) - 1022
    return _f64_from_bits((b & np.uint64(0x800FFFFFFFFFFFFF)) | np.uint64(1022 << 52)), e


@_njit(inline="always", cache=True)
def _horner(x, coef):
    acc = coef[len(coef) - 1]  # the spec's ``x * 0.0 + coef[-1]``: x is finite and >= 0
    for k in range(len(coef) - 2, -1, -1):
        acc = acc * x + coef[k]
    return acc


@_njit(inline="always", cache=True)
def _pow2(h):
    neg = h < 0
    habs = -h if neg else h
    out = 1.0
    for bit in range(5):
        step = _POW2_STEPS[bit]
        factor = 1.0 / step if neg else step
        out = out * (factor if (habs & (1 << bit)) != 0 else 1.0)
    return out


@_njit(inline="always", cache=True)
def _sqrt(a):
    m, e = _frexp(a)
    if (e & 1) != 0:
        m = m * 2.0
        e = e - 1
    g = 0.5 + 0.5 * m
    for _ in range(rng._NEWTON_STEPS):
        g = 0.5 * (g + m / g)
    return 0.0 if a == 0.0 else g * _pow2(e // 2)


@_njit(inline="always", cache=True)
def _box_muller(ra, rb):
    """:func:`dropkit.rng.box_muller` on one pair of word values (float64)."""
    u1 = (ra + 1.0) * 2.0**-32
    m, ei = _frexp(u1)
    if m < rng._SQRT_HALF:
        m = m * 2.0
        ei = ei - 1
    e = float(ei)  # the spec's ``m * 0.0 + e``: m > 0, so this is e exactly
    s = (m - 1.0) / (m + 1.0)
    log_u1 = e * rng._LN2 + s * _horner(s * s, _LOG_C)
    radius = _sqrt(-2.0 * log_u1)
    v = rb * 2.0**-30
    q = math.floor(v)
    f = v - q
    flip = f > 0.5
    if flip:
        f = 1.0 - f
    t = f * rng._HALF_PI
    t2 = t * t
    sin_t, cos_t = t * _horner(t2, _SIN_C), _horner(t2, _COS_C)
    sin_r, cos_r = (cos_t, sin_t) if flip else (sin_t, cos_t)
    if q == 0:
        cos_a, sin_a = cos_r, sin_r
    elif q == 1:
        cos_a, sin_a = -sin_r, cos_r
    elif q == 2:
        cos_a, sin_a = -cos_r, -sin_r
    else:
        cos_a, sin_a = sin_r, -cos_r
    return radius * cos_a, radius * sin_a


@_njit(cache=True, error_model="numpy")
def box_muller_words(ra, rb):
    """Box-Muller of word pairs ``ra[i], rb[i]`` (uint32 arrays): ``(z_even, z_odd)`` float64.
    Exposed so tests can feed chosen words (0, 0xFFFFFFFF, ...) to the kernel's transform."""
    z0 = np.empty(ra.size, dtype=np.float64)
    z1 = np.empty(ra.size, dtype=np.float64)
    for i in range(ra.size):
        z0[i], z1[i] = _box_muller(np.float64(ra[i]), np.float64(rb[i]))
    return z0, z1


@_njit(inline="always", cache=True)
def _fill_normals(zs, words, first_block, n_blocks, k0, k1):
    """Normals ``4 * first_block ...`` of stream 1 into ``zs`` (float64, 4 per block); ``words``
    is a uint32 scratch buffer as long as ``zs``. Words first, then one simple loop over pairs."""
    _fill_tile(words, first_block, n_blocks, np.uint32(rng.STREAM_NORMAL), k0, k1)
    for j in range(2 * n_blocks):
        zs[2 * j], zs[2 * j + 1] = _box_muller(np.float64(words[2 * j]),
                                               np.float64(words[2 * j + 1]))


@_njit(cache=True, error_model="numpy")
def _normal_range(out, b_start, b_stop, k0, k1):
    """Normals of blocks ``b_start ... b_stop - 1`` into ``out`` (a multiple of 4 long)."""
    words = np.empty(_TILE * 4, dtype=np.uint32)
    for c in range((b_stop - b_start + _TILE - 1) // _TILE):
        first = b_start + c * _TILE
        nb_ = min(_TILE, b_stop - first)
        _fill_normals(out[4 * first:4 * (first + nb_)], words, first, nb_, k0, k1)


@_njit(parallel=True, cache=True, error_model="numpy")
def _normal(out, k0, k1):
    n_blocks = out.size // 4
    for c in nb.prange((n_blocks + _GAUSS_ITEM - 1) // _GAUSS_ITEM):
        start = np.int64(c) * _GAUSS_ITEM
        _normal_range(out, start, min(start + _GAUSS_ITEM, n_blocks), k0, k1)


@_njit(cache=True, error_model="numpy")
def _gauss_range(x, out, b_start, b_stop, k0, k1, std):
    """``out = x * ct(1.0 + std * z)`` for blocks ``b_start ... b_stop - 1``: the factor is
    computed in float64 and rounded to x's dtype (the compute dtype), then multiplied in it."""
    n = x.size
    zs = np.empty(_TILE * 4, dtype=np.float64)
    words = np.empty(_TILE * 4, dtype=np.uint32)
    fac = np.empty(_TILE * 4, dtype=x.dtype)
    for c in range((b_stop - b_start + _TILE - 1) // _TILE):
        first = b_start + c * _TILE
        _fill_normals(zs, words, first, min(_TILE, b_stop - first), k0, k1)
        i0 = first * 4
        m = min(_TILE * 4, n - i0)
        for j in range(m):
            fac[j] = 1.0 + std * zs[j]
        xs, os_ = x[i0:i0 + m], out[i0:i0 + m]
        for j in range(m):
            os_[j] = xs[j] * fac[j]


@_njit(parallel=True, cache=True, error_model="numpy")
def _gauss(x, out, k0, k1, std):
    n_blocks = (x.size + 3) // 4
    for c in nb.prange((n_blocks + _GAUSS_ITEM - 1) // _GAUSS_ITEM):
        start = np.int64(c) * _GAUSS_ITEM
        _gauss_range(x, out, start, min(start + _GAUSS_ITEM, n_blocks), k0, k1, std)


def normal_field(key: tuple[int, int], count: int, device=None) -> torch.Tensor:
    """Standard normal float64 noise of field elements ``0 ... count - 1`` (stream 1, the spec's
    Box-Muller: the same bits as ``torch_ref.normal_field``); ``device`` is ignored."""
    n_blocks = -(-count // rng.NORMALS_PER_BLOCK)
    out = np.empty(4 * n_blocks, dtype=np.float64)
    if _parallel(n_blocks, _GAUSS_ITEM):
        _launch(_normal, out, *_key32(key))
    else:
        _normal_range(out, 0, n_blocks, *_key32(key))
    return torch.from_numpy(out[:count])


def gaussian(x: torch.Tensor, key: tuple[int, int], std: float) -> torch.Tensor | None:
    """``x * (1 + std * z)`` fused, for float32 and float64 ``x``: the factor is computed in
    float64, rounded to x's dtype and multiplied in it, as ``dropkit::gaussian_mul``'s reference
    expression does. Returns a new tensor in x's memory format (computed in row-major order,
    then copied when that format is another), or ``None`` for other dtypes (the caller then
    uses the reference expression with :func:`normal_field`)."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    src = x.contiguous()
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    n = src.numel()
    if n == 0:
        return out
    xs, os_ = _flat_numpy(src, None), _flat_numpy(out, None)
    k0, k1 = _key32(key)
    n_blocks = (n + 3) // 4
    if _parallel(n_blocks, _GAUSS_ITEM):
        _launch(_gauss, xs, os_, k0, k1, float(std))
    else:
        _gauss_range(xs, os_, 0, n_blocks, k0, k1, float(std))
    return torch_ref.like_memory_format(out, x)


# float16 uses LLVM's half <-> float conversions, which need the F16C instructions to stay inline.
_HAS_F16C = "f16c" in llvm_binding.get_host_cpu_features().flatten()

# dtype -> (NumPy view, compute dtype, extra args, kernels: fused, fused serial, broadcast,
# broadcast serial, transposed, transposed serial)
_FLOAT_KERNELS = (_fused, _fused_range, _broadcast, _broadcast_range, _transposed,
                  _transposed_range)
_HALF_KERNELS = (_fused_half, _fused_range_half, _broadcast_half, _broadcast_range_half,
                 _transposed_half, _transposed_range_half)
_KERNELS = {
    torch.float32: (np.float32, np.float32, (), *_FLOAT_KERNELS),
    torch.float64: (np.float64, np.float64, (), *_FLOAT_KERNELS),
    torch.bfloat16: (np.uint16, np.float32, (False,), *_HALF_KERNELS),
}
if _HAS_F16C:
    _KERNELS[torch.float16] = (np.uint16, np.float32, (True,), *_HALF_KERNELS)


def _flat_numpy(t: torch.Tensor, view_dtype) -> np.ndarray:
    """A flat NumPy view of a contiguous tensor; 16-bit floats are seen as uint16 bits."""
    flat = t.detach().reshape(-1)
    if view_dtype is np.uint16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()


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
    """``where(keep, x * scale + shift, fill)`` with the keep field broadcast from ``noise_shape``.

    Same contract and bits as :func:`dropkit.kernels.torch_ref.apply`; the result has x's memory
    format (``torch.empty_like(x)``'s layout); ``out`` (dense, x's layout) may alias ``x`` for
    in-place use. float32, float64, bfloat16 and (with F16C) float16 run fused here; 16-bit
    alpha dropout (a shift, rounded twice) draws the keep field here and shares ``torch_ref``'s
    arithmetic. The kernels walk memory in its physical order: for a row-major full field that
    is the fused pass; a full field whose memory order has w (the field's stride-1 axis) second
    innermost (channels_last, channels_last_3d) is the tiled pass (:func:`_transposed`); any
    other layout or a broadcast field is the broadcast pass, whose rows read the logical field
    through its strides (``torch_ref.collapse`` with the memory order).
    """
    kernels = _KERNELS.get(x.dtype)
    field_size = math.prod(noise_shape)
    if kernels is None or t >= rng.LANE_RANGE or (kernels[0] is np.uint16 and shift != 0.0):
        keep = keep_field(key, t, field_size)
        return torch_ref.apply_keep(x, keep.reshape(noise_shape), scale, shift, fill, out=out)
    view_dtype, compute, extra, fused, fused_serial, broadcast, broadcast_serial = kernels[:7]
    if out is None:
        out = torch.empty_like(x)  # x's memory format (torch.preserve_format)
    order = torch_ref.physical_order(out)
    if order is None:
        src, dst = x.contiguous(), out
    else:  # the same kernels on the memory-order views (both contiguous)
        src, dst = x.permute(order).contiguous(), out.permute(order)
    n = src.numel()
    if n == 0:
        return out
    xs, os_ = _flat_numpy(src, view_dtype), _flat_numpy(dst, view_dtype)
    if view_dtype is np.uint16:  # 16-bit floats: the fill value is passed as its bits
        fill_arg = np.uint16(torch.tensor(fill, dtype=x.dtype).view(torch.int16).item() & 0xFFFF)
    else:
        fill_arg = compute(fill)
    inplace = xs.ctypes.data == os_.ctypes.data
    consts = (compute(scale), compute(shift), fill_arg, inplace, *extra)
    parallel = _parallel(n, _ITEM * 8)
    if order is None and tuple(noise_shape) == tuple(x.shape):
        k0, k1 = _key32(key)
        if parallel:
            _launch(fused, xs, os_, k0, k1, np.uint16(t), *consts)
        else:
            fused_serial(xs, os_, 0, (n + 7) // 8, k0, k1, np.uint16(t), *consts)
        return out
    sizes, strides = (np.array(v, dtype=np.int64)
                      for v in torch_ref.collapse(tuple(x.shape), tuple(noise_shape), order))
    if field_size == n and sizes.size >= 2 and strides[-2] == 1:  # channels_last and the like
        _apply_transposed(kernels[7:], xs, os_, sizes, strides, key, t, consts, parallel)
        return out
    keep = keep_field(key, t, field_size).numpy().view(np.uint8)
    if parallel:
        rows_per_item = max(1, _ITEM * 8 // int(sizes[-1]))
        _launch(broadcast, xs, os_, keep, sizes, strides, rows_per_item, *consts)
    else:
        broadcast_serial(xs, os_, keep, sizes, strides, 0, n // int(sizes[-1]), *consts)
    return out


def _apply_transposed(kernels, xs, os_, sizes, strides, key, t, consts, parallel) -> None:
    """Run the tiled full-field kernel (:func:`_transposed`) on flat memory-order views."""
    transposed, transposed_serial = kernels
    a_len, b_len = int(sizes[-2]), int(sizes[-1])
    ta, tb = _tile_shape(b_len)
    n_items = xs.size // (a_len * b_len) * -(-a_len // ta)
    k0, k1 = _key32(key)
    if parallel:
        items_per_task = max(1, _ITEM * 8 // (ta * b_len))
        _launch(transposed, xs, os_, sizes, strides, ta, tb, items_per_task, k0, k1,
                np.uint16(t), *consts)
    else:
        transposed_serial(xs, os_, sizes, strides, ta, tb, 0, n_items, k0, k1, np.uint16(t),
                          *consts)


@_njit(cache=True)
def _keep_runs_item(out, starts, k0, k1, tt, item, tiles):
    """Work item ``item`` of :func:`_keep_runs`: one tile of blocks of one run."""
    length = out.shape[1]
    r = item // tiles
    start = starts[r]
    first = start // 8 + (item % tiles) * _TILE
    stop_block = (start + length + 7) // 8
    if first < stop_block:
        n_blocks = min(_TILE, stop_block - first)
        words = np.empty(_TILE * 4, dtype=np.uint32)
        lanes = words.view(np.uint16)
        _fill_tile(words, first, n_blocks, np.uint32(0), k0, k1)
        lo = max(first * 8, start)
        hi = min((first + n_blocks) * 8, start + length)
        for i in range(lo, hi):
            out[r, i - start] = lanes[i - first * 8] >= tt


@_njit(parallel=True, cache=True)
def _keep_runs(out, starts, k0, k1, tt):
    """out[r, j] = u_(starts[r] + j) >= t: runs of the stream-0 field, in tiles of blocks."""
    tiles = (out.shape[1] + 7) // (8 * _TILE) + 2  # enough tiles for any alignment of a run
    for item in nb.prange(out.shape[0] * tiles):
        _keep_runs_item(out, starts, k0, k1, tt, np.int64(item), tiles)


@_njit(cache=True)
def _keep_runs_serial(out, starts, k0, k1, tt):
    tiles = (out.shape[1] + 7) // (8 * _TILE) + 2
    for item in range(out.shape[0] * tiles):
        _keep_runs_item(out, starts, k0, k1, tt, np.int64(item), tiles)


def keep_runs(key: tuple[int, int], t: int, starts: torch.Tensor, length: int,
              device=None) -> torch.Tensor:
    """:func:`dropkit.kernels.torch_ref.keep_runs` (same bits): runs of the keep field, a CPU
    bool tensor of shape ``(len(starts), length)``."""
    n_runs = len(starts)
    if t >= rng.LANE_RANGE:
        return torch.zeros(n_runs, length, dtype=torch.bool)
    out = np.empty((n_runs, length), dtype=np.uint8)
    if out.size:
        args = (out, starts.to(torch.int64).numpy(), *_key32(key), np.uint16(t))
        if _parallel(out.size, _ITEM * 8):
            _launch(_keep_runs, *args)
        else:
            _keep_runs_serial(*args)
    return torch.from_numpy(out).view(torch.bool)
