"""Drop rates that vary with depth (:func:`depth_rates`) and with training time (schedules).

**Over training.** The DropBlock paper ramps the drop rate linearly from 0 to its target and
reports better accuracy and robustness to the choice of rate. A schedule is a callable
``step -> rate``: :class:`Constant`, :class:`Linear` (the paper's), :class:`Cosine`,
:class:`Step`, and :class:`Warmup` (a linear warm-up factor on any schedule). One
:class:`RateScheduler` drives every dropkit module of a model (or a chosen subset), with optional
per-module scaling (e.g. a quarter of the rate in stage 3, as the paper's TPU reference does),
and saves/restores its position with ``state_dict``/``load_state_dict``. Modules keep their rate
where ``torch.compile`` does not guard on it, so stepping a schedule never recompiles.

**Over depth.**

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

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from . import _validation as v
from .nn import RateModule

__all__ = [
    "DEPTH_RULES",
    "Constant",
    "Cosine",
    "Linear",
    "RateScheduler",
    "Step",
    "Warmup",
    "depth_rates",
]

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


# --------------------------------------------------------------------------- schedules over time


def _check_steps(fn: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: `{name}` must be an int >= {minimum}, got "
                        f"{type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{fn}: `{name}` must be an int >= {minimum}, got {value}.")
    return int(value)


def _progress(step: int, delay: int, steps: int) -> float:
    return min(max(step - delay, 0) / steps, 1.0)


@dataclass(frozen=True)
class Constant:
    """The same rate at every step.

    Args:
        value: The rate, in ``[0, 1]``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` outside ``[0, 1]``.

    Example:
        >>> Constant(0.1)(1000)
        0.1
    """

    value: float

    def __post_init__(self) -> None:
        v.check_p("Constant", self.value, name="value")

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class Linear:
    """``start`` for ``delay`` steps, then a straight line to ``end`` over ``steps`` steps, then
    ``end``: the DropBlock paper's schedule with ``start=0``.

    Args:
        start: The rate before and at step ``delay``, in ``[0, 1]``.
        end: The rate from step ``delay + steps`` on, in ``[0, 1]``.
        steps: Length of the ramp, an int >= 1.
        delay: Steps spent at ``start`` before the ramp, an int >= 0.

    Raises:
        TypeError: A rate that is not a real number, or ``steps``/``delay`` not an int.
        ValueError: A rate outside ``[0, 1]``, ``steps < 1`` or ``delay < 0``.

    Example:
        >>> [Linear(0.0, 0.5, steps=4)(s) for s in range(6)]
        [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    """

    start: float
    end: float
    steps: int
    delay: int = 0

    def __post_init__(self) -> None:
        v.check_p("Linear", self.start, name="start")
        v.check_p("Linear", self.end, name="end")
        _check_steps("Linear", "steps", self.steps)
        _check_steps("Linear", "delay", self.delay, minimum=0)

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * _progress(step, self.delay, self.steps)


@dataclass(frozen=True)
class Cosine:
    """Half a cosine from ``start`` to ``end`` over ``steps`` steps (after ``delay``).

    Args:
        start: The rate before and at step ``delay``, in ``[0, 1]``.
        end: The rate from step ``delay + steps`` on, in ``[0, 1]``.
        steps: Length of the ramp, an int >= 1.
        delay: Steps spent at ``start`` before the ramp, an int >= 0.

    Raises:
        TypeError: A rate that is not a real number, or ``steps``/``delay`` not an int.
        ValueError: A rate outside ``[0, 1]``, ``steps < 1`` or ``delay < 0``.

    Example:
        >>> [round(Cosine(0.0, 0.2, steps=4)(s), 4) for s in range(5)]
        [0.0, 0.0293, 0.1, 0.1707, 0.2]
    """

    start: float
    end: float
    steps: int
    delay: int = 0

    def __post_init__(self) -> None:
        v.check_p("Cosine", self.start, name="start")
        v.check_p("Cosine", self.end, name="end")
        _check_steps("Cosine", "steps", self.steps)
        _check_steps("Cosine", "delay", self.delay, minimum=0)

    def __call__(self, step: int) -> float:
        t = _progress(step, self.delay, self.steps)
        return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * t)) / 2.0


@dataclass(frozen=True)
class Step:
    """Piecewise constant: ``values[0]`` before ``milestones[0]``, ``values[i]`` from
    ``milestones[i - 1]`` on.

    Args:
        values: The rates, in ``[0, 1]``, one more than ``milestones``.
        milestones: The steps where the rate changes, strictly increasing ints >= 0.

    Raises:
        TypeError: A value that is not a real number, or a milestone that is not an int.
        ValueError: A value outside ``[0, 1]``, a negative milestone, milestones that do not
            increase strictly, or ``len(values) != len(milestones) + 1``.

    Example:
        >>> [Step((0.0, 0.1, 0.2), milestones=(2, 4))(s) for s in range(6)]
        [0.0, 0.0, 0.1, 0.1, 0.2, 0.2]
    """

    values: tuple[float, ...]
    milestones: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        for i, value in enumerate(self.values):
            v.check_p("Step", value, name=f"values[{i}]")
        for i, milestone in enumerate(self.milestones):
            _check_steps("Step", f"milestones[{i}]", milestone, minimum=0)
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(
                f"Step: `values` must have one entry more than `milestones`, got "
                f"{len(self.values)} values and {len(self.milestones)} milestones."
            )
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(
                f"Step: `milestones` must be strictly increasing, got {self.milestones}."
            )

    def __call__(self, step: int) -> float:
        return self.values[sum(step >= m for m in self.milestones)]


@dataclass(frozen=True)
class Warmup:
    """Any schedule times a linear warm-up factor ``min(1, step / steps)``.

    Args:
        schedule: The schedule to warm up, a callable ``step -> rate``.
        steps: Length of the warm-up, an int >= 1.

    Raises:
        TypeError: ``schedule`` is not callable, or ``steps`` is not an int.
        ValueError: ``steps < 1``.

    Example:
        >>> [Warmup(Constant(0.5), steps=4)(s) for s in range(6)]
        [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    """

    schedule: Callable[[int], float]
    steps: int

    def __post_init__(self) -> None:
        if not callable(self.schedule):
            raise TypeError(f"Warmup: `schedule` must be callable, got "
                            f"{type(self.schedule).__name__}.")
        _check_steps("Warmup", "steps", self.steps)

    def __call__(self, step: int) -> float:
        return self.schedule(step) * min(step / self.steps, 1.0)


def _is_factor(value: object) -> bool:
    """A scale factor: a finite real number >= 0 (not a bool)."""
    return (not isinstance(value, bool) and isinstance(value, numbers.Real)
            and math.isfinite(value) and value >= 0)


class RateScheduler:
    """Drives the drop rate ``p`` of dropkit modules from one schedule.

    Args:
        modules: A model (every dropkit module inside it is driven) or an iterable of dropkit
            modules (a chosen subset).
        schedule: A callable ``step -> rate`` (:class:`Linear`, :class:`Cosine`, ...).
        scale: Per-module factors: a mapping from a module-name prefix (as in
            ``model.named_modules()``) to a factor, the longest matching prefix winning, or a
            callable ``(name, module) -> factor``. The rate of a module is
            ``min(1, schedule(step) * factor)``. Default: factor 1 for every module.

    Call :meth:`step` once per iteration or once per epoch, whichever the schedule counts; the
    rates of step 0 are applied at construction. ``state_dict()`` holds the step, so a run
    resumed from a checkpoint continues at the right rate.

    Raises:
        TypeError: ``schedule`` is not callable, or an item of an iterable ``modules`` is not a
            dropkit module; in :meth:`step` (and at construction, for step 0), the schedule
            returned something that is not a real number.
        ValueError: No dropkit module to drive, a scale factor (a value of the ``scale``
            mapping, or what the callable returns) that is not a finite real number >= 0, or a
            schedule value outside ``[0, 1]`` or NaN (the message names the schedule, the step
            and the value; the step is not advanced and no rate is changed).

    Example:
        >>> import torch, dropkit
        >>> model = torch.nn.Sequential(dropkit.nn.Dropout(), torch.nn.Sequential(
        ...     dropkit.nn.DropPath()))
        >>> sched = RateScheduler(model, Linear(0.0, 0.2, steps=10), scale={"1": 0.5})
        >>> for _ in range(5):
        ...     sched.step()
        >>> model[0].p, model[1][0].p
        (0.1, 0.05)
        >>> RateScheduler(model, Linear(0.0, 0.2, steps=10)).state_dict()
        {'step': 0}
    """

    def __init__(
        self,
        modules: nn.Module | Iterable[nn.Module],
        schedule: Callable[[int], float],
        *,
        scale: Mapping[str, float] | Callable[[str, nn.Module], float] | None = None,
    ) -> None:
        if not callable(schedule):
            raise TypeError(f"RateScheduler: `schedule` must be callable, got "
                            f"{type(schedule).__name__}.")
        if isinstance(modules, nn.Module):
            named = [(n, m) for n, m in modules.named_modules() if isinstance(m, RateModule)]
        else:
            named = []
            for i, m in enumerate(modules):
                if not isinstance(m, RateModule):
                    raise TypeError(f"RateScheduler: `modules[{i}]` must be a dropkit module "
                                    f"(dropkit.nn.RateModule), got {type(m).__name__}.")
                named.append((str(i), m))
        if not named:
            raise ValueError("RateScheduler: found no dropkit module to drive.")
        if isinstance(scale, Mapping):
            for prefix, factor in scale.items():
                if not _is_factor(factor):
                    raise ValueError(
                        f"RateScheduler: `scale[{prefix!r}]` (the factor of the modules under "
                        f"prefix {prefix!r}) must be a finite real number >= 0, got {factor!r}."
                    )
        self.schedule = schedule
        self.targets = [(name, module, self._factor(scale, name, module))
                        for name, module in named]
        self.steps = 0
        self._apply(0)

    @staticmethod
    def _factor(scale, name: str, module: nn.Module) -> float:
        if scale is None:
            factor = 1.0
        elif callable(scale):
            factor = scale(name, module)
        else:
            matches = [k for k in scale if name == k or name.startswith(k + ".")]
            factor = scale[max(matches, key=len)] if matches else 1.0
        if not _is_factor(factor):
            raise ValueError(
                f"RateScheduler: the scale of module {name!r} must be a finite real number "
                f">= 0, got {factor!r}."
            )
        return float(factor)

    def rates(self) -> dict[str, float]:
        """The rate each driven module has now, by name."""
        return {name: module.p for name, module, _ in self.targets}

    def _apply(self, step: int) -> None:
        """Set the rates of ``step`` (checked first: nothing changes if the schedule's value is
        bad) and make it the current step."""
        base = self.schedule(step)
        if isinstance(base, bool) or not isinstance(base, numbers.Real):
            raise TypeError(
                f"RateScheduler: the schedule {self.schedule!r} returned "
                f"{type(base).__name__} {base!r} at step {step}; a rate must be a real number "
                f"in [0, 1]."
            )
        if not 0.0 <= base <= 1.0:  # also NaN
            raise ValueError(
                f"RateScheduler: the schedule {self.schedule!r} returned {base!r} at step "
                f"{step}; a rate must be in [0, 1]."
            )
        for _, module, factor in self.targets:
            module.p = min(1.0, float(base) * factor)
        self.steps = step

    def step(self) -> None:
        """Advance one step and set every driven module's rate."""
        self._apply(self.steps + 1)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.steps}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the step (and the rates that go with it)."""
        self._apply(_check_steps("RateScheduler", "state['step']", state["step"], minimum=0))
