"""DropBlock's specification and NumPy reference: calibration, seed field, block mask, functions.

This module is the executable form of ``docs/dropblock.md``; the torch path
(:mod:`dropkit._drop_block`) and the numba kernel (:mod:`dropkit.kernels.drop_block_numba`) must
match it bit for bit.

* **Block shape.** ``block_size`` (an int or one int per spatial axis) is clipped to the map on
  each axis: ``b_d = min(block_size_d, L_d)``.
* **Seed field.** Blocks start only where they fit (the paper's Algorithm 1, "valid region"):
  the field is the grid of start positions, shape ``(N, C or 1, L_1 - b_1 + 1, ...)`` in logical
  channels-first order for every ``data_format`` (an unbatched input is numbered as a batch of
  one). Element ``i`` (row-major) reads word ``r[i % 4]`` of the Philox block with counter
  ``(n_lo, n_hi, 2, 0)``, ``n = i // 4`` (stream 2), and is a seed iff ``r < T``.
* **Block mask.** A block starting at ``s`` covers ``s .. s + b - 1`` on each axis; a unit is
  dropped iff a seed's block covers it. Computed by separable prefix sums (independent of the
  block size).
* **Calibration.** ``T = floor(gamma * 2**32 + 0.5)`` where ``gamma`` solves
  ``f(gamma) = p``, ``f(gamma) = 1 - mean_u (1 - gamma)**c(u)``, ``c(u)`` the number of valid
  starts whose block covers ``u`` (see :func:`calibrate`).

Example:
    >>> cal = calibrate((14, 14), 7, 0.1)
    >>> cal.block, cal.threshold
    ((7, 7), 29052677)
    >>> abs(cal.expected - 0.1) < 1e-8
    True
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import _validation as v
from . import rng as _rng

__all__ = [
    "SCALES",
    "STREAM_DROPBLOCK",
    "Calibration",
    "block_keep_mask",
    "calibrate",
    "check_block_size",
    "coverage_histogram",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_fraction",
    "seed_field",
]

STREAM_DROPBLOCK = _rng.STREAM_DROPBLOCK  # counter word c2 of DropBlock's seed field
WORD_RANGE = 1 << 32  # thresholds live in [0, 2**32]
WORDS_PER_BLOCK = 4
SCALES = ("batch", "expected", "none")
_SPATIAL_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


# ---------------------------------------------------------------------------------------------
# Argument checks (shared by the functions and the modules)


def check_block_size(fn: str, block_size: object, spatial_dims: int) -> tuple[int, ...]:
    """``block_size`` as a tuple of ``spatial_dims`` positive ints (an int is repeated).

    >>> check_block_size("drop_block2d", 3, 2), check_block_size("drop_block2d", (2, 5), 2)
    ((3, 3), (2, 5))
    """
    expected = f"a positive int or a tuple of {spatial_dims} positive ints"
    if isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
        if block_size < 1:
            raise ValueError(f"{fn}: `block_size` must be {expected}, got {block_size}.")
        return (int(block_size),) * spatial_dims
    if not isinstance(block_size, tuple | list):
        raise TypeError(
            f"{fn}: `block_size` must be {expected}, got {v._received(block_size)}."
        )
    if len(block_size) != spatial_dims:
        raise ValueError(
            f"{fn}: `block_size` must be {expected} (one per spatial axis), got "
            f"{len(block_size)} entries: {tuple(block_size)!r}."
        )
    for d, entry in enumerate(block_size):
        if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
            raise TypeError(
                f"{fn}: `block_size[{d}]` must be a positive int, got {v._received(entry)}."
            )
        if entry < 1:
            raise ValueError(f"{fn}: `block_size[{d}]` must be a positive int, got {entry}.")
    return tuple(int(b) for b in block_size)


def check_options(fn: str, per_channel: object, scale: object, data_format: object) -> None:
    v.check_bool(fn, "per_channel", per_channel)
    v.check_choice(fn, "scale", scale, SCALES)
    v.check_choice(fn, "data_format", data_format, v.DATA_FORMATS)


def check_rank(fn: str, shape: tuple[int, ...], spatial_dims: int, data_format: str) -> None:
    """Rank ``d + 2`` (batched) or ``d + 1`` (unbatched); otherwise a ValueError naming both."""
    v.spatial_noise_shape(fn, shape, spatial_dims, data_format)


def layout(
    shape: tuple[int, ...], spatial_dims: int, channels_last: bool
) -> tuple[int, int, tuple[int, ...]]:
    """``(N, C, spatial shape)`` of an input of ``shape`` (unbatched: ``N = 1``)."""
    lead = len(shape) - spatial_dims - 1  # 1 batched, 0 unbatched
    n = shape[0] if lead else 1
    if channels_last:
        return n, shape[-1], tuple(shape[lead:lead + spatial_dims])
    return n, shape[lead], tuple(shape[lead + 1:])


# ---------------------------------------------------------------------------------------------
# Calibration


def clip_block(spatial: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    """The block clipped to the map on each axis (a map axis of size 0 gives 1)."""
    return tuple(max(1, min(b, s)) for b, s in zip(block, spatial, strict=True))


def _axis_histogram(length: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and multiplicities of ``c(u) = min(u + 1, b, L - u, L - b + 1)``, u in [0, L)."""
    m = min(b, length - b + 1)
    values = np.arange(1, m + 1, dtype=np.int64)
    counts = np.full(m, 2, dtype=np.int64)
    counts[-1] = length - 2 * (m - 1)
    return values, counts


