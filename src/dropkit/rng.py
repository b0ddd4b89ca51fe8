"""The mask engine's specification: Philox4x32-10 and how dropkit turns it into decisions.

Every random decision in dropkit is a pure function of ``(seed, field shape, index)``. This module
is the executable form of [docs/rng.md](../rng.md); the NumPy code here is the reference that
every other backend (numba CPU kernels, the pure-PyTorch path, later Triton) must match bit for bit.

Summary of the spec (details in [docs/rng.md](../rng.md)):

* Philox4x32-10 (Salmon et al., SC'11, Random123), key ``(seed & 0xFFFFFFFF, seed >> 32)``.
* The random field of a variant has the variant's *noise shape*; its elements are numbered in
  logical row-major order, ``i = 0, 1, ...``.
* Bernoulli decisions (stream 0): element ``i`` reads 16-bit lane ``j = i % 8`` of the block with
  counter ``(n & 0xFFFFFFFF, n >> 32, 0, 0)``, ``n = i // 8``; lane ``j`` is word ``r[j // 2]``,
  low half for even ``j``, high half for odd ``j``. It is kept iff ``u_i >= t``,
  ``t = floor(p * 65536 + 0.5)``.
* Gaussian noise (stream 1): element ``i`` uses the block with counter
  ``(n & 0xFFFFFFFF, n >> 32, 1, 0)``, ``n = i // 4``, and a Box-Muller transform of a word pair
  written with basic IEEE operations only, so every backend gets the same bits.

Example:
    >>> philox4x32(0, 0, 0, 0, 0, 0)  # Random123's first known-answer vector
    (1713891541, 3781805453, 3159862348, 2600524760)
    >>> uniform16(seed=0, start=0, count=8).tolist()
    [59605, 26151, 50573, 57705, 44108, 48215, 56280, 39680]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = [
    "LANE_BITS",
    "LANE_RANGE",
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_ROUNDS",
    "PHILOX_W0",
    "PHILOX_W1",
    "STREAM_BERNOULLI",
    "STREAM_DROPBLOCK",
    "STREAM_NORMAL",
    "STREAM_RANK",
    "ArrayOps",
    "affine_params",
    "box_muller",
    "effective_p",
    "inverted_scale",
    "keep_field",
    "normal_field",
    "philox4x32",
    "rank_key",
    "seed_to_key",
    "threshold",
    "uniform16",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
MAX_SEED = 2**64 - 1

LANE_BITS = 16
LANE_RANGE = 1 << LANE_BITS  # 65536: thresholds live in [0, 65536]
LANES_PER_BLOCK = 8  # 128 bits / 16
NORMALS_PER_BLOCK = 4  # two Box-Muller pairs of 32-bit words

STREAM_BERNOULLI = 0  # counter word c2 for keep/drop decisions
STREAM_NORMAL = 1  # counter word c2 for Gaussian noise
STREAM_DROPBLOCK = 2  # counter word c2 for DropBlock's block seeds (32-bit words)
STREAM_RANK = 3  # counter word c2 when a drawn key is made rank-dependent (docs/rng.md, 9)


def seed_to_key(seed: int) -> tuple[int, int]:
    """Split a 64-bit unsigned seed into the Philox key ``(low 32 bits, high 32 bits)``.

    Raises:
        TypeError: If ``seed`` is not an int (bools are rejected).
        ValueError: If ``seed`` is outside ``[0, 2**64)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"`seed` must be an int in [0, 2**64), got {type(seed).__name__} {seed!r}."
        )
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be an int in [0, 2**64), got {seed}.")
    return seed & MASK32, seed >> 32


def threshold(p: float) -> int:
    """The 16-bit threshold ``t = floor(p * 65536 + 0.5)``; an element is kept iff ``u >= t``.

    ``p * 65536`` is exact in float64, so the only rounding is the documented half-up rule.

    >>> threshold(0.1), threshold(0.5), threshold(1.0)
    (6554, 32768, 65536)
    """
    return math.floor(float(p) * LANE_RANGE + 0.5)


def effective_p(t: int) -> float:
    """The drop probability that threshold ``t`` really realises: ``t / 65536``."""
    return t / LANE_RANGE


def inverted_scale(t: int) -> float:
    """``1 / (1 - p_eff)`` as float64, computed as ``65536 / (65536 - t)``; 0.0 when ``t = 65536``.

    The kernels multiply kept values by this number rounded to the compute dtype (float32 for
    float16, bfloat16 and float32 inputs; float64 for float64 inputs).
    """
    return 0.0 if t >= LANE_RANGE else LANE_RANGE / (LANE_RANGE - t)


_SELU_ALPHA = 1.7580993408473766  # -SELU's negative saturation value (scale * alpha)


