"""depth_rates (named conventions, stage-wise depths) and schedules over training time."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

import dropkit
from dropkit.schedules import (
    Constant,
    Cosine,
    Linear,
    RateScheduler,
    Step,
    Warmup,
    depth_rates,
)


def test_linear_is_the_stochastic_depth_papers_l_over_L():
    rates = depth_rates(0.5, 10)
    assert rates == pytest.approx([0.5 * k / 10 for k in range(1, 11)])
    assert rates[0] > 0 and rates[-1] == 0.5


def test_timm_is_linspace_0_to_max():
    assert depth_rates(0.3, 7, rule="timm") == pytest.approx(torch.linspace(0, 0.3, 7).tolist())
    assert depth_rates(0.3, 1, rule="timm") == [0.0]


def test_efficientnet_is_i_over_n_and_never_reaches_max():
    rates = depth_rates(0.2, 16, rule="efficientnet")
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])
    assert rates[0] == 0.0 and rates[-1] < 0.2


def test_constant():
    assert depth_rates(0.1, 3, rule="constant") == [0.1, 0.1, 0.1]


@pytest.mark.parametrize("rule", dropkit.schedules.DEPTH_RULES)
def test_stagewise_depths_split_the_network_wide_ramp(rule):
    stages = depth_rates(0.4, [3, 3, 9, 3], rule=rule)
    assert [len(s) for s in stages] == [3, 3, 9, 3]
    assert [r for s in stages for r in s] == depth_rates(0.4, 18, rule=rule)


def test_top_level_export():
    assert dropkit.depth_rates is depth_rates


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((1.5, 3), {}, ValueError, r"^depth_rates: `max_rate` must be in \[0, 1\], got 1\.5\.$"),
        (("a", 3), {}, TypeError, (
            r"^depth_rates: `max_rate` must be a real number"
            r" in \[0, 1\], got str 'a'\.$"
        )),
        ((0.1, 0), {}, ValueError, r"^depth_rates: `depths` must be a positive int, got 0\.$"),
        ((0.1, 2.0), {}, TypeError, (
            r"^depth_rates: `depths` must be a positive"
            r" int, got float 2\.0\.$"
        )),
        ((0.1, [2, True]), {}, TypeError, (
            r"^depth_rates: `depths\[1\]` must be a"
            r" positive int, got bool True\.$"
        )),
        ((0.1, []), {}, ValueError, (
            r"^depth_rates: `depths` must name at least"
            r" one stage, got \[\]\.$"
        )),
        ((0.1, 3), {"rule": "cosine"}, ValueError, (
            r"^depth_rates: `rule` must be 'linear' or 'timm' or"
            r" 'efficientnet' or 'constant', got 'cosine'\.$"
        )),
    ],
)
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        depth_rates(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Schedules over training time



def test_linear_ramps_after_the_delay_and_holds():
    sched = Linear(0.1, 0.5, steps=4, delay=2)
    assert [sched(s) for s in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    )


def test_cosine_is_monotone_between_its_ends():
    sched = Cosine(0.0, 0.3, steps=50)
    values = [sched(s) for s in range(60)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.3)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert sched(25) == pytest.approx(0.15)


def test_step_and_warmup():
    sched = Step((0.0, 0.1, 0.3), milestones=(10, 20))
    assert [sched(s) for s in (0, 9, 10, 19, 20, 100)] == [0.0, 0.0, 0.1, 0.1, 0.3, 0.3]
    warm = Warmup(Linear(0.0, 0.4, steps=100), steps=10)
    assert warm(5) == pytest.approx(0.5 * 0.02)
    assert warm(50) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Linear(0.0, 1.5, steps=3), ValueError, r"^Linear: `end` must be in \[0, 1\]"),
        (lambda: Linear(0.0, 0.5, steps=0), ValueError, r"^Linear: `steps` must be an int >= 1"),
        (lambda: Cosine(0.0, 0.5, steps=2.5), TypeError, r"^Cosine: `steps` must be an int >= 1"),
        (lambda: Constant(-0.1), ValueError, r"^Constant: `value` must be in \[0, 1\]"),
        (lambda: Step((0.1,), milestones=(3,)), ValueError, r"^Step: `values` must have one"),
        (lambda: Step((0.1, 0.2, 0.3), milestones=(5, 3)), ValueError, r"strictly increasing"),
        (lambda: Warmup(0.1, steps=3), TypeError, r"^Warmup: `schedule` must be callable"),
    ],
)
def test_schedule_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _model():
    return torch.nn.Sequential(
        torch.nn.Linear(4, 4),
        dropkit.nn.Dropout(),
        torch.nn.Dropout(0.3),  # torch's own: not driven
        torch.nn.Sequential(dropkit.nn.DropPath(), dropkit.nn.SpatialDropout1d()),
    )


def test_scheduler_drives_every_dropkit_module_with_per_stage_scale():
    model = _model()
    sched = RateScheduler(model, Linear(0.0, 0.4, steps=4), scale={"3": 0.25, "3.1": 2.0})
    assert sched.rates() == {"1": 0.0, "3.0": 0.0, "3.1": 0.0}
    for _ in range(4):
        sched.step()
    assert sched.rates() == pytest.approx({"1": 0.4, "3.0": 0.1, "3.1": 0.8})
    assert model[2].p == 0.3


def test_scheduler_clamps_and_accepts_a_callable_scale_and_a_subset():
    model = _model()
    RateScheduler([model[1]], Constant(0.6), scale=lambda name, m: 3.0)
    assert model[1].p == 1.0 and model[3][0].p == 0.0


def test_scheduler_resume_continues_at_the_right_rate():
    a, b = _model(), _model()
    sched_a = RateScheduler(a, Cosine(0.0, 0.3, steps=20))
    for _ in range(7):
        sched_a.step()
    state = sched_a.state_dict()
    sched_b = RateScheduler(b, Cosine(0.0, 0.3, steps=20))
    sched_b.load_state_dict(state)
    assert sched_b.rates() == sched_a.rates()
    sched_a.step()
    sched_b.step()
    assert sched_b.rates() == sched_a.rates() and sched_b.steps == 8


def test_scheduler_errors():
    with pytest.raises(ValueError, match=r"^RateScheduler: found no dropkit module to drive\.$"):
        RateScheduler(torch.nn.Linear(2, 2), Constant(0.1))
    with pytest.raises(TypeError, match=r"^RateScheduler: `modules\[0\]` must be a dropkit"):
        RateScheduler([torch.nn.Dropout()], Constant(0.1))
    with pytest.raises(ValueError, match=r"^RateScheduler: `scale\['1'\]` \(the factor of the "
                                         r"modules under prefix '1'\) must be a finite real "
                                         r"number >= 0, got -1\.0\.$"):
        RateScheduler(_model(), Constant(0.1), scale={"1": -1.0})
    with pytest.raises(ValueError, match=r"^RateScheduler: the scale of module '1' must be"):
        RateScheduler(_model(), Constant(0.1), scale=lambda name, m: -1.0)
    with pytest.raises(TypeError, match=r"^RateScheduler: `schedule` must be callable"):
        RateScheduler(_model(), 0.1)


def _bad_after(step: int, value):
    """A schedule that is fine (0.1) before ``step`` and returns ``value`` from then on."""
    def schedule(s: int):
        return value if s >= step else 0.1
    schedule.__qualname__ = f"bad_after_{step}"
    return schedule


@pytest.mark.parametrize("value", [float("nan"), 5, -1, 1.5, -0.0 - 1e-9, float("inf")])
def test_scheduler_rejects_a_schedule_value_outside_0_1(value):
    with pytest.raises(ValueError, match=rf"^RateScheduler: the schedule <function bad_after_0 "
                                         rf"at 0x[0-9a-f]+> returned {value!r} at step 0; a "
                                         rf"rate must be in \[0, 1\]\.$"):
        RateScheduler(_model(), _bad_after(0, value))
    model = _model()
    sched = RateScheduler(model, _bad_after(3, value))
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match=rf"returned {value!r} at step 3;"):
        sched.step()
    assert sched.steps == 2 and set(sched.rates().values()) == {0.1}  # nothing changed
    with pytest.raises(ValueError, match=rf"returned {value!r} at step 5;"):
        sched.load_state_dict({"step": 5})
    assert sched.steps == 2
    with pytest.raises(ValueError, match=r"the schedule Warmup\(schedule=<function bad_after_0 "
                                         r".*returned nan at step 0"):
        RateScheduler(model, Warmup(_bad_after(0, float("nan")), steps=4))


@pytest.mark.parametrize("value", [None, "0.1", True, torch.tensor(0.1)])
def test_scheduler_rejects_a_schedule_value_that_is_not_a_number(value):
    with pytest.raises(TypeError, match=rf"^RateScheduler: the schedule <function bad_after_0 "
                                        rf"at 0x[0-9a-f]+> returned {type(value).__name__} .* at "
                                        rf"step 0; a rate must be a real number in \[0, 1\]\.$"):
        RateScheduler(_model(), _bad_after(0, value))


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), -0.5, True, "1", None])
def test_scheduler_rejects_a_scale_that_is_not_a_finite_number_ge_0(factor):
    prefix = re.escape(repr("0"))
    with pytest.raises(ValueError, match=rf"^RateScheduler: `scale\[{prefix}\]` \(the factor of "
                                         rf"the modules under prefix {prefix}\) must be a finite "
                                         rf"real number >= 0, got {re.escape(repr(factor))}\.$"):
        RateScheduler(_model(), Constant(0.1), scale={"0": factor})
    with pytest.raises(ValueError, match=r"`scale\['nothing'\]`"):  # even if it matches nothing
        RateScheduler(_model(), Constant(0.1), scale={"nothing": factor})
    with pytest.raises(ValueError, match=rf"^RateScheduler: the scale of module '1' must be a "
                                         rf"finite real number >= 0, got "
                                         rf"{re.escape(repr(factor))}\.$"):
        RateScheduler(_model(), Constant(0.1), scale=lambda name, m: factor)


def test_scheduler_accepts_numpy_values_and_clamps_scaled_rates():
    model = _model()
    sched = RateScheduler(model, lambda s: np.float32(0.25), scale={"1": np.float64(8.0)})
    assert sched.rates() == {"1": 1.0, "3.0": 0.25, "3.1": 0.25}


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_stepping_a_schedule_does_not_recompile():
    from torch._dynamo.utils import counters

    model = _model()
    compiled = torch.compile(model, fullgraph=True)
    sched = RateScheduler(model, Linear(0.0, 0.5, steps=5))
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(8, 3, 4)
    for _ in range(6):
        compiled(x).sum().backward()
        sched.step()
    assert counters["stats"]["unique_graphs"] == 1
