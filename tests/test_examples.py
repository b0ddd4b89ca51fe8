"""The example scripts run and show what they claim."""

from __future__ import annotations

import math
import runpy
import time
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def one_thread():
    """The examples' models are tiny: on a busy machine extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _run(name: str, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = runpy.run_path(str(EXAMPLES / name))["main"](**kwargs)
    return result, time.perf_counter() - start


def test_cnn_dropblock_resume_example(one_thread, capsys):
    result, seconds = _run("cnn_dropblock_resume.py")
    assert result["resumed_equals_straight"] is True  # the checkpoint restores everything
    assert result["final_rate"] == pytest.approx(0.15)  # the ramp reached its end
    assert result["test_accuracy"] > 0.9
    assert "resumed run == straight run: True" in capsys.readouterr().out
    assert seconds < 120


def test_mc_dropout_uncertainty_example(one_thread):
    result, seconds = _run("mc_dropout_uncertainty.py")
    assert result["mc_accuracy"] > 0.95
    near = result["near the training blobs"]
    assert near < 0.1 < result["between two blobs"]
    assert result["far from the data"] > 5 * near
    assert seconds < 120


def test_transformer_attention_dropout_example(one_thread):
    result, seconds = _run("transformer_attention_dropout.py")
    assert result["accuracy"] > 0.9
    assert result["max_abs_diff_vs_torch"] <= 1e-6
    assert seconds < 120
