"""The dropout family for NumPy arrays: the reference implementation and the tests' oracle.

Same functions, arguments and masks as :mod:`dropkit.functional` (``rng=`` a
``numpy.random.Generator`` replaces ``generator=``), computed directly from the spec in
:mod:`dropkit.rng`. Given the same ``seed``, ``dropkit.numpy.dropout(x.numpy(), ...)`` equals
``dropkit.functional.dropout(x, ...)`` bit for bit.

Arithmetic matches the torch backends: kept values are ``x * scale`` computed in float32 for
float16/float32 inputs and in float64 for float64 inputs; dropped values are exactly 0.

Example:
    The seeds' two-layer MLP with inverted dropout, reproducible from one seed:

    >>> import numpy as np, dropkit.numpy as dnp
    >>> rng = np.random.default_rng(0)
    >>> x, w1, w2 = rng.normal(size=(4, 8)), rng.normal(size=(8, 16)), rng.normal(size=(16, 2))
    >>> h = dnp.dropout(np.maximum(0, x @ w1), 0.5, seed=1)   # training: scaled by 2
    >>> out_train = h @ w2
    >>> h_eval = dnp.dropout(np.maximum(0, x @ w1), 0.5, training=False)  # identity
    >>> bool(np.array_equal(h_eval, np.maximum(0, x @ w1)))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import _validation as v
from . import rng as _rng
from ._drop_block_numpy import drop_block1d, drop_block2d, drop_block3d
from ._fused_add import check_operand, drop_path_noise_shape
from .functional import DROP_PATH_MODES

__all__ = [
    "alpha_dropout",
    "bias_dropout_add",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_path_add",
    "dropout",
    "gaussian_dropout",
    "spatial_dropout1d",
    "spatial_dropout2d",
    "spatial_dropout3d",
    "timestep_dropout",
]

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _check(fn, x, p, training, seed, rng) -> tuple[np.ndarray, float]:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: `x` must be a numpy.ndarray, got {type(x).__name__}.")
    if x.dtype.type not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: `x` must have dtype float16, float32 or float64, got {x.dtype}."
        )
    p = v.check_p(fn, p)
    v.check_bool(fn, "training", training)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{fn}: `rng` must be a numpy.random.Generator or None, got {type(rng).__name__}."
        )
    v.check_seed(fn, seed, rng, generator_name="rng")
    return x, p


def _seed(seed: int | None, rng: np.random.Generator | None) -> int:
    if seed is not None:
        return int(seed)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.integers(0, 2**64, dtype=np.uint64))


def _compute_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def _masked_affine(x, keep, scale, shift=0.0, fill=0.0) -> np.ndarray:
    """``where(keep, x * scale + shift, fill)`` with the torch backends' rounding."""
    ct = _compute_dtype(x)
    with np.errstate(over="ignore"):  # as in torch, a value too large for the dtype is inf
        kept = np.asarray(x.astype(ct) * ct(scale)).astype(x.dtype)
        if shift != 0.0:
            kept = np.asarray(kept.astype(ct) + ct(shift)).astype(x.dtype)
    return np.where(keep, kept, x.dtype.type(fill))


def _dropout_impl(x, p, training, mode, noise_shape, seed, rng) -> np.ndarray:
    if p == 0.0 or x.size == 0 or (not training and mode == "inverted"):
        return x
    t = _rng.threshold(p)
    if t == _rng.LANE_RANGE and (p == 1.0 or not training):  # no seed drawn
        return np.zeros_like(x)
    if not training:
        return np.asarray(x.astype(_compute_dtype(x)) * (1.0 - _rng.effective_p(t))).astype(x.dtype)
    keep = _rng.keep_field(noise_shape, p, _seed(seed, rng))
    scale = _rng.inverted_scale(t) if mode == "inverted" else 1.0
    return _masked_affine(x, keep, scale)