def affine_params(kind: str, p: float) -> tuple[int, float, float, float]:
    """``(threshold, scale, shift, fill)`` of variant ``kind`` at drop rate ``p``.

    ``"inverted"``: kept values times ``1 / (1 - p_eff)``; ``"unscaled"``: kept values as they
    are (vanilla dropout in training, DropPath without ``scale_by_keep``); ``"eval"``: nothing
    dropped, everything times ``1 - p_eff`` (vanilla dropout at eval time); ``"alpha"``: alpha
    dropout's affine map. ``p_eff = 1`` always gives zeros.
    """
    t = threshold(p)
    if t >= LANE_RANGE:
        return LANE_RANGE, 0.0, 0.0, 0.0
    if kind == "inverted":
        return t, inverted_scale(t), 0.0, 0.0
    if kind == "unscaled":
        return t, 1.0, 0.0, 0.0
    if kind == "eval":
        return 0, 1.0 - effective_p(t), 0.0, 0.0
    if kind == "alpha":
        q = effective_p(t)
        a = 1.0 / math.sqrt((_SELU_ALPHA**2 * q + 1.0) * (1.0 - q))
        shift = _SELU_ALPHA * a * q
        return t, a, shift, -_SELU_ALPHA * a + shift
    raise ValueError(f"unknown kind {kind!r}")


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 on scalars or NumPy arrays of 32-bit values; returns the four output words.

    Follows Random123's ``philox4x32_R``: the first round uses the key as given and the key is
    bumped by the Weyl constants before each later round.
    """
    scalar = all(np.ndim(v) == 0 for v in (c0, c1, c2, c3, k0, k1))
    c0, c1, c2, c3, k0, k1 = (np.asarray(v, dtype=np.uint64) for v in (c0, c1, c2, c3, k0, k1))
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    mask, shift = np.uint64(MASK32), np.uint64(32)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
        p0, p1 = m0 * c0, m1 * c2  # exact: both factors are below 2**32
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
    if scalar:
        return int(c0), int(c1), int(c2), int(c3)
    return tuple(v.astype(np.uint32) for v in (c0, c1, c2, c3))


def rank_key(key: tuple[int, int], rank: int) -> tuple[int, int]:
    """The key a rank uses in place of a drawn ``key``: words 0 and 1 of the Philox block with
    counter ``(rank & 0xFFFFFFFF, rank >> 32, 3, 0)`` under ``key`` ([docs/rng.md](../rng.md),
    section 9).

    >>> rank_key((0, 0), 0) != rank_key((0, 0), 1)
    True
    """
    r0, r1, _, _ = philox4x32(rank & MASK32, rank >> 32, STREAM_RANK, 0, *key)
    return r0, r1


def _blocks(seed: int, first_block: int, n_blocks: int, stream: int) -> np.ndarray:
    """Philox output words of blocks ``first_block ... first_block + n_blocks - 1``: (n, 4)."""
    k0, k1 = seed_to_key(seed)
    n = np.arange(first_block, first_block + n_blocks, dtype=np.uint64)
    zero = np.zeros_like(n)
    words = philox4x32(n & np.uint64(MASK32), n >> np.uint64(32), zero + np.uint64(stream), zero,
                       k0, k1)
    return np.stack(words, axis=-1)


def uniform16(seed: int, start: int, count: int) -> np.ndarray:
    """The 16-bit values ``u_i`` of field elements ``start ... start + count - 1`` (uint16)."""
    if count <= 0:
        return np.zeros(0, dtype=np.uint16)
    first = start // LANES_PER_BLOCK
    last = (start + count - 1) // LANES_PER_BLOCK
    words = _blocks(seed, first, last - first + 1, STREAM_BERNOULLI)
    # Little-endian split of each 32-bit word into (low, high) 16-bit halves = lanes 0..7.
    lanes = np.stack([words & 0xFFFF, words >> 16], axis=-1).astype(np.uint16).reshape(-1)
    offset = start - first * LANES_PER_BLOCK
    return lanes[offset:offset + count]


def keep_field(shape: tuple[int, ...], p: float, seed: int) -> np.ndarray:
    """Boolean keep mask of a random field of ``shape`` (the reference every backend matches).

    >>> keep_field((2, 4), 0.5, seed=0).astype(int).tolist()
    [[1, 0, 1, 1], [1, 1, 1, 1]]
    """
    count = math.prod(shape)
    return (uniform16(seed, 0, count) >= threshold(p)).reshape(shape)


# Box-Muller from basic IEEE operations only (+, -, *, /, comparisons, frexp, floor), evaluated in
# the same order everywhere, so that NumPy and PyTorch (any device) give the same bits. Library
# log/sin/cos/sqrt are not used: they differ in the last bit between NumPy, numba and torch.
_SQRT_HALF = 0.7071067811865476
_LN2 = 0.6931471805599453
_HALF_PI = 1.5707963267948966
_LOG_COEF = tuple(2.0 / (2 * k + 1) for k in range(11))  # ln m = s * P(s^2), s = (m-1)/(m+1)
_SIN_COEF = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(10))  # sin t = t * S(t^2)
_COS_COEF = tuple((-1) ** k / math.factorial(2 * k) for k in range(11))  # cos t = C(t^2)
_NEWTON_STEPS = 5


class ArrayOps(NamedTuple):
    """The few array functions Box-Muller needs besides arithmetic operators."""

    frexp: Callable
    where: Callable
    floor: Callable


NUMPY_OPS = ArrayOps(np.frexp, np.where, np.floor)


def _horner(x, coef):
    acc = x * 0.0 + coef[-1]
    for c in coef[-2::-1]:
        acc = acc * x + c
    return acc


def _pow2(h, ops: ArrayOps):
    """Exact ``2.0 ** h`` for an integer array ``|h| < 32`` by multiplying powers of two."""
    neg = h < 0
    habs = ops.where(neg, -h, h)
    out = h * 0.0 + 1.0
    for bit in range(5):
        step = 2.0 ** (2**bit)
        factor = ops.where(neg, 1.0 / step, step)
        out = out * ops.where((habs & (1 << bit)) != 0, factor, 1.0)
    return out


def _sqrt(a, ops: ArrayOps):
    """sqrt for ``0 <= a < 2**31`` by range reduction and Newton steps (not correctly rounded,
    but the same bits on every backend)."""
    m, e = ops.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    odd = (e & 1) != 0
    m = ops.where(odd, m * 2.0, m)  # m in [0.5, 2), e even
    e = ops.where(odd, e - 1, e)
    g = 0.5 + 0.5 * m
    for _ in range(_NEWTON_STEPS):
        g = 0.5 * (g + m / g)
    return ops.where(a == 0.0, 0.0, g * _pow2(e // 2, ops))


def box_muller(ra, rb, ops: ArrayOps = NUMPY_OPS):
    """Two standard normals per pair of 32-bit words (float64 arrays holding the word values).

    ``u1 = (ra + 1) * 2**-32`` in (0, 1], ``u2 = rb * 2**-32`` in [0, 1);
    returns ``(sqrt(-2 ln u1) cos(2 pi u2), sqrt(-2 ln u1) sin(2 pi u2))``, with ln, sqrt, sin
    and cos evaluated by the fixed formulas of [docs/rng.md](../rng.md) section 5.
    """
    u1 = (ra + 1.0) * 2.0**-32
    m, e = ops.frexp(u1)
    small = m < _SQRT_HALF
    m = ops.where(small, m * 2.0, m)  # m in [sqrt(1/2), sqrt(2))
    e = m * 0.0 + ops.where(small, e - 1, e)
    s = (m - 1.0) / (m + 1.0)
    log_u1 = e * _LN2 + s * _horner(s * s, _LOG_COEF)
    radius = _sqrt(-2.0 * log_u1, ops)
    v = rb * 2.0**-30  # 4 * u2: quadrant q and fraction f, both exact
    q = ops.floor(v)
    f = v - q
    flip = f > 0.5  # reflect to t in [0, pi/4]: sin and cos swap
    f = ops.where(flip, 1.0 - f, f)
    t = f * _HALF_PI
    t2 = t * t
    sin_t, cos_t = t * _horner(t2, _SIN_COEF), _horner(t2, _COS_COEF)
    sin_r, cos_r = ops.where(flip, cos_t, sin_t), ops.where(flip, sin_t, cos_t)
    # angle = q * pi/2 + r: rotate by the quadrant.
    cos_a = ops.where(q == 0, cos_r, ops.where(q == 1, -sin_r, ops.where(q == 2, -cos_r, sin_r)))
    sin_a = ops.where(q == 0, sin_r, ops.where(q == 1, cos_r, ops.where(q == 2, -sin_r, -cos_r)))
    return radius * cos_a, radius * sin_a


def normal_field(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal float64 noise of a random field of ``shape`` (stream 1, Box-Muller).

    Block ``n`` gives words ``r0..r3``; pair ``(r0, r1)`` makes elements ``4n`` and ``4n + 1``,
    pair ``(r2, r3)`` elements ``4n + 2`` and ``4n + 3`` (see :func:`box_muller`).
    """
    count = math.prod(shape)
    n_blocks = -(-count // NORMALS_PER_BLOCK)
    words = _blocks(seed, 0, n_blocks, STREAM_NORMAL).astype(np.float64)
    z_even, z_odd = box_muller(words[:, 0::2], words[:, 1::2])
    return np.stack([z_even, z_odd], axis=-1).reshape(-1)[:count].reshape(shape)
