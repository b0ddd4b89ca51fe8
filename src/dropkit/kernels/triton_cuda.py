"""Triton kernels for CUDA tensors: Philox4x32-10 generated and applied in one pass.

Status: written and checked bit for bit against :mod:`dropkit.kernels.torch_ref` with Triton's
CPU interpreter (``TRITON_INTERPRET=1``, ``tests/test_triton.py``); **not yet run or timed on a
GPU** (no GPU was lent to the session that wrote it). The dispatcher uses it for CUDA tensors
only when ``DROPKIT_BACKEND=triton`` (or ``set_backend("triton")``) asks for it, until a GPU
session has checked it; CUDA tensors otherwise keep the pure-PyTorch path.

What is fused: a full-shape noise field (plain dropout, alpha dropout, and every backward) for
float32, float16 and bfloat16: each program generates ``BLOCK_N`` Philox blocks (8 decisions
each, ``docs/rng.md`` section 4) and applies them to the ``8 * BLOCK_N`` elements they decide.
Broadcast fields (spatial, timestep, ``noise_shape``) draw their small keep field here and apply
it with ``torch_ref``'s expression; float64 and Gaussian noise use ``torch_ref`` (same bits).

Arithmetic, as ``torch_ref.apply_keep``: ``kept = x * scale`` in float32 (``scale`` rounded to
float32, as torch rounds a Python scalar for a float32/16-bit tensor), rounded to the input
dtype; ``+ shift`` in float32 when non-zero, rounded again; ``fill`` where dropped.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import rng
from . import torch_ref

__all__ = ["apply", "keep_field", "normal_field"]

_BLOCK_N = 128  # Philox blocks per program: 1024 elements
_M0 = tl.constexpr(rng.PHILOX_M0)
_M1 = tl.constexpr(rng.PHILOX_M1)
_W0 = tl.constexpr(rng.PHILOX_W0)
_W1 = tl.constexpr(rng.PHILOX_W1)
_ROUNDS = tl.constexpr(rng.PHILOX_ROUNDS)

_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors (``docs/rng.md`` section 1)."""
    for r in tl.static_range(_ROUNDS):
        if r > 0:
            k0 = k0 + _W0
            k1 = k1 + _W1
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def _lanes(first_block, k0, k1, BLOCK_N: tl.constexpr):
    """16-bit lanes of blocks ``first_block ... + BLOCK_N``: a (BLOCK_N, 8) uint32 tensor whose
    row n, column j is lane j of block n (word j // 2, low half for even j)."""
    n = first_block + tl.arange(0, BLOCK_N).to(tl.uint64)
    c0 = (n & 0xFFFFFFFF).to(tl.uint32)
    c1 = (n >> 32).to(tl.uint32)
    zero = tl.zeros_like(c0)
    r0, r1, r2, r3 = _philox(c0, c1, zero, zero, k0 + zero, k1 + zero)
    j = tl.arange(0, 8)[None, :]
    word = tl.where(j < 2, r0[:, None],
                    tl.where(j < 4, r1[:, None], tl.where(j < 6, r2[:, None], r3[:, None])))
    return (word >> ((j & 1) * 16).to(tl.uint32)) & 0xFFFF


@triton.jit
def _round(v, IS_BF16: tl.constexpr, dtype: tl.constexpr):
    """float32 -> ``dtype``, round to nearest even. bfloat16 is rounded with integer ops, so
    the bits do not depend on how a Triton version (or its interpreter) lowers the cast."""
    if IS_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)
        rounded = tl.where(v != v, 0x7FC0, rounded).to(tl.uint16)  # NaN stays NaN
        return rounded.to(tl.bfloat16, bitcast=True)
    return v.to(dtype)


@triton.jit
def _fused_kernel(x_ptr, out_ptr, numel, k0, k1, t, scale, shift, fill,
                  HAS_SHIFT: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    first = pid.to(tl.uint64) * BLOCK_N
    u = _lanes(first, k0.to(tl.uint32), k1.to(tl.uint32), BLOCK_N)
    offs = (first * 8).to(tl.int64) + tl.arange(0, BLOCK_N)[:, None] * 8 + tl.arange(0, 8)[None, :]
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask)
    kept = _round(x.to(tl.float32) * scale, IS_BF16, x.dtype)
    if HAS_SHIFT:
        kept = _round(kept.to(tl.float32) + shift, IS_BF16, x.dtype)
    result = tl.where(u >= t, kept, fill).to(x.dtype)  # fill is exact in x.dtype
    tl.store(out_ptr + offs, result, mask=mask)


@triton.jit
def _keep_kernel(out_ptr, count, k0, k1, t, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    first = pid.to(tl.uint64) * BLOCK_N
    u = _lanes(first, k0.to(tl.uint32), k1.to(tl.uint32), BLOCK_N)
    offs = (first * 8).to(tl.int64) + tl.arange(0, BLOCK_N)[:, None] * 8 + tl.arange(0, 8)[None, :]
    tl.store(out_ptr + offs, u >= t, mask=offs < count)


def _grid(count: int) -> tuple[int]:
    return (triton.cdiv(triton.cdiv(count, 8), _BLOCK_N),)


def keep_field(key: tuple[int, int], t: int, count: int, device=None) -> torch.Tensor:
    """Boolean keep decisions of field elements ``0 ... count - 1`` (``torch_ref.keep_field``)."""
    out = torch.empty(count, dtype=torch.bool, device=device)
    if count:
        _keep_kernel[_grid(count)](out, count, key[0], key[1], t, BLOCK_N=_BLOCK_N)
    return out


def normal_field(key: tuple[int, int], count: int, device=None) -> torch.Tensor:
    """Standard normal noise: ``torch_ref``'s code for now (same bits)."""
    return torch_ref.normal_field(key, count, device=device)


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
    """``where(keep, x * scale + shift, fill)``: the same bits as ``torch_ref.apply``."""
    full = tuple(noise_shape) == tuple(x.shape)
    if x.dtype not in _DTYPES or not full:
        keep = keep_field(key, t, math.prod(noise_shape), device=x.device)
        return torch_ref.apply_keep(x, keep.reshape(noise_shape), scale, shift, fill, out=out)
    src = x.contiguous()
    result = out if out is not None and out.is_contiguous() else torch.empty_like(src)
    if src.numel():
        fill = float(torch.tensor(fill, dtype=x.dtype))  # as torch_ref rounds it: exact in fp32
        _fused_kernel[_grid(src.numel())](
            src, result, src.numel(), key[0], key[1], t, scale, shift, fill,
            HAS_SHIFT=shift != 0.0, IS_BF16=x.dtype == torch.bfloat16, BLOCK_N=_BLOCK_N,
        )
    if out is not None and result is not out:
        out.copy_(result)
        return out
    return result

