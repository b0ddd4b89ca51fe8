"""DropBlock's CPU kernels, written with numba: seed field, block mask and apply.

Same bits as the torch path of :mod:`dropkit._drop_block` and the NumPy reference
(``docs/dropblock.md``). Work is split by mask plane (one ``(n, c)`` pair, or one sample when the
mask is shared): a plane's seeds are a contiguous run of the field, so every plane is computed
independently from ``(key, plane index)`` and the result does not depend on the thread count.

1. ``_keep_planes`` (parallel over fixed groups of planes): Philox stream 2 gives the plane's
   seed grid; the block mask is dilated one axis at a time in O(length) per line (a unit ``u``
   is covered iff the last seed at or before ``min(u, V - 1)`` is at ``>= u - b + 1``, which is
   the prefix-sum rule of the spec), so the cost does not depend on the block size. Writes the
   uint8 keep mask and each plane's count of kept units (for ``scale="batch"``).
2. ``_apply_first`` / ``_apply_last`` (float32/float64): ``where(keep, x * scale, 0)`` over
   channels-first or channels-last data in one parallel pass. float16 and bfloat16 apply the
   mask with the torch path's ``torch.where`` expression instead.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from .. import _drop_block_numpy as spec
from .numba_cpu import _fill_tile, _launch, _njit, _parallel

__all__ = ["apply", "keep_mask"]

_ITEM = 1 << 16  # mask units per parallel work item (at least one plane)


@_njit(cache=True)
def _seeds(buf, words, first, count, k0, k1, t):
    """buf[j] = 1 iff field element ``first + j`` is a seed (its word < t), j < count.
    ``words`` holds at least ``4 * (count // 4 + 2)`` uint32."""
    b_first = first >> 2
    n_blocks = ((first + count - 1) >> 2) - b_first + 1
    _fill_tile(words, b_first, n_blocks, np.uint32(spec.STREAM_DROPBLOCK), k0, k1)
    ws = words[first - 4 * b_first:first - 4 * b_first + count]
    for j in range(count):
        buf[j] = np.uint8(np.int64(ws[j]) < t)


@_njit(cache=True)
def _dilate_rows(src, dst, rows, n_starts, b):
    """Dilate the last axis: ``src`` (rows, n_starts) into ``dst`` (rows, n_starts + b - 1);
    unit u is covered iff the last seed at or before ``min(u, n_starts - 1)`` is ``> u - b``."""
    length = n_starts + b - 1
    for r in range(rows):
        s0 = r * n_starts
        d0 = r * length
        last = -b  # position of the last seed seen (none yet)
        for u in range(n_starts):
            last = u if src[s0 + u] else last
            dst[d0 + u] = np.uint8(last > u - b)
        for u in range(n_starts, length):
            dst[d0 + u] = np.uint8(last > u - b)


@_njit(cache=True)
def _dilate_mid(src, dst, outer, n_starts, inner, b, last):
    """Dilate the middle axis of ``src`` (outer, n_starts, inner) into ``dst``
    (outer, n_starts + b - 1, inner); the innermost loop runs over ``inner`` (vectorized)."""
    length = n_starts + b - 1
    for o in range(outer):
        s0 = o * n_starts * inner
        d0 = o * length * inner
        last[:inner] = -b
        for u in range(length):
            lim = u - b
            d = dst[d0 + u * inner:d0 + (u + 1) * inner]
            if u < n_starts:
                s = src[s0 + u * inner:s0 + (u + 1) * inner]
                for k in range(inner):
                    last[k] = u if s[k] else last[k]
                    d[k] = np.uint8(last[k] > lim)
            else:
                for k in range(inner):
                    d[k] = np.uint8(last[k] > lim)


@_njit(cache=True)
def _plane(keep, plane, bufs, last, words, lengths, blocks, k0, k1, t):
    """Keep mask of one plane into ``keep`` (a flat slice); returns its count of kept units.
    ``bufs`` is a (3, plane size) uint8 scratch array."""
    l0, l1, l2 = lengths[0], lengths[1], lengths[2]
    b0, b1, b2 = blocks[0], blocks[1], blocks[2]
    v0, v1, v2 = l0 - b0 + 1, l1 - b1 + 1, l2 - b2 + 1
    n_seeds = v0 * v1 * v2
    _seeds(bufs[0], words, plane * n_seeds, n_seeds, k0, k1, t)
    cur = 0  # index of the buffer that holds the current stage
    if b2 > 1:  # (v0, v1, v2) -> (v0, v1, l2)
        _dilate_rows(bufs[0], bufs[1], v0 * v1, v2, b2)
        cur = 1
    if b1 > 1:  # -> (v0, l1, l2)
        nxt = 2 if cur == 1 else 1
        _dilate_mid(bufs[cur], bufs[nxt], v0, v1, l2, b1, last)
        cur = nxt
    if b0 > 1:  # -> (l0, l1, l2)
        nxt = 1 if cur == 0 else 0
        _dilate_mid(bufs[cur], bufs[nxt], 1, v0, l1 * l2, b0, last)
        cur = nxt
    result = bufs[cur]
    kept = 0
    for j in range(keep.size):
        flag = np.uint8(1) - result[j]
        keep[j] = flag
        kept += flag
    return kept


@_njit(cache=True)
def _plane_range(keep, counts, start, stop, lengths, blocks, k0, k1, t):
    size = lengths[0] * lengths[1] * lengths[2]
    bufs = np.empty((3, size), dtype=np.uint8)
    last = np.empty(size, dtype=np.int64)
    n_seeds = (lengths[0] - blocks[0] + 1) * (lengths[1] - blocks[1] + 1) * (
        lengths[2] - blocks[2] + 1)
    words = np.empty(4 * (n_seeds // 4 + 2), dtype=np.uint32)
    for plane in range(start, stop):
        view = keep[plane * size:(plane + 1) * size]
        counts[plane] = _plane(view, plane, bufs, last, words, lengths, blocks, k0, k1, t)


@_njit(parallel=True, cache=True)
def _keep_planes(keep, counts, planes_per_item, lengths, blocks, k0, k1, t):
    n_planes = counts.size
    for item in nb.prange((n_planes + planes_per_item - 1) // planes_per_item):
        start = np.int64(item) * planes_per_item
        _plane_range(keep, counts, start, min(start + planes_per_item, n_planes), lengths,
                     blocks, k0, k1, t)


@_njit(cache=True)
def _select(xs, os_, keep, scale):
    for j in range(xs.size):
        os_[j] = xs[j] * scale if keep[j] else 0


@_njit(cache=True)
def _copy_select(xs, os_, keep):
    for j in range(xs.size):
        os_[j] = xs[j] if keep[j] else 0


@_njit(cache=True)
def _first_range(x, out, keep, channels, shared, size, start, stop, scale, scaled):
    for row in range(start, stop):
        plane = row // channels if shared else row
        xs = x[row * size:(row + 1) * size]
        os_ = out[row * size:(row + 1) * size]
        ks = keep[plane * size:(plane + 1) * size]
        if scaled:
            _select(xs, os_, ks, scale)
        else:
            _copy_select(xs, os_, ks)


@_njit(parallel=True, cache=True)
def _apply_first(x, out, keep, channels, shared, size, per_item, scale, scaled):
    """Channels-first data (rows of ``size`` units, ``channels`` rows per sample)."""
    rows = x.size // size
    for item in nb.prange((rows + per_item - 1) // per_item):
        start = np.int64(item) * per_item
        _first_range(x, out, keep, channels, shared, size, start, min(start + per_item, rows),
                     scale, scaled)


@_njit(cache=True)
def _last_range(x, out, keep, channels, shared, size, start, stop, scale, scaled):
    for pos in range(start, stop):  # pos = n * size + spatial index
        n = pos // size
        s = pos - n * size
        for c in range(channels):
            plane = n if shared else n * channels + c
            j = pos * channels + c
            if keep[plane * size + s]:
                out[j] = x[j] * scale if scaled else x[j]
            else:
                out[j] = 0


@_njit(parallel=True, cache=True)
def _apply_last(x, out, keep, channels, shared, size, per_item, scale, scaled):
    """Channels-last data (``channels`` contiguous units per spatial position)."""
    positions = x.size // channels
    for item in nb.prange((positions + per_item - 1) // per_item):
        start = np.int64(item) * per_item
        _last_range(x, out, keep, channels, shared, size, start,
                    min(start + per_item, positions), scale, scaled)


def _padded(values: tuple[int, ...], fill: int) -> np.ndarray:
    return np.array((fill,) * (3 - len(values)) + tuple(values), dtype=np.int64)


def keep_mask(
    key: tuple[int, int], cal, n_planes: int, spatial: tuple[int, ...]
) -> tuple[np.ndarray, int]:
    """The block keep mask of ``n_planes`` planes (uint8, ``(n_planes, prod(spatial))``) and
    its count of ones, for calibrated parameters ``cal`` (``0 < threshold < 2**32``)."""
    size = math.prod(spatial)
    keep = np.empty(n_planes * size, dtype=np.uint8)
    counts = np.empty(n_planes, dtype=np.int64)
    per_item = max(1, _ITEM // max(size, 1))
    args = (_padded(spatial, 1), _padded(cal.block, 1), np.uint32(key[0]), np.uint32(key[1]),
            np.int64(cal.threshold))
    if _parallel(n_planes, per_item):
        _launch(_keep_planes, keep, counts, per_item, *args)
    else:  # one work item (small inputs), or no parallel launch in this process
        _plane_range(keep, counts, 0, n_planes, *args)
    return keep.reshape(n_planes, size), int(counts.sum())


def apply(x, key, cal, n, c, spatial, per_channel, scale, channels_last) -> torch.Tensor:
    """DropBlock of a CPU tensor: same contract and bits as the torch path of
    :mod:`dropkit._drop_block` (``0 < cal.threshold < 2**32``)."""
    from .._drop_block import _apply_torch

    n_planes = n * (c if per_channel else 1)
    keep, ones = keep_mask(key, cal, n_planes, spatial)
    if scale == "batch":
        factor = spec.batch_scale(keep.size, ones)
    elif scale == "expected":
        factor = spec.expected_scale(cal)
    else:
        factor = None
    if x.dtype not in (torch.float32, torch.float64):
        keep_t = torch.from_numpy(keep).view(torch.bool)
        keep_t = keep_t.reshape(n, c if per_channel else 1, *spatial)
        ct = torch.float32
        f = None if factor is None else torch.tensor(factor, dtype=ct)
        return _apply_torch(x, keep_t, f, channels_last, len(spatial))
    src = x.detach().contiguous()
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    xs, os_ = src.reshape(-1).numpy(), out.reshape(-1).numpy()
    compute = np.float64 if x.dtype == torch.float64 else np.float32
    scale_arg = compute(0.0 if factor is None else factor)
    size = math.prod(spatial)
    args = (keep.reshape(-1), c, not per_channel, size)
    scaling = (scale_arg, factor is not None)
    if channels_last:
        units, serial, parallel, per_item = x.numel() // c, _last_range, _apply_last, _ITEM // c
    else:
        units, serial, parallel, per_item = x.numel() // size, _first_range, _apply_first, (
            _ITEM // size)
    per_item = max(1, per_item)
    if _parallel(units, per_item):
        _launch(parallel, xs, os_, *args, per_item, *scaling)
    else:  # one work item (small inputs), or no parallel launch in this process
        serial(xs, os_, *args, 0, units, *scaling)
    return out
