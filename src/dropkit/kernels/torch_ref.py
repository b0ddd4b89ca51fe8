"""Pure-PyTorch Philox4x32-10: the backend for any device (CUDA uses it until Triton lands).

32-bit words are held in int64 tensors. The 32x32 -> 64-bit products that Philox needs are
split into two 32x16-bit products, so every intermediate stays below 2**49 and no int64
arithmetic ever overflows, on any device.
"""

from __future__ import annotations

import math

import torch

from .. import rng

__all__ = ["apply", "apply_keep", "compute_dtype", "keep_field", "normal_field", "philox4x32"]

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


def _words(key: tuple[int, int], n_blocks: int, stream: int, device) -> torch.Tensor:
    n = torch.arange(n_blocks, dtype=torch.int64, device=device)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return torch.stack(philox4x32(n & _MASK32, n >> 32, zero + stream, zero, *key), dim=-1)


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
    """``where(keep, x * scale + shift, fill)``, ``keep`` broadcast to ``x``; contiguous result.

    This one expression is the arithmetic of every backend that does not fuse, so backends that
    draw the same ``keep`` give the same bits. ``shift`` is only added when non-zero, so that
    plain dropout keeps the sign of ``-0.0``.
    """
    kept = x * scale
    if shift != 0.0:  # in the compute dtype: torch would round `shift` to float16 first
        kept = (kept.to(compute_dtype(x.dtype)) + shift).to(x.dtype)
    fill_value = torch.tensor(fill, dtype=x.dtype, device=x.device)
    result = torch.where(keep.to(x.device), kept, fill_value)
    if out is None:
        return result.contiguous()
    return out.copy_(result)


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
