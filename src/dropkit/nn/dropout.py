"""``torch.nn``-style modules for dropout, spatial, timestep, Gaussian and alpha dropout.

Each module registers no parameters or buffers (its ``state_dict`` is empty, as for
``torch.nn.Dropout``), follows ``train()``/``eval()``, and accepts ``seed=``/``generator=`` in
``forward`` to fix or draw its mask. ``p`` can be changed at any time (see
:class:`dropkit.nn.RateModule`), also under ``torch.compile`` without recompiling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _validation as v
from .. import functional as F
from . import _jit
from ._rate import RateModule


def _jit_noise_spec(noise_shape: tuple[int | None, ...] | None) -> list[int]:
    """``noise_shape`` for TorchScript: ``-1`` for ``None`` entries, ``[-2]`` for no
    ``noise_shape`` (the input's shape)."""
    return [-2] if noise_shape is None else [-1 if n is None else n for n in noise_shape]


def _jit_resolve(name: str, shape: list[int], spec: list[int]) -> list[int]:
    """:func:`dropkit._validation.resolve_noise_shape` in TorchScript."""
    if len(spec) == 1 and spec[0] == -2:
        return shape
    if len(spec) != len(shape):
        raise ValueError(name + ": `noise_shape` must have one entry per input dimension")
    out: list[int] = []
    for d in range(len(shape)):
        n = spec[d]
        if n != -1 and n != 1 and n != shape[d]:
            raise ValueError(name + ": `noise_shape` does not fit the input's shape")
        out.append(shape[d] if n == -1 else n)
    return out


class _DropoutNd(_jit.Forward, RateModule):
    """Shared settings: ``p`` and ``inplace``, checked at construction."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__(p)
        self.inplace = v.check_bool(type(self).__name__, "inplace", inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class _ModeDropout(_DropoutNd):
    def __init__(self, p: float = 0.5, inplace: bool = False, *, mode: str = "inverted") -> None:
        super().__init__(p, inplace)
        self.mode = v.check_choice(type(self).__name__, "mode", mode, v.MODES)

    def _jit_drop(
        self,
        input: Tensor,
        noise: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """:func:`dropkit.functional.dropout` in TorchScript, with the noise shape resolved."""
        inverted = self.mode == "inverted"
        if not self.training:
            return input if inverted else _jit.vanilla_eval(input, self._p_value, self.inplace)
        return _jit.rate_dropout(input, self._p_value, noise, "inverted" if inverted else
                                 "unscaled", self.inplace, seed, generator)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}"


class _NoiseShaped:
    """The ``noise_shape`` setting (validated on every write), mirrored for TorchScript."""

    __jit_unused_properties__ = ("p", "noise_shape")

    @property
    def noise_shape(self) -> tuple[int | None, ...] | None:
        return self._noise_shape

    @noise_shape.setter
    def noise_shape(self, value: Sequence[int | None] | None) -> None:
        self._noise_shape = v.check_noise_shape(type(self).__name__, value)
        self._noise_spec = _jit_noise_spec(self._noise_shape)


class Dropout(_NoiseShaped, _ModeDropout):
    """Zero each element (or each ``noise_shape`` cell) with probability ``p``.

    See :func:`dropkit.functional.dropout` for the arguments, ``mode`` and ``noise_shape``
    semantics. ``noise_shape`` may use ``None`` for axes whose size varies (the batch).

    Args:
        p: Probability of dropping an element (not the keep probability), in ``[0, 1]``.
        inplace: Write the result into the input.
        mode: ``"inverted"`` (default) or ``"vanilla"``.
        noise_shape: Keras-style shared axes: one entry per input axis, each ``1``, the axis'
            size or ``None``; ``None`` (default) for the input's shape.

    Shape:
        - Input: ``(*)``. Output: same shape.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``inplace``, ``mode`` or
            ``noise_shape``; in ``forward`` when ``noise_shape`` does not fit the input.

    Example:
        >>> import torch, dropkit
        >>> m = dropkit.nn.Dropout(0.2, noise_shape=(None, 1, None))
        >>> m
        Dropout(p=0.2, inplace=False, mode='inverted', noise_shape=(None, 1, None))
        >>> m(torch.ones(4, 7, 5), seed=0).shape
        torch.Size([4, 7, 5])
        >>> m.eval()(torch.ones(1, 1, 2)).tolist()
        [[[1.0, 1.0]]]
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        mode: str = "inverted",
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(p, inplace, mode=mode)
        self.noise_shape = noise_shape

    def _forward(self, input, seed, generator):
        return F.dropout(input, self._rate(), self.training, self.inplace, mode=self.mode,
                         noise_shape=self.noise_shape, seed=seed, generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self._jit_drop(input, _jit_resolve("Dropout", shape, self._noise_spec), seed,
                              generator)

    def extra_repr(self) -> str:
        extra = "" if self.noise_shape is None else f", noise_shape={self.noise_shape}"
        return super().extra_repr() + extra


class _SpatialDropout(_ModeDropout):
    _function = staticmethod(F.spatial_dropout2d)
    _spatial_dims = 2
    __constants__ = ("_spatial_dims",)

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        data_format: str = "channels_first",
        mode: str = "inverted",
    ) -> None:
        super().__init__(p, inplace, mode=mode)
        self.data_format = v.check_choice(
            type(self).__name__, "data_format", data_format, v.DATA_FORMATS
        )

    def _forward(self, input, seed, generator):
        return self._function(input, self._rate(), self.training, self.inplace,
                              data_format=self.data_format, mode=self.mode, seed=seed,
                              generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        dims, rank = self._spatial_dims, len(shape)
        _jit.check_spatial_rank("SpatialDropout", shape, dims)
        lead = rank - dims - 1  # 1 when batched, 0 when unbatched
        if self.data_format == "channels_first":
            noise = shape[: lead + 1] + [1] * dims
        else:
            noise = shape[:lead] + [1] * dims + [shape[rank - 1]]
        return self._jit_drop(input, noise, seed, generator)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, data_format={self.data_format!r}"


class SpatialDropout1d(_SpatialDropout):
    """Drop whole channels of a sequence: ``(N, C, L)`` or, with ``data_format="channels_last"``,
    ``(N, L, C)`` as text arrives (samples, sequence_length, embedding_dim); unbatched inputs
    drop the batch axis. See :func:`dropkit.functional.spatial_dropout1d`.

    Args:
        p: Probability of dropping a channel (not the keep probability), in ``[0, 1]``.
        inplace: Write the result into the input.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        mode: ``"inverted"`` (default) or ``"vanilla"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``inplace``, ``data_format`` or
            ``mode``; in ``forward`` as :func:`dropkit.functional.spatial_dropout1d` (a wrong
            rank, for example).

    Example:
        >>> import torch, dropkit
        >>> m = dropkit.nn.SpatialDropout1d(0.5, data_format="channels_last")
        >>> y = m(torch.ones(1, 7, 5), seed=0)
        >>> bool(((y == 0).all(1) | (y == 2).all(1)).all())  # whole embedding dims dropped
        True
    """

    _function = staticmethod(F.spatial_dropout1d)
    _spatial_dims = 1


class SpatialDropout2d(_SpatialDropout):
    """Drop whole channels of an image batch ``(N, C, H, W)`` (or ``(N, H, W, C)`` with
    ``data_format="channels_last"``; unbatched ``(C, H, W)``). See
    :func:`dropkit.functional.spatial_dropout2d`.

    Args:
        p: Probability of dropping a channel (not the keep probability), in ``[0, 1]``.
        inplace: Write the result into the input.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        mode: ``"inverted"`` (default) or ``"vanilla"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``inplace``, ``data_format`` or
            ``mode``; in ``forward`` as :func:`dropkit.functional.spatial_dropout2d` (a wrong
            rank, for example).

    Example:
        >>> import torch, dropkit
        >>> dropkit.nn.SpatialDropout2d(0.1)
        SpatialDropout2d(p=0.1, inplace=False, mode='inverted', data_format='channels_first')
    """

    _function = staticmethod(F.spatial_dropout2d)
    _spatial_dims = 2


class SpatialDropout3d(_SpatialDropout):
    """Drop whole channels of a volume batch ``(N, C, D, H, W)`` (or ``(N, D, H, W, C)``;
    unbatched ``(C, D, H, W)``). See :func:`dropkit.functional.spatial_dropout3d`.

    Args:
        p: Probability of dropping a channel (not the keep probability), in ``[0, 1]``.
        inplace: Write the result into the input.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.
        mode: ``"inverted"`` (default) or ``"vanilla"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``inplace``, ``data_format`` or
            ``mode``; in ``forward`` as :func:`dropkit.functional.spatial_dropout3d` (a wrong
            rank, for example).

    Example:
        >>> import torch, dropkit
        >>> dropkit.nn.SpatialDropout3d(0.1)(torch.ones(1, 2, 3, 3, 3), seed=0).shape
        torch.Size([1, 2, 3, 3, 3])
    """

    _function = staticmethod(F.spatial_dropout3d)
    _spatial_dims = 3


class TimestepDropout(_ModeDropout):
    """Drop whole timesteps of ``(N, T, *features)``; see
    :func:`dropkit.functional.timestep_dropout`.

    Args:
        p: Probability of dropping a timestep (not the keep probability), in ``[0, 1]``.
        inplace: Write the result into the input.
        mode: ``"inverted"`` (default) or ``"vanilla"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``inplace`` or ``mode``; in
            ``forward`` as :func:`dropkit.functional.timestep_dropout` (e.g. rank < 3).

    Example:
        >>> import torch, dropkit
        >>> y = dropkit.nn.TimestepDropout(0.5)(torch.ones(1, 7, 5), seed=0)
        >>> bool(((y == 0).all(-1) | (y == 2).all(-1)).all())  # whole rows dropped
        True
    """

    def _forward(self, input, seed, generator):
        return F.timestep_dropout(input, self._rate(), self.training, self.inplace, mode=self.mode,
                                  seed=seed, generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if len(shape) < 3:
            raise ValueError("TimestepDropout: expected an input (N, T, *features) of at least 3 "
                             "dimensions, got a " + str(len(shape)) + "D tensor.")
        return self._jit_drop(input, shape[:2] + [1] * (len(shape) - 2), seed, generator)


class GaussianDropout(_DropoutNd):
    """Multiplicative Gaussian noise ``N(1, p / (1 - p))``; see
    :func:`dropkit.functional.gaussian_dropout`.

    Args:
        p: Equivalent drop rate, in ``[0, 1]``; the noise's variance is ``p / (1 - p)``.
        inplace: Write the result into the input.

    Raises:
        TypeError, ValueError: At construction for a bad ``p`` or ``inplace``; in ``forward``
            as :func:`dropkit.functional.gaussian_dropout`.

    Example:
        >>> import torch, dropkit
        >>> dropkit.nn.GaussianDropout(0.1).eval()(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    def _forward(self, input, seed, generator):
        return F.gaussian_dropout(input, self._rate(), self.training, self.inplace, seed=seed,
                                  generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if not self.training:
            return input
        return _jit.rate_dropout(input, self._p_value, shape, "gaussian", self.inplace, seed,
                                 generator)


class AlphaDropout(_NoiseShaped, _DropoutNd):
    """Alpha dropout for SELU networks; see :func:`dropkit.functional.alpha_dropout`.
    ``noise_shape`` (as in :class:`Dropout`) shares decisions over axes: ``(None, None, 1, 1)``
    on ``(N, C, H, W)`` is torch's ``FeatureAlphaDropout``.

    Args:
        p: Probability of dropping an element, in ``[0, 1]``.
        inplace: Write the result into the input.
        noise_shape: Keras-style shared axes, as in :class:`Dropout`.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``inplace`` or
            ``noise_shape``; in ``forward`` when ``noise_shape`` does not fit the input.

    Example:
        >>> import torch, dropkit
        >>> dropkit.nn.AlphaDropout(0.1)
        AlphaDropout(p=0.1, inplace=False)
        >>> dropkit.nn.AlphaDropout(0.1, noise_shape=(None, None, 1, 1))
        AlphaDropout(p=0.1, inplace=False, noise_shape=(None, None, 1, 1))
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(p, inplace)
        self.noise_shape = noise_shape

    def _forward(self, input, seed, generator):
        return F.alpha_dropout(input, self._rate(), self.training, self.inplace,
                               noise_shape=self.noise_shape, seed=seed, generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        noise = _jit_resolve("AlphaDropout", shape, self._noise_spec)
        if not self.training:
            return input
        return _jit.rate_dropout(input, self._p_value, noise, "alpha", self.inplace, seed,
                                 generator)

    def extra_repr(self) -> str:
        extra = "" if self.noise_shape is None else f", noise_shape={self.noise_shape}"
        return super().extra_repr() + extra


class GaussianNoise(torch.nn.Module):
    """Additive zero-mean Gaussian noise ``N(0, stddev**2)`` in training, the identity in eval
    (Keras' ``GaussianNoise``); see :func:`dropkit.functional.gaussian_noise`.

    Like the other dropkit modules it registers no parameters or buffers (empty ``state_dict``)
    and accepts ``seed=``/``generator=`` in ``forward``.

    Args:
        stddev: Standard deviation of the noise, a finite number ``>= 0`` (validated on every
            assignment).

    Shape:
        - Input: ``(*)``. Output: same shape.

    Raises:
        TypeError, ValueError: At construction (or assignment) for a bad ``stddev``; in
            ``forward`` as :func:`dropkit.functional.gaussian_noise`.

    Example:
        >>> import torch, dropkit
        >>> m = dropkit.nn.GaussianNoise(0.1)
        >>> m
        GaussianNoise(stddev=0.1)
        >>> m(torch.zeros(3), seed=0).shape, m.eval()(torch.ones(2)).tolist()
        (torch.Size([3]), [1.0, 1.0])
    """

    def __init__(self, stddev: float) -> None:
        super().__init__()
        self.stddev = stddev

    @property
    def stddev(self) -> float:
        return self._stddev

    @stddev.setter
    def stddev(self, value: float) -> None:
        self._stddev = v.check_stddev(type(self).__name__, value)

    def forward(
        self, input: Tensor, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return F.gaussian_noise(input, self._stddev, self.training, seed=seed,
                                generator=generator)

    def extra_repr(self) -> str:
        return f"stddev={self.stddev}"
