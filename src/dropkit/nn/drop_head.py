"""``DropHead``: drop whole attention heads (Zhou et al., 2020, "Scheduled DropHead")."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional as F
from . import _jit
from ._rate import RateModule


class DropHead(_jit.Forward, RateModule):
    """Drop whole heads of per-head attention outputs ``(N, H, L, E)``, one decision per
    (sample, head); see :func:`dropkit.functional.drop_head` (dropout with noise shape
    ``(N, H, 1, 1)``, kept heads scaled by ``1 / (1 - p)``, not the paper's ``H / kept``).

    Place it on the attention output before the heads are merged (``(N, H, L, E) ->
    (N, L, H * E)``) and projected. A schedule (the paper's: ``p`` rising then falling over
    training) can set ``p`` every step; under ``torch.compile`` that does not recompile.

    Args:
        p: Probability of dropping a head, in ``[0, 1]``.

    Raises:
        TypeError, ValueError: At construction for a bad ``p``; in ``forward`` as
            :func:`dropkit.functional.drop_head` (e.g. an input that is not 4D).

    Example:
        >>> import torch, dropkit
        >>> dropkit.nn.DropHead(0.1)
        DropHead(p=0.1)
        >>> dropkit.nn.DropHead(0.1).eval()(torch.ones(1, 2, 1, 1)).tolist()
        [[[[1.0]], [[1.0]]]]
    """

    def _forward(self, input, seed, generator):
        return F.drop_head(input, self._rate(), self.training, seed=seed, generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if len(shape) != 4:
            raise ValueError("DropHead: expected per-head outputs (N, H, L, E), a 4D input, got "
                             "a " + str(len(shape)) + "D tensor.")
        if not self.training:
            return input
        return _jit.rate_dropout(input, self._p_value, [shape[0], shape[1], 1, 1], "inverted",
                                 False, seed, generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"
