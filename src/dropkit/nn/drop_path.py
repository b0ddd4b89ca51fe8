"""``DropPath``: stochastic depth for residual branches (Huang et al., 2016)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validation as v
from .. import functional as F
from . import _jit
from ._rate import RateModule


class DropPath(_jit.Forward, RateModule):
    """Drop whole samples (``mode="row"``) or the whole batch (``mode="batch"``) of a residual
    branch; see :func:`dropkit.functional.drop_path`.

    Args:
        p: Probability of dropping, in ``[0, 1]``. Default 0 (as timm's ``DropPath``), so a
            schedule such as :func:`dropkit.depth_rates` sets it per block.
        mode: ``"row"`` (one decision per sample) or ``"batch"``.
        scale_by_keep: Scale kept samples by ``1 / (1 - p)``.
        sync_ranks: Same decisions on every rank under ``torch.distributed`` (see
            :func:`dropkit.functional.drop_path`); by default each rank draws its own.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``, ``mode``, ``scale_by_keep`` or
            ``sync_ranks``; in ``forward`` as :func:`dropkit.functional.drop_path`.

    Example:
        >>> import torch, dropkit
        >>> dropkit.nn.DropPath(0.1)
        DropPath(p=0.1, mode='row', scale_by_keep=True)
        >>> dropkit.nn.DropPath(0.1).eval()(torch.ones(2, 3)).tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(
        self,
        p: float = 0.0,
        *,
        mode: str = "row",
        scale_by_keep: bool = True,
        sync_ranks: bool = False,
    ) -> None:
        super().__init__(p)
        name = type(self).__name__
        self.mode = v.check_choice(name, "mode", mode, F.DROP_PATH_MODES)
        self.scale_by_keep = v.check_bool(name, "scale_by_keep", scale_by_keep)
        self.sync_ranks = v.check_bool(name, "sync_ranks", sync_ranks)

    def _forward(self, input, seed, generator):
        return F.drop_path(input, self._rate(), self.training, mode=self.mode,
                           scale_by_keep=self.scale_by_keep, sync_ranks=self.sync_ranks,
                           seed=seed, generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if len(shape) == 0:
            raise ValueError("DropPath: expected an input (N, *) with a batch dimension, got a "
                             "0D tensor.")
        if not self.training:
            return input
        noise = [shape[0] if self.mode == "row" else 1] + [1] * (len(shape) - 1)
        kind = "inverted" if self.scale_by_keep else "unscaled"
        return _jit.rate_dropout(input, self._p_value, noise, kind, False, seed, generator)

    def extra_repr(self) -> str:
        extra = ", sync_ranks=True" if self.sync_ranks else ""
        return f"p={self.p}, mode={self.mode!r}, scale_by_keep={self.scale_by_keep}{extra}"
