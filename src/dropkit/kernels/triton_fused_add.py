"""Triton kernels of the fused residual adds (:mod:`dropkit._fused_add`), one pass each.

Status: checked bit for bit against the unfused composition with Triton's CPU interpreter
(``TRITON_INTERPRET=1``, ``tests/test_fused_add.py``); not yet run or timed on a GPU.

* ``bias_dropout_add``: reads ``x``, ``bias`` and ``residual`` once and writes
  ``residual + where(keep, (x + bias) * scale, 0)``. The keep decisions are the full-shape
  Philox field of ``x`` (the lanes of :mod:`dropkit.kernels.triton_cuda`, ``docs/rng.md``), so
  the mask is dropout's.
* ``bias_dropout_add_backward``: views ``grad`` as ``(rows, width)`` with the bias covering the
  last ``width`` elements of each row, writes ``d x`` and per-program float32 column sums of it
  (deterministic, no atomics); a small torch reduction of those partial sums gives ``d bias``.
  It needs ``width % 8 == 0`` (a row is whole Philox blocks); other layouts use the composition.
* ``drop_path_add``: the per-sample keep field (``N`` decisions) is drawn first, then one pass
  reads ``residual`` and, for kept samples only, ``x``.

Arithmetic, as the unfused torch expressions: every operation is done in float32 and rounded to
the input dtype after each of ``x + bias``, ``* scale`` and ``residual +`` (bfloat16 with
``triton_cuda._round``); ``scale`` is rounded to float32; launches disable FMA contraction.
float64 inputs return ``None`` here (the caller composes the existing ops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..rng import LANE_RANGE
from .triton_cuda import (
    _BLOCK_N,
    _DTYPES,
    _affine,
    _grid,
    _lanes,
    _round,
    _seed,
    keep_field,
    philox_block,
)

__all__ = ["bias_dropout_add", "bias_dropout_add_backward", "drop_path_add"]

_ROW_BLOCK = 1024  # elements per program of the drop-path kernel
_TILE_ROWS = 32  # backward tile: _TILE_ROWS rows x 8 * _TILE_GROUPS columns
_TILE_GROUPS = 8
_INT32_MAX = 2**31 - 1  # element offsets beyond this need 64-bit divisions
_MAX_ROW_PROGRAMS = 64  # row programs of the backward: partial sums are (<= 64, width) float32


@triton.jit
def _add(a, b, IS_BF16: tl.constexpr):
    """``a + b`` in float32, rounded to ``a``'s dtype (torch's arithmetic for half types)."""
    return _round(a.to(tl.float32) + b.to(tl.float32), IS_BF16, a.dtype)


@triton.jit(do_not_specialize=["seed", "t"])
def _bias_dropout_add_kernel(x_ptr, b_ptr, r_ptr, out_ptr, numel, width, seed, t, scale,
                             HAS_BIAS: tl.constexpr, IS_BF16: tl.constexpr, WIDE: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    first = pid.to(tl.uint64) * BLOCK_N
    u = _lanes(first, seed, BLOCK_N)
    offs = (first * 8).to(tl.int64) + tl.arange(0, BLOCK_N)[:, None] * 8 + tl.arange(0, 8)[None, :]
    mask = offs < numel
    h = tl.load(x_ptr + offs, mask=mask)
    if HAS_BIAS:
        index = offs if WIDE else offs.to(tl.int32)  # 32-bit divisions are much cheaper
        h = _add(h, tl.load(b_ptr + index % width, mask=mask), IS_BF16)
    y = _affine(h, u >= t, scale, 0.0, 0.0, False, IS_BF16)
    out = _add(tl.load(r_ptr + offs, mask=mask), y, IS_BF16)
    tl.store(out_ptr + offs, out, mask=mask)


@triton.jit
def _lanes_of(n, seed):
    """16-bit lanes of the Philox blocks ``n`` (a 2-D int64 tensor), stream 0: shape
    ``(*n.shape, 8)``, lane ``j`` of block ``n`` at ``[..., j]`` (``triton_cuda._lanes`` for any
    block indices)."""
    r0, r1, r2, r3 = philox_block(seed, n, 0)
    j = tl.arange(0, 8)[None, None, :]
    word = tl.where(j < 2, r0[:, :, None], tl.where(
        j < 4, r1[:, :, None], tl.where(j < 6, r2[:, :, None], r3[:, :, None])))
    return (word >> ((j & 1) * 16).to(tl.uint32)) & 0xFFFF


@triton.jit(do_not_specialize=["seed", "t"])
def _bias_grad_kernel(g_ptr, dx_ptr, part_ptr, rows, width, seed, t, scale, tiles_per_program,
                      IS_BF16: tl.constexpr, ROWS: tl.constexpr, GROUPS: tl.constexpr):
    """Program ``(i, j)``: row tiles ``i, i + P, ...`` (``P`` programs along axis 0) of column
    tile ``j``; writes ``d x`` and the float32 column sums of its ``d x`` to ``part[i]``."""
    pid_r = tl.program_id(0)
    n_r = tl.num_programs(0)
    group = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)  # 8-column groups
    lane = tl.arange(0, 8)
    col = group[:, None].to(tl.int64) * 8 + lane[None, :]  # (GROUPS, 8)
    col_ok = col < width
    blocks_per_row = width // 8
    acc = tl.zeros((GROUPS, 8), dtype=tl.float32)
    for i in range(0, tiles_per_program):
        row = (pid_r + i * n_r).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
        n = row[:, None] * blocks_per_row + group[None, :]  # Philox block of each 8 columns
        offs = n[:, :, None] * 8 + lane[None, None, :]  # = row * width + col
        mask = (row < rows)[:, None, None] & col_ok[None, :, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        dx = _affine(g, _lanes_of(n, seed) >= t, scale, 0.0, 0.0, False, IS_BF16)
        tl.store(dx_ptr + offs, dx, mask=mask)
        acc += tl.sum(dx.to(tl.float32), axis=0)  # masked-out elements are 0
    tl.store(part_ptr + pid_r.to(tl.int64) * width + col, acc, mask=col_ok)


@triton.jit
def _drop_path_add_kernel(x_ptr, keep_ptr, r_ptr, out_ptr, numel, row_size, scale,
                          IS_BF16: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    index = offs if WIDE else offs.to(tl.int32)  # 32-bit divisions are much cheaper
    keep = tl.load(keep_ptr + index // row_size, mask=mask, other=0) != 0
    x = tl.load(x_ptr + offs, mask=mask & keep, other=0.0)  # a dropped sample is not read
    y = _affine(x, keep, scale, 0.0, 0.0, False, IS_BF16)
    out = _add(tl.load(r_ptr + offs, mask=mask), y, IS_BF16)
    tl.store(out_ptr + offs, out, mask=mask)


def _width(bias_shape: Sequence[int], x_shape: Sequence[int]) -> int | None:
    """How many trailing elements of each row of ``x`` the bias covers, when the bias (leading
    ones dropped) is a suffix of ``x``'s shape, so bias element ``i % width`` goes with ``x``'s
    element ``i``; ``None`` for other broadcasts (e.g. ``(N, 1)``)."""
    dims = list(bias_shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    suffix = tuple(x_shape)[len(x_shape) - len(dims):]
    return math.prod(dims) if tuple(dims) == suffix else None


def _row_major(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is contiguous: then the composition's result is row-major too, as
    the kernels' is (otherwise its layout follows the operands' strides)."""
    return all(t.is_contiguous() for t in tensors)


def bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    key: tuple[int, int],
    t: int,
    scale: float,
) -> torch.Tensor | None:
    """``residual + where(keep, (x + bias) * scale, 0)``, contiguous; ``None`` for float64 and
    where ``x`` or ``residual`` is not row-major in memory (the kernel indexes the field by the
    flat position; the caller's composition then keeps the memory format)."""
    if x.dtype not in _DTYPES or not _row_major(x, residual):
        return None
    src = x.contiguous()
    out = torch.empty_like(src)
    if bias is None:
        b, width = src, 1
    else:
        width = _width(bias.shape, x.shape)
        b = bias.contiguous() if width is not None else bias.expand(x.shape).contiguous()
        width = width if width is not None else x.numel()
    if t >= LANE_RANGE:
        scale = 1.0  # nothing is kept: no (unused) inf * 0 products
    if src.numel():
        _bias_dropout_add_kernel[_grid(src.numel())](
            src, b, residual.contiguous(), out, src.numel(), width, _seed(key), t, scale,
            HAS_BIAS=bias is not None, IS_BF16=x.dtype == torch.bfloat16,
            WIDE=src.numel() + 8 * _BLOCK_N > _INT32_MAX, BLOCK_N=_BLOCK_N,
            enable_fp_fusion=False,
        )
    return out


