"""Drop rates that vary with depth: :func:`depth_rates`.

Stochastic depth gives deeper blocks higher drop rates. Three conventions are in use and they
differ in where the ramp starts and ends; :func:`depth_rates` names each one:

* ``"linear"``: the stochastic-depth paper (Huang et al., 2016): block ``l = 1 .. L`` gets
  ``l / L * max_rate``, so the first block already drops ``max_rate / L`` and the last drops
  ``max_rate``.
* ``"timm"``: timm and ConvNeXt, ``torch.linspace(0, max_rate, L)``: the first block never
  drops, the last drops ``max_rate``.
* ``"efficientnet"``: EfficientNet's ``drop_connect_rate * i / L`` for ``i = 0 .. L - 1``: the
  first block never drops and the last drops ``max_rate * (L - 1) / L``, never ``max_rate``.
* ``"constant"``: every block drops ``max_rate``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from . import _validation as v

__all__ = ["DEPTH_RULES", "depth_rates"]

DEPTH_RULES = ("linear", "timm", "efficientnet", "constant")


def _rate(rule: str, max_rate: float, index: int, total: int) -> float:
    if rule == "linear":
        return max_rate * (index + 1) / total
    if rule == "timm":
        return max_rate * index / (total - 1) if total > 1 else 0.0
    if rule == "efficientnet":
        return max_rate * index / total
    return max_rate


def _check_depth(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: `{name}` must be a positive int, got {type(value).__name__} {value!r}."
        )
    if value < 1:
        raise ValueError(f"{fn}: `{name}` must be a positive int, got {value}.")
    return int(value)


def depth_rates(
    max_rate: float, depths: int | Sequence[int], *, rule: str = "linear"
) -> list[float] | list[list[float]]:
    """Per-block drop rates for a network of ``depths`` blocks, by a named convention.

    Args:
        max_rate: The rate that sets the scale of the ramp (the last block's rate for
            ``"linear"`` and ``"timm"``), in ``[0, 1]``.
        depths: The number of blocks, or a sequence with the number of blocks of each stage.
            Stage-wise depths ramp over all blocks of the network and return one list per stage.
        rule: ``"linear"`` (the stochastic-depth paper), ``"timm"`` (timm/ConvNeXt linspace),
            ``"efficientnet"`` (EfficientNet's ``i / N``) or ``"constant"``.

    Returns:
        A list of rates (``depths`` an int) or a list of lists (one per stage).

    Raises:
        TypeError: ``max_rate`` is not a real number, or a depth is not an int.
        ValueError: ``max_rate`` outside ``[0, 1]``, a depth below 1, no stage, or an unknown
            ``rule``.

    Example:
        >>> depth_rates(0.5, 4)
        [0.125, 0.25, 0.375, 0.5]
        >>> depth_rates(0.5, 5, rule="timm")
        [0.0, 0.125, 0.25, 0.375, 0.5]
        >>> depth_rates(0.5, 4, rule="efficientnet")
        [0.0, 0.125, 0.25, 0.375]
        >>> depth_rates(0.5, [1, 2], rule="timm")
        [[0.0], [0.25, 0.5]]
    """
    fn = "depth_rates"
    max_rate = v.check_p(fn, max_rate, name="max_rate")
    v.check_choice(fn, "rule", rule, DEPTH_RULES)
    if isinstance(depths, Sequence) and not isinstance(depths, str | bytes):
        stages = [_check_depth(fn, f"depths[{i}]", d) for i, d in enumerate(depths)]
        if not stages:
            raise ValueError(f"{fn}: `depths` must name at least one stage, got {depths!r}.")
    else:
        stages = [_check_depth(fn, "depths", depths)]
    total = sum(stages)
    rates = [_rate(rule, max_rate, i, total) for i in range(total)]
    if not isinstance(depths, Sequence):
        return rates
    out, start = [], 0
    for n in stages:
        out.append(rates[start:start + n])
        start += n
    return out
