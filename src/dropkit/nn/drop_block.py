"""DropBlock modules: settings checked at construction, one function call in ``forward``.

Like the other dropkit modules they register no parameters or buffers (empty ``state_dict``),
follow ``train()``/``eval()``, and accept ``seed=``/``generator=`` in ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _drop_block as F
from .. import _drop_block_numpy as spec
from .. import _validation as v
from . import _jit
from ._rate import RateModule

__all__ = ["DropBlock1d", "DropBlock2d", "DropBlock3d"]


class _DropBlockNd(_jit.Forward, RateModule):
    _spatial_dims = 2
    __constants__ = ("_spatial_dims",)
    _function = staticmethod(F.drop_block2d)

    def __init__(
        self,
        p: float = 0.1,
        block_size: int | Sequence[int] = 7,
        inplace: bool = False,
        *,
        per_channel: bool = True,
        scale: str = "batch",
        data_format: str = "channels_first",
    ) -> None:
        super().__init__(p)
        name = type(self).__name__
        block = spec.check_block_size(name, block_size, self._spatial_dims)
        self.block_size = block if isinstance(block_size, tuple | list) else block[0]
        self._block = list(block)  # for TorchScript
        self.inplace = v.check_bool(name, "inplace", inplace)
        spec.check_options(name, per_channel, scale, data_format)
        self.per_channel = per_channel
        self.scale = scale
        self.data_format = data_format

    def _forward(self, input, seed, generator):
        return self._function(input, self._rate(), self.block_size, self.training, self.inplace,
                              per_channel=self.per_channel, scale=self.scale,
                              data_format=self.data_format, seed=seed, generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        _jit.check_spatial_rank("DropBlock", shape, self._spatial_dims)
        p = self._p_value
        if not self.training or _jit.is_empty(input) or p == 0.0:
            return input
        key = _jit.key(seed, generator, p != 1.0)
        out = torch.ops.dropkit.drop_block(input, key, torch.full((), p, dtype=torch.float64),
                                           self._block, self.per_channel, self.scale,
                                           self.data_format == "channels_last")
        return input.copy_(out) if self.inplace else out

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}, "
            f"per_channel={self.per_channel}, scale={self.scale!r}, "
            f"data_format={self.data_format!r}"
        )


class DropBlock1d(_DropBlockNd):
    """DropBlock over sequences ``(N, C, L)`` (or ``(N, L, C)`` with
    ``data_format="channels_last"``; unbatched inputs drop the batch axis): drops contiguous
    runs of ``block_size`` steps, with the seed rate calibrated so that the expected dropped
    fraction is ``p``. See ``dropkit.functional.drop_block1d``.

    Args:
        p: Expected fraction of units to drop, in ``[0, 1]`` (default 0.1).
        block_size: Block side: an int, or one int per spatial axis (default 7).
        inplace: Write the result into the input.
        per_channel: One mask per channel (default) or, if ``False``, one per sample.
        scale: ``"batch"`` (default), ``"expected"`` or ``"none"``; see the function.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``block_size``, ``inplace``,
            ``per_channel``, ``scale`` or ``data_format``; in ``forward`` as
            ``dropkit.functional.drop_block1d`` (e.g. a wrong rank).

    Example:
        >>> import torch
        >>> from dropkit.nn.drop_block import DropBlock1d
        >>> m = DropBlock1d(0.2, block_size=4)
        >>> m
        DropBlock1d(p=0.2, block_size=4, inplace=False, per_channel=True, scale='batch', data_format='channels_first')
        >>> m(torch.ones(2, 3, 50), seed=0).shape
        torch.Size([2, 3, 50])
    """  # noqa: E501

    _spatial_dims = 1
    _function = staticmethod(F.drop_block1d)


class DropBlock2d(_DropBlockNd):
    """DropBlock over images ``(N, C, H, W)`` (or ``(N, H, W, C)``; unbatched ``(C, H, W)``):
    drops ``block_size`` squares (or ``(bh, bw)`` rectangles), with the seed rate calibrated so
    that the expected dropped fraction is ``p``. See ``dropkit.functional.drop_block2d``.

    Args:
        p: Expected fraction of units to drop, in ``[0, 1]`` (default 0.1).
        block_size: Block side: an int, or one int per spatial axis (default 7).
        inplace: Write the result into the input.
        per_channel: One mask per channel (default) or, if ``False``, one per sample.
        scale: ``"batch"`` (default), ``"expected"`` or ``"none"``; see the function.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``block_size``, ``inplace``,
            ``per_channel``, ``scale`` or ``data_format``; in ``forward`` as
            ``dropkit.functional.drop_block2d`` (e.g. a wrong rank).

    Example:
        >>> import torch
        >>> from dropkit.nn.drop_block import DropBlock2d
        >>> m = DropBlock2d(0.1, block_size=(3, 5), per_channel=False)
        >>> m.eval()(torch.ones(1, 2, 8, 8)).sum().item()
        128.0
    """

    _spatial_dims = 2
    _function = staticmethod(F.drop_block2d)


class DropBlock3d(_DropBlockNd):
    """DropBlock over volumes ``(N, C, D, H, W)`` (or ``(N, D, H, W, C)``; unbatched
    ``(C, D, H, W)``). See ``dropkit.functional.drop_block3d``.

    Args:
        p: Expected fraction of units to drop, in ``[0, 1]`` (default 0.1).
        block_size: Block side: an int, or one int per spatial axis (default 7).
        inplace: Write the result into the input.
        per_channel: One mask per channel (default) or, if ``False``, one per sample.
        scale: ``"batch"`` (default), ``"expected"`` or ``"none"``; see the function.
        data_format: ``"channels_first"`` (default) or ``"channels_last"``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``block_size``, ``inplace``,
            ``per_channel``, ``scale`` or ``data_format``; in ``forward`` as
            ``dropkit.functional.drop_block3d`` (e.g. a wrong rank).

    Example:
        >>> import torch
        >>> from dropkit.nn.drop_block import DropBlock3d
        >>> DropBlock3d(0.1, block_size=(1, 3, 3))(torch.ones(1, 2, 4, 6, 6), seed=0).shape
        torch.Size([1, 2, 4, 6, 6])
    """

    _spatial_dims = 3
    _function = staticmethod(F.drop_block3d)