@functools.lru_cache(maxsize=4096)
def coverage_histogram(
    spatial: tuple[int, ...], block: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of ``c(u)`` over the map: the distinct values and how many units have each.

    ``c(u) = prod_d c_d(u_d)`` is the number of valid block starts whose block covers unit
    ``u``; ``block`` must already be clipped. The arrays are read-only (they are cached).

    >>> values, counts = coverage_histogram((5,), (3,))
    >>> values.tolist(), counts.tolist()
    ([1, 2, 3], [2, 2, 1])
    """
    values, counts = np.ones(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    for length, b in zip(spatial, block, strict=True):
        av, ac = _axis_histogram(length, b)
        values = np.multiply.outer(values, av).reshape(-1)
        counts = np.multiply.outer(counts, ac).reshape(-1)
    uniq, inverse = np.unique(values, return_inverse=True)
    weights = np.bincount(inverse.reshape(-1), weights=counts).astype(np.int64)
    uniq.setflags(write=False)
    weights.setflags(write=False)
    return uniq, weights


def drop_fraction(spatial: tuple[int, ...], block: tuple[int, ...], gamma: float) -> float:
    """``f(gamma) = 1 - mean_u (1 - gamma)**c(u)``: the expected dropped fraction when each
    valid start is a seed with probability ``gamma`` (``block`` clipped; float64)."""
    if gamma >= 1.0:
        return 1.0
    values, weights = coverage_histogram(spatial, block)
    kept = weights @ np.exp(values * math.log1p(-gamma))
    return float(1.0 - kept / weights.sum())


def _solve(values: np.ndarray, weights: np.ndarray, p: float) -> float:
    """Root ``s >= 0`` of ``F(s) = 1 - sum w e^{-k s} / W = p`` (``1 - gamma = e^{-s}``).

    ``F`` is increasing and concave in ``s`` and ``F(0) = 0 <= p``, so Newton's method from 0
    increases monotonically to the root (each tangent lies above ``F``). Float64 throughout.
    """
    k = values.astype(np.float64)
    w = weights.astype(np.float64) / weights.sum()
    s = 0.0
    for _ in range(500):
        e = w * np.exp(-k * s)
        excess = 1.0 - float(e.sum()) - p  # F(s) - p <= 0
        slope = float(e @ k)
        step = -excess / slope
        if not step > 0.0 or s + step == s:
            break
        s += step
    return s


class Calibration(NamedTuple):
    """The solved seed rate of one (map, block, p): ``gamma`` solves ``f(gamma) = p``;
    ``threshold`` ``T = floor(gamma * 2**32 + 0.5)``; ``gamma_eff = T / 2**32``;
    ``expected = f(gamma_eff)``, the exact expected dropped fraction."""

    block: tuple[int, ...]
    gamma: float
    threshold: int
    gamma_eff: float
    expected: float


@functools.lru_cache(maxsize=4096)
def _calibrate(spatial: tuple[int, ...], block: tuple[int, ...], p: float) -> Calibration:
    block = clip_block(spatial, block)
    if p <= 0.0 or math.prod(spatial) == 0:
        return Calibration(block, 0.0, 0, 0.0, 0.0)
    if p >= 1.0:
        return Calibration(block, 1.0, WORD_RANGE, 1.0, 1.0)
    values, weights = coverage_histogram(spatial, block)
    s = _solve(values, weights, p)
    gamma = -math.expm1(-s)
    t = min(WORD_RANGE, math.floor(gamma * WORD_RANGE + 0.5))  # gamma * 2**32 is exact
    gamma_eff = t / WORD_RANGE
    return Calibration(block, gamma, t, gamma_eff, drop_fraction(spatial, block, gamma_eff))


def calibrate(spatial: Sequence[int], block: Sequence[int] | int, p: float) -> Calibration:
    """Solve ``f(gamma) = p`` for the seed rate of a map of shape ``spatial`` (cached).

    ``f(gamma) = 1 - mean_u (1 - gamma)**c(u)`` is evaluated on the histogram of ``c`` (at most
    a few thousand distinct values even for 64**3 maps), and Newton's method in
    ``s = -log(1 - gamma)`` converges to float64 precision. ``p = 0`` gives ``T = 0`` and
    ``p = 1`` gives ``T = 2**32`` (every start is a seed).

    >>> cal = calibrate((7, 7), 7, 0.1)  # one start: the block is the map (SpatialDropout)
    >>> cal.threshold == round(0.1 * 2**32), cal.expected == cal.gamma_eff
    (True, True)
    """
    spatial = tuple(int(s) for s in spatial)
    if isinstance(block, numbers.Integral):
        block = (int(block),) * len(spatial)
    return _calibrate(spatial, tuple(int(b) for b in block), float(p))


def expected_scale(cal: Calibration) -> float:
    """``1 / (1 - f(gamma_eff))`` in float64; 0.0 when everything is dropped."""
    return 0.0 if cal.expected >= 1.0 else 1.0 / (1.0 - cal.expected)


def batch_scale(count: int, ones: int) -> float:
    """``count(M) / count_ones(M)`` in float64 (a correctly rounded division); 0.0 when
    ``count_ones(M) == 0`` (the output is then all zeros)."""
    return 0.0 if ones == 0 else float(np.float64(count) / np.float64(ones))


# ---------------------------------------------------------------------------------------------
# Seed field and block mask


def seed_words(seed: int, count: int) -> np.ndarray:
    """The 32-bit words of field elements ``0 ... count - 1`` (stream 2; uint32)."""
    n_blocks = -(-count // WORDS_PER_BLOCK)
    words = _rng._blocks(seed, 0, n_blocks, STREAM_DROPBLOCK)
    return words.reshape(-1)[:count]


def seed_field(shape: tuple[int, ...], threshold: int, seed: int) -> np.ndarray:
    """Boolean seed field of ``shape`` ``(N, C or 1, *starts)``: element ``i`` is a seed iff
    its word ``r < threshold``.

    >>> seed_field((1, 1, 2, 4), 2**31, seed=0).astype(int).tolist()
    [[[[1, 0, 1, 1], [1, 1, 0, 1]]]]
    """
    count = math.prod(shape)
    return (seed_words(seed, count).astype(np.int64) < threshold).reshape(shape)


def block_keep_mask(seeds: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Keep mask ``M`` of a seed field: a unit is dropped iff a seed's block covers it.

    ``seeds`` has shape ``(N, C, *starts)``; the result ``(N, C, *(starts + block - 1))``. Each
    spatial axis in turn: a prefix sum ``P`` with a leading 0, and unit ``u`` is covered iff
    ``P[min(u + 1, V)] - P[max(u - b + 1, 0)] > 0`` (``V`` starts on the axis).
    """
    covered = seeds.astype(bool)
    for axis, b in enumerate(block, start=2):
        if b == 1:
            continue
        n_starts = covered.shape[axis]
        length = n_starts + b - 1
        prefix = np.cumsum(covered, axis=axis, dtype=np.int64)
        pad = [(0, 0)] * covered.ndim
        pad[axis] = (1, 0)
        prefix = np.pad(prefix, pad)
        u = np.arange(length)
        hi = np.take(prefix, np.minimum(u + 1, n_starts), axis=axis)
        lo = np.take(prefix, np.maximum(u - b + 1, 0), axis=axis)
        covered = hi - lo > 0
    return ~covered


def keep_mask(
    n: int, c: int, spatial: tuple[int, ...], cal: Calibration, per_channel: bool, seed: int
) -> np.ndarray:
    """The block keep mask ``(N, C or 1, *spatial)`` for calibrated parameters ``cal``."""
    starts = tuple(s - b + 1 for s, b in zip(spatial, cal.block, strict=True))
    seeds = seed_field((n, c if per_channel else 1, *starts), cal.threshold, seed)
    return block_keep_mask(seeds, cal.block)


# ---------------------------------------------------------------------------------------------
# NumPy functions


def _compute_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def _drop_block(fn, x, p, block_size, training, per_channel, scale, data_format, seed, rng,
                spatial_dims):
    from .numpy import _check, _seed

    x, p = _check(fn, x, p, training, seed, rng)
    block = check_block_size(fn, block_size, spatial_dims)
    check_options(fn, per_channel, scale, data_format)
    check_rank(fn, x.shape, spatial_dims, data_format)
    if not training or p == 0.0 or x.size == 0:
        return x
    if p == 1.0:
        return np.zeros_like(x)
    channels_last = data_format == "channels_last"
    n, c, spatial = layout(x.shape, spatial_dims, channels_last)
    cal = calibrate(spatial, block, p)
    if cal.threshold == 0:
        return x.copy()
    if cal.threshold >= WORD_RANGE:
        return np.zeros_like(x)
    keep = keep_mask(n, c, spatial, cal, per_channel, _seed(seed, rng))
    if scale == "batch":
        factor = batch_scale(keep.size, int(np.count_nonzero(keep)))
    elif scale == "expected":
        factor = expected_scale(cal)
    else:
        factor = None
    xc = x.reshape((n, *x.shape[-spatial_dims - 1:]) if channels_last else (n, c, *spatial))
    if channels_last:
        xc = np.moveaxis(xc, -1, 1)
    if factor is None:
        kept = xc
    else:
        ct = _compute_dtype(x)
        kept = np.asarray(xc.astype(ct) * ct(factor)).astype(x.dtype)
    out = np.where(keep, kept, x.dtype.type(0))
    if channels_last:
        out = np.moveaxis(out, 1, -1)
    return np.ascontiguousarray(out).reshape(x.shape)


def _make(spatial_dims: int):
    name = f"drop_block{spatial_dims}d"

    def drop_block(
        x: np.ndarray,
        p: float = 0.1,
        block_size: int | Sequence[int] = 7,
        training: bool = True,
        *,
        per_channel: bool = True,
        scale: str = "batch",
        data_format: str = "channels_first",
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        return _drop_block(name, x, p, block_size, training, per_channel, scale, data_format,
                           seed, rng, spatial_dims)

    drop_block.__name__ = drop_block.__qualname__ = name
    example_shape = ", ".join(["2", "3"] + ["8"] * spatial_dims)
    drop_block.__doc__ = f"""NumPy twin of :func:`dropkit.functional.{name}` (same mask for the
    same ``seed``; ``rng=`` a ``numpy.random.Generator`` draws the seed otherwise).

    Args:
        x: Feature map of a floating dtype: ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``
            (``channels_last``: ``(N, *spatial, C)`` or ``(*spatial, C)``).
        p: Expected fraction of units to drop, in ``[0, 1]``.
        block_size: Block side: an int, or one int per spatial axis.
        training: Apply DropBlock if ``True``; otherwise return ``x``.
        per_channel: One mask per channel (default) or, if ``False``, one per sample.
        scale: ``"batch"``, ``"expected"`` or ``"none"``, as in the torch function.
        data_format: ``"channels_first"`` or ``"channels_last"``.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: Draws the seed when ``seed`` is not given.

    Raises:
        TypeError: As the torch function, for an ``x`` that is not a floating
            ``numpy.ndarray`` or an ``rng`` that is not a ``numpy.random.Generator``.
        ValueError: As the torch function (``p``, ``block_size``, ``scale``,
            ``data_format``, rank, ``seed``).

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> y = dnp.{name}(np.ones(({example_shape})), 0.2, block_size=3, seed=0)
        >>> bool(((y == 0) | (y > 1)).all())
        True
    """
    return drop_block


drop_block1d = _make(1)
drop_block2d = _make(2)
drop_block3d = _make(3)
