"""The example scripts run and show what they claim."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_numpy_mlp_example_matches_train_and_test_expectations():
    module = runpy.run_path(str(EXAMPLES / "numpy_mlp.py"))
    n_masks = 2000
    gaps = module["main"](n_masks)
    # Mean of n Bernoulli(1/2) keeps, relative error of its estimate: sd = sqrt(p/(1-p) / n)
    # for inverted and vanilla alike; 16 hidden units, a 5-sigma bound on the largest gap.
    bound = 5 * math.sqrt(1.0 / n_masks)
    assert set(gaps) == {"vanilla", "inverted"}
    assert all(gap <= bound for gap in gaps.values()), (gaps, bound)