def dropout(
    x: np.ndarray,
    p: float = 0.5,
    training: bool = True,
    *,
    mode: str = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.dropout` (same mask for the same ``seed``).

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        p: Probability of dropping (not the keep probability), in ``[0, 1]``.
        training: Apply the variant if ``True``; otherwise return ``x`` (vanilla mode: scaled).
        mode: ``"inverted"`` (scale kept values by ``1 / (1 - p)``) or ``"vanilla"``.
        noise_shape: Keras-style shared axes: one entry per axis, ``1``, the axis' size or
            ``None``.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``p`` is not a real
            number, ``training`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or
            ``seed`` is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, an unknown ``mode``, a bad ``noise_shape``, or
            a ``seed`` outside ``[0, 2**64)`` or given together with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> dnp.dropout(np.arange(35.).reshape(1, 7, 5), 0.5, noise_shape=(1, 1, 5), seed=0)[0, 0]
        array([0., 0., 4., 6., 8.])
    """
    fn = "dropout"
    x, p = _check(fn, x, p, training, seed, rng)
    v.check_choice(fn, "mode", mode, v.MODES)
    shape = v.resolve_noise_shape(fn, x.shape, noise_shape)
    return _dropout_impl(x, p, training, mode, shape, seed, rng)


def _spatial(spatial_dims: int):
    name = f"spatial_dropout{spatial_dims}d"

    def spatial_dropout(
        x: np.ndarray,
        p: float = 0.5,
        training: bool = True,
        *,
        data_format: str = "channels_first",
        mode: str = "inverted",
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        x, p = _check(name, x, p, training, seed, rng)
        v.check_choice(name, "mode", mode, v.MODES)
        shape = v.spatial_noise_shape(name, x.shape, spatial_dims, data_format)
        return _dropout_impl(x, p, training, mode, shape, seed, rng)

    spatial_dropout.__name__ = spatial_dropout.__qualname__ = name
    spatial_dropout.__doc__ = f"""NumPy twin of :func:`dropkit.functional.{name}` (same mask for the
    same ``seed``): whole channels are dropped.

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        p: Probability of dropping (not the keep probability), in ``[0, 1]``.
        training: Apply the variant if ``True``; otherwise return ``x`` (vanilla mode: scaled).
        data_format: ``"channels_first"`` or ``"channels_last"``.
        mode: ``"inverted"`` or ``"vanilla"``.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``p`` is not a real
            number, ``training`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or
            ``seed`` is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, an unknown ``mode``, an unknown
            ``data_format``, a wrong rank, or a ``seed`` outside ``[0, 2**64)`` or given together
            with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> y = dnp.{name}(np.ones(({", ".join(["2", "3"] + ["4"] * spatial_dims)})), 0.5, seed=1)
        >>> bool(((y == 0) | (y == 2)).all())
        True
    """
    return spatial_dropout


spatial_dropout1d = _spatial(1)
spatial_dropout2d = _spatial(2)
spatial_dropout3d = _spatial(3)


def timestep_dropout(
    x: np.ndarray,
    p: float = 0.5,
    training: bool = True,
    *,
    mode: str = "inverted",
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.timestep_dropout`: whole timesteps of
    ``(N, T, *features)`` are dropped.

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        p: Probability of dropping (not the keep probability), in ``[0, 1]``.
        training: Apply the variant if ``True``; otherwise return ``x`` (vanilla mode: scaled).
        mode: ``"inverted"`` or ``"vanilla"``.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``p`` is not a real
            number, ``training`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or
            ``seed`` is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, an unknown ``mode``, an input of rank < 3, or a
            ``seed`` outside ``[0, 2**64)`` or given together with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> y = dnp.timestep_dropout(np.ones((2, 6, 4)), 0.5, seed=3)
        >>> bool(((y == 0).all(-1) | (y == 2).all(-1)).all())
        True
    """
    fn = "timestep_dropout"
    x, p = _check(fn, x, p, training, seed, rng)
    v.check_choice(fn, "mode", mode, v.MODES)
    shape = v.timestep_noise_shape(fn, x.shape)
    return _dropout_impl(x, p, training, mode, shape, seed, rng)


def gaussian_dropout(
    x: np.ndarray,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.gaussian_dropout` (noise from stream 1).

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        p: Probability of dropping (not the keep probability), in ``[0, 1]``.
        training: Apply the variant if ``True``; otherwise return ``x`` (vanilla mode: scaled).
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``p`` is not a real
            number, ``training`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or
            ``seed`` is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, or a ``seed`` outside ``[0, 2**64)`` or given
            together with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> y = dnp.gaussian_dropout(np.ones(100_000), 0.2, seed=0)
        >>> round(float(y.mean()), 2), round(float(y.var()), 2)
        (1.0, 0.25)
    """
    fn = "gaussian_dropout"
    x, p = _check(fn, x, p, training, seed, rng)
    if not training or p == 0.0 or x.size == 0:
        return x
    if p == 1.0:
        return np.zeros_like(x)
    z = _rng.normal_field(x.shape, _seed(seed, rng))
    ct = _compute_dtype(x)
    noise = (1.0 + math.sqrt(p / (1.0 - p)) * z).astype(ct)
    with np.errstate(over="ignore"):  # as in torch, a product too large for the dtype is inf
        return np.asarray(x.astype(ct) * noise).astype(x.dtype)


def alpha_dropout(
    x: np.ndarray,
    p: float = 0.5,
    training: bool = True,
    *,
    noise_shape: Sequence[int | None] | None = None,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.alpha_dropout` (SELU-preserving dropout).

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        p: Probability of dropping (not the keep probability), in ``[0, 1]``.
        training: Apply the variant if ``True``; otherwise return ``x`` (vanilla mode: scaled).
        noise_shape: Keras-style shared axes, as in :func:`dropout`.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``p`` is not a real
            number, ``training`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or
            ``seed`` is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, a bad ``noise_shape``, or a ``seed`` outside
            ``[0, 2**64)`` or given together with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> y = dnp.alpha_dropout(np.random.default_rng(0).normal(size=200_000), 0.2, seed=0)
        >>> abs(float(y.mean())) < 0.01, abs(float(y.std()) - 1) < 0.01
        (True, True)
    """
    fn = "alpha_dropout"
    x, p = _check(fn, x, p, training, seed, rng)
    shape = v.resolve_noise_shape(fn, x.shape, noise_shape)
    if not training or p == 0.0 or x.size == 0:
        return x
    if p == 1.0:
        return np.zeros_like(x)
    _, scale, shift, fill = _rng.affine_params("alpha", p)
    keep = _rng.keep_field(shape, p, _seed(seed, rng))
    return _masked_affine(x, keep, scale, shift, fill)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` computed in the compute dtype and rounded to ``a``'s dtype once, as torch adds."""
    ct = _compute_dtype(a)
    with np.errstate(over="ignore"):
        return np.asarray(a.astype(ct) + b.astype(ct)).astype(a.dtype)


def bias_dropout_add(
    x: np.ndarray,
    bias: np.ndarray | None,
    residual: np.ndarray,
    p: float,
    training: bool = True,
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.bias_dropout_add`: ``residual + dropout(x + bias)``
    with the same mask and bits for the same ``seed``.

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        bias: Array of ``x``'s dtype that broadcasts to ``x``'s shape, or ``None``.
        residual: Array of ``x``'s shape and dtype.
        p: Probability of dropping (not the keep probability), in ``[0, 1]``.
        training: Apply dropout if ``True``; otherwise return ``residual + (x + bias)``.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``bias`` or
            ``residual`` is not a ``numpy.ndarray`` of ``x``'s dtype, ``p`` is not a real number,
            ``training`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or ``seed``
            is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, ``residual`` not of ``x``'s shape, ``bias``
            not broadcastable to it, or a ``seed`` outside ``[0, 2**64)`` or given together with
            ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> dnp.bias_dropout_add(np.ones((2, 4)), np.full(4, 0.5), np.full((2, 4), 10.0), 0.5,
        ...                      seed=0)
        array([[13., 10., 13., 13.],
               [13., 13., 13., 13.]])
    """
    fn = "bias_dropout_add"
    x, p = _check(fn, x, p, training, seed, rng)
    check_operand(fn, "residual", residual, x, np.ndarray, broadcast=False)
    if bias is not None:
        check_operand(fn, "bias", bias, x, np.ndarray, broadcast=True)
    h = x if bias is None else _add(x, bias)
    return _add(residual, _dropout_impl(h, p, training, "inverted", h.shape, seed, rng))


def drop_path_add(
    x: np.ndarray,
    residual: np.ndarray,
    p: float,
    training: bool = True,
    *,
    mode: str = "row",
    scale_by_keep: bool = True,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.drop_path_add`: ``residual + drop_path(x)`` with
    the same decisions and bits for the same ``seed``.

    Args:
        x: Batch ``(N, *)`` of a floating dtype (float16, float32 or float64).
        residual: Array of ``x``'s shape and dtype.
        p: Probability of dropping a sample (or the batch), in ``[0, 1]``.
        training: Apply DropPath if ``True``; otherwise return ``residual + x``.
        mode: ``"row"`` (one decision per sample) or ``"batch"`` (one for the batch).
        scale_by_keep: Scale kept samples by ``1 / (1 - p)`` (the default).
        seed: Fixes the decisions: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``residual`` is not
            a ``numpy.ndarray`` of ``x``'s dtype, ``p`` is not a real number, ``training`` or
            ``scale_by_keep`` is not a bool, ``rng`` is not a ``numpy.random.Generator``, or
            ``seed`` is not an int.
        ValueError: ``p`` outside ``[0, 1]`` or NaN, an unknown ``mode``, a 0-dimensional ``x``,
            ``residual`` not of ``x``'s shape, or a ``seed`` outside ``[0, 2**64)`` or given
            together with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> dnp.drop_path_add(np.ones((6, 3)), np.full((6, 3), 10.0), 0.5, seed=0)[:, 0]
        array([12., 10., 12., 12., 12., 12.])
    """
    fn = "drop_path_add"
    x, p = _check(fn, x, p, training, seed, rng)
    v.check_choice(fn, "mode", mode, DROP_PATH_MODES)
    v.check_bool(fn, "scale_by_keep", scale_by_keep)
    shape = drop_path_noise_shape(fn, x.shape, mode)
    check_operand(fn, "residual", residual, x, np.ndarray, broadcast=False)
    if not training:
        return _add(residual, x)
    mode = "inverted" if scale_by_keep else "vanilla"  # vanilla: unscaled in training
    return _add(residual, _dropout_impl(x, p, True, mode, shape, seed, rng))


def gaussian_noise(
    x: np.ndarray,
    stddev: float,
    training: bool = True,
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`dropkit.functional.gaussian_noise` (noise from stream 1).

    ``x + stddev * z`` with ``z = dropkit.rng.normal_field(x.shape, seed)``: ``stddev * z`` in
    float64, rounded to the compute dtype, added in it and rounded to x's dtype once.

    Args:
        x: Array of a floating dtype (float16, float32 or float64).
        stddev: Standard deviation of the noise, a finite number ``>= 0``.
        training: Add the noise if ``True``; otherwise return ``x``.
        seed: Fixes the noise: an int in ``[0, 2**64)``.
        rng: A ``numpy.random.Generator`` that draws the seed when ``seed`` is not given
            (default: a fresh ``numpy.random.default_rng()``).

    Raises:
        TypeError: ``x`` is not a float16/float32/float64 ``numpy.ndarray``, ``stddev`` is not
            a real number, ``training`` is not a bool, ``rng`` is not a
            ``numpy.random.Generator``, or ``seed`` is not an int.
        ValueError: ``stddev`` negative, infinite or NaN, or a ``seed`` outside ``[0, 2**64)``
            or given together with ``rng``.

    Example:
        >>> import numpy as np, dropkit.numpy as dnp
        >>> y = dnp.gaussian_noise(np.ones(100_000), 0.3, seed=0)
        >>> round(float(y.mean()), 2), round(float(y.std()), 2)
        (1.0, 0.3)
    """
    fn = "gaussian_noise"
    x, _ = _check(fn, x, 0.0, training, seed, rng)
    stddev = v.check_stddev(fn, stddev)
    if not training or stddev == 0.0 or x.size == 0:
        return x
    return _add(x, stddev * _rng.normal_field(x.shape, _seed(seed, rng)))


__all__ += ["gaussian_noise"]
