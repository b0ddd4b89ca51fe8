"""Argument checks and noise-shape rules shared by ``dropkit.functional``, ``dropkit.nn`` and
``dropkit.numpy``, so that every entry point raises the same message for the same mistake.

Convention: ``TypeError`` for a value of the wrong type, ``ValueError`` for a value of the right
type that is out of range (rank errors included). Every message starts with the name of the
function or class, names the argument, says what was expected and shows what was received.
"""

from __future__ import annotations

import builtins
import numbers
from collections.abc import Sequence

from . import rng

MODES = ("inverted", "vanilla")
DATA_FORMATS = ("channels_first", "channels_last")
_SPATIAL_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _type_name(value: object) -> str:
    """The type's name, qualified when a builtin has the same name (``numpy.bool``, not
    ``bool``, for ``np.True_``)."""
    kind = type(value)
    if kind.__module__ != "builtins" and hasattr(builtins, kind.__name__):
        return f"{kind.__module__}.{kind.__qualname__}"
    return kind.__name__


def _received(value: object) -> str:
    return f"{_type_name(value)} {value!r}"


def check_p(fn: str, p: object, name: str = "p") -> float:
    """A probability as a float in [0, 1]; rejects bools, strings, tensors, NaN and
    out-of-range values."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{fn}: `{name}` must be a real number in [0, 1], got {_received(p)}.")
    value = float(p)
    if not 0.0 <= value <= 1.0:  # also rejects NaN, and traces under torch.compile
        raise ValueError(f"{fn}: `{name}` must be in [0, 1], got {p!r}.")
    return value


def check_bool(fn: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: `{name}` must be a bool, got {_received(value)}.")
    return value


def check_choice(fn: str, name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}: `{name}` must be {allowed}, got {value!r}.")
    return value


def check_seed(
    fn: str, seed: object, generator: object = None, generator_name: str = "generator"
) -> None:
    """A seed is an int in [0, 2**64); giving both ``seed`` and a generator is an error."""
    if seed is None:
        return
    if generator is not None:
        raise ValueError(f"{fn}: pass either `seed` or `{generator_name}`, not both.")
    try:
        rng.seed_to_key(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise type(err)(f"{fn}: {err}") from None


def check_noise_shape(
    fn: str, noise_shape: Sequence[int | None] | None
) -> tuple[int | None, ...] | None:
    """A ``noise_shape`` as a tuple of positive ints and ``None``s (sizes are checked later)."""
    if noise_shape is None:
        return None
    if isinstance(noise_shape, str | bytes) or not isinstance(noise_shape, Sequence):
        raise TypeError(
            f"{fn}: `noise_shape` must be a sequence of ints or None (one per input dimension), "
            f"got {_received(noise_shape)}."
        )
    for d, entry in enumerate(noise_shape):
        if entry is None:
            continue
        if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
            raise TypeError(
                f"{fn}: `noise_shape[{d}]` must be an int or None, got {_received(entry)}."
            )
        if entry < 1:
            raise ValueError(
                f"{fn}: `noise_shape[{d}]` must be a positive int or None, got {entry}."
            )
    return tuple(None if n is None else int(n) for n in noise_shape)


def resolve_noise_shape(
    fn: str, shape: tuple[int, ...], noise_shape: Sequence[int | None] | None
) -> tuple[int, ...]:
    """Keras ``noise_shape`` semantics: one entry per axis, each 1 (shared), the input's size,
    or ``None`` (= the input's size).

    >>> resolve_noise_shape("dropout", (1, 7, 5), (1, 1, None))
    (1, 1, 5)
    """
    spec = check_noise_shape(fn, noise_shape)
    if spec is None:
        return tuple(shape)
    if len(spec) != len(shape):
        raise ValueError(
            f"{fn}: `noise_shape` must have one entry per input dimension ({len(shape)} for an "
            f"input of shape {tuple(shape)}), got {len(spec)}: {spec}."
        )
    for d, (entry, size) in enumerate(zip(spec, shape, strict=True)):
        if entry not in (None, 1, size):
            raise ValueError(
                f"{fn}: `noise_shape[{d}]` must be 1, {size} (input.shape[{d}]) or None, "
                f"got {entry}."
            )
    return tuple(size if entry is None else entry for entry, size in zip(spec, shape, strict=True))


def spatial_noise_shape(
    fn: str, shape: tuple[int, ...], spatial_dims: int, data_format: str
) -> tuple[int, ...]:
    """Noise shape that shares one decision per (sample, channel) over the spatial axes.

    Rank ``spatial_dims + 2`` is batched, rank ``spatial_dims + 1`` is unbatched; anything else
    is an error that names both accepted layouts.
    """
    check_choice(fn, "data_format", data_format, DATA_FORMATS)
    axes = _SPATIAL_AXES[spatial_dims]
    batched, unbatched = spatial_dims + 2, spatial_dims + 1
    rank = len(shape)
    if rank != batched and rank != unbatched:  # not `in`: spatial_dims may be symbolic
        if data_format == "channels_first":
            layouts = f"(N, C, {axes}) or an unbatched {unbatched}D input (C, {axes})"
        else:
            layouts = f"(N, {axes}, C) or an unbatched {unbatched}D input ({axes}, C)"
        raise ValueError(
            f"{fn}: expected a {batched}D input {layouts} with "
            f"data_format={data_format!r}, got a {len(shape)}D tensor of shape {tuple(shape)}."
        )
    lead = len(shape) - spatial_dims - 1  # 1 when batched, 0 when unbatched
    if data_format == "channels_first":
        return tuple(shape[: lead + 1]) + (1,) * spatial_dims
    return tuple(shape[:lead]) + (1,) * spatial_dims + (shape[-1],)


def timestep_noise_shape(fn: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Noise shape ``(N, T, 1, ...)`` for an input ``(N, T, *features)`` of rank >= 3."""
    if len(shape) < 3:
        raise ValueError(
            f"{fn}: expected an input (N, T, *features) of at least 3 dimensions, got a "
            f"{len(shape)}D tensor of shape {tuple(shape)}."
        )
    return tuple(shape[:2]) + (1,) * (len(shape) - 2)


def check_stddev(fn: str, stddev: object) -> float:
    """A standard deviation as a finite float >= 0; rejects bools, strings, tensors, NaN, inf
    and negative values."""
    if isinstance(stddev, bool) or not isinstance(stddev, numbers.Real):
        raise TypeError(
            f"{fn}: `stddev` must be a real number >= 0, got {_received(stddev)}."
        )
    value = float(stddev)
    if not 0.0 <= value < float("inf"):  # also rejects NaN
        raise ValueError(f"{fn}: `stddev` must be a finite number >= 0, got {stddev!r}.")
    return value
