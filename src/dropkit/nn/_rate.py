"""The drop rate of a module: a float for people, a tensor for compiled graphs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _validation as v


class RateModule(nn.Module):
    """Base of every dropkit module: holds the drop rate ``p``.

    ``p`` reads and writes as a float (validated on every write, with the same message as at
    construction). It is mirrored in a 0-dim float64 tensor that is neither a parameter nor a
    buffer (``state_dict()`` stays empty); under ``torch.compile`` the module passes that tensor
    to its op, which reads it at run time, so changing ``p`` (a schedule, every step) updates the
    compiled graph without recompiling it. In eager mode the float is passed, which keeps the
    exact short cuts (``p = 0`` returns the input itself).

    Args:
        p: The drop rate, in ``[0, 1]``.

    Raises:
        TypeError: ``p`` (at construction or on assignment) is not a real number.
        ValueError: ``p`` outside ``[0, 1]`` or NaN.

    Example:
        >>> import dropkit
        >>> m = dropkit.nn.Dropout(0.1)
        >>> isinstance(m, dropkit.nn.RateModule), m.p
        (True, 0.1)
        >>> m.p = 0.3  # validated; a compiled graph reads the new rate without recompiling
        >>> m.p, m.state_dict()
        (0.3, OrderedDict())
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self._p_tensor = torch.zeros((), dtype=torch.float64)
        self.p = p

    @property
    def p(self) -> float:
        return self._p_value

    @p.setter
    def p(self, value: float) -> None:
        value = v.check_p(type(self).__name__, value)
        self._p_value = value
        self._p_tensor.fill_(value)

    def _rate(self) -> float | Tensor:
        """What ``forward`` passes as ``p``: the tensor while compiling, the float otherwise."""
        return self._p_tensor if torch.compiler.is_compiling() else self._p_value