def bias_dropout_add_backward(
    grad: torch.Tensor,
    key: tuple[int, int],
    t: int,
    scale: float,
    bias_shape: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(d x, d bias)`` in one pass over ``grad`` plus a reduction of ``(P, width)`` float32
    partial sums; ``None`` where the layout does not fit (float64, a bias that is not a suffix
    of ``grad``'s shape, ``width % 8 != 0``, a full-shape bias, or a ``grad`` that is not
    row-major in memory)."""
    width = _width(bias_shape, grad.shape)
    numel = grad.numel()
    if grad.dtype not in _DTYPES or width is None or width % 8 or not 0 < width < numel:
        return None
    if not _row_major(grad):
        return None
    g = grad.contiguous()
    grad_x = torch.empty_like(g)
    row_tiles = triton.cdiv(numel // width, _TILE_ROWS)
    programs = min(row_tiles, _MAX_ROW_PROGRAMS)
    partial = torch.empty((programs, width), dtype=torch.float32, device=g.device)
    _bias_grad_kernel[(programs, triton.cdiv(width, 8 * _TILE_GROUPS))](
        g, grad_x, partial, numel // width, width, _seed(key), t, scale,
        triton.cdiv(row_tiles, programs), IS_BF16=g.dtype == torch.bfloat16,
        ROWS=_TILE_ROWS, GROUPS=_TILE_GROUPS, enable_fp_fusion=False,
    )
    return grad_x, partial.sum(0).to(g.dtype).reshape(tuple(bias_shape))


def drop_path_add(
    x: torch.Tensor,
    residual: torch.Tensor,
    key: tuple[int, int],
    t: int,
    scale: float,
    noise_shape: Sequence[int],
) -> torch.Tensor | None:
    """``residual + where(keep, x * scale, 0)`` with one decision per leading slice of ``x``
    (``noise_shape`` is ``(N, 1, ..., 1)`` or all ones); ``None`` for float64 and where ``x``
    or ``residual`` is not row-major in memory (as :func:`bias_dropout_add`)."""
    if x.dtype not in _DTYPES or not _row_major(x, residual):
        return None
    src = x.contiguous()
    out = torch.empty_like(src)
    if src.numel():
        decisions = math.prod(noise_shape)
        keep = keep_field(key, t, decisions, device=x.device).view(torch.uint8)
        _drop_path_add_kernel[(triton.cdiv(src.numel(), _ROW_BLOCK),)](
            src, keep, residual.contiguous(), out, src.numel(), src.numel() // decisions, scale,
            IS_BF16=x.dtype == torch.bfloat16, WIDE=src.numel() + _ROW_BLOCK > _INT32_MAX,
            BLOCK=_ROW_BLOCK, enable_fp_fusion=False,
        )
    return out
