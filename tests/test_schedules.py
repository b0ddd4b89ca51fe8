"""depth_rates: the named conventions, stage-wise depths, errors."""

from __future__ import annotations

import pytest
import torch

import dropkit
from dropkit.schedules import depth_rates


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
