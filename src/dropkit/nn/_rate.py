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
    to its op, which reads it at run time, so changing ``p`` (a schedule, every step, 0 and 1
    included) updates the compiled graph without recompiling it. Compiled and eager calls draw
    the same keys from the same generator state at every rate: the key is drawn inside the
    graph only when ``0 < p < 1`` ([docs/rng.md](../rng.md), section 2). A module whose ``p``
    is 0 or 1 since construction (never assigned) passes that float instead, so a compiled
    ``p = 0`` layer is no operation at all; assigning ``p`` later compiles one more graph,
    once. In eager mode the float is passed, which keeps the exact short cuts (``p = 0``
    returns the input itself). Copies (``copy.copy``, ``copy.deepcopy``, pickling) get their
    own rate tensor.

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

    _p_const = None  # "zero" or "one": p is 0 or 1 and was never assigned (str or None)

    def __init__(self, p: float) -> None:
        super().__init__()
        self._init_rate(p)

    def _init_rate(self, p: float) -> None:
        """Set the rate at construction (``__init__``, or a subclass built on another module)."""
        self._p_tensor = torch.zeros((), dtype=torch.float64)
        self.p = p
        self._p_const = {0.0: "zero", 1.0: "one"}.get(self._p_value)

    @property
    def p(self) -> float:
        return self._p_value

    @p.setter
    def p(self, value: float) -> None:
        value = v.check_p(type(self).__name__, value)
        self._p_value = value
        self._p_tensor.fill_(value)
        self._p_const = None  # a rate that was set can change again: graphs read the tensor

    def __setstate__(self, state: dict) -> None:
        # copy.copy, copy.deepcopy and unpickling restore __dict__: the copy gets its own tensor.
        super().__setstate__(state)
        self._p_tensor = torch.tensor(self._p_value, dtype=torch.float64)

    def _rate(self) -> float | Tensor:
        """What ``forward`` passes as ``p``: the float in eager mode; while compiling, the tensor
        (no guard on its value), or the float 0 or 1 of a rate never assigned (a guard on that
        string, so the graph holds nothing for ``p = 0``)."""
        if not torch.compiler.is_compiling():
            return self._p_value
        if self._p_const is None:
            return self._p_tensor
        return 0.0 if self._p_const == "zero" else 1.0
