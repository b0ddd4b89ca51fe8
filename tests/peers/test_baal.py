"""Port of baal's MC-dropout tests to dropkit.

Source: baal-org/baal ``tests/bayesian/dropout_test.py`` (with the ``is_deterministic`` fixture
of ``tests/conftest.py``) at commit 7da1cfbb0bf3220492fc571af4f0a1277c915cea.

API mapping: baal.bayesian.dropout.Dropout / Dropout2d (dropout that stays on in eval) ->
dropkit.nn.Dropout / SpatialDropout2d under ``dropkit.mc.mc_dropout(model)``;
``patch_module(model, inplace)`` -> ``dropkit.convert.convert(model, copy=not inplace)`` (swaps
torch's dropout layers for dropkit's) and ``MCDropoutModule(model)`` -> ``mc_dropout(model)``
(its ``unpatch`` / context exit -> leaving the ``with`` block). ``consistent_dropout_test.py``
(masks frozen across MC samples) has no dropkit counterpart and is not ported.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import dropkit
from dropkit.convert import convert
from dropkit.mc import mc_dropout


def is_deterministic(module, input_shape):
    inp = torch.randn(*input_shape)
    pred1 = module(inp).detach().cpu().numpy()
    return all(np.allclose(pred1, module(inp).detach().cpu().numpy()) for _ in range(5))


@pytest.fixture
def a_model_with_dropout():
    return torch.nn.Sequential(
        torch.nn.Linear(10, 5),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Dropout(p=0.5), torch.nn.Linear(5, 5), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Dropout(p=0.5), torch.nn.Linear(5, 2)),
    ).eval()


def test_1d_eval_remains_stochastic():
    test_module = torch.nn.Sequential(
        torch.nn.Linear(10, 5), torch.nn.ReLU(), dropkit.nn.Dropout(p=0.5),
        torch.nn.Linear(5, 2))
    test_module.eval()
    torch.manual_seed(2019)
    with mc_dropout(test_module):
        assert not is_deterministic(test_module, (8, 10))


def test_2d_eval_remains_stochastic():
    test_module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU(), dropkit.nn.SpatialDropout2d(p=0.5),
        torch.nn.Conv2d(1, 1, 1))
    test_module.eval()
    torch.manual_seed(2019)
    with mc_dropout(test_module):
        assert not is_deterministic(test_module, (8, 1, 5, 5))


@pytest.mark.parametrize("inplace", (True, False))
def test_patch_module_replaces_all_dropout_layers(inplace, a_model_with_dropout):
    mc_test_module = convert(a_model_with_dropout, copy=not inplace).model
    # objects should be the same if inplace is True and not otherwise:
    assert (mc_test_module is a_model_with_dropout) == inplace
    assert not any(isinstance(m, torch.nn.Dropout) for m in mc_test_module.modules())
    assert any(isinstance(m, dropkit.nn.Dropout) for m in mc_test_module.modules())


@pytest.mark.parametrize("inplace", (True, False))
def test_patch_module_raise_warnings(inplace):
    test_module = torch.nn.Sequential(
        torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        convert(test_module, copy=not inplace)
        assert len(w) == 1
        assert issubclass(w[-1].category, UserWarning)


def test_module_class_replaces_dropout_layers(a_model_with_dropout):
    convert(a_model_with_dropout)
    assert not any(isinstance(m, torch.nn.Dropout) for m in a_model_with_dropout.modules())
    assert any(isinstance(m, dropkit.nn.Dropout) for m in a_model_with_dropout.modules())
    torch.manual_seed(2019)
    with mc_dropout(a_model_with_dropout) as test_mc_module:
        assert not is_deterministic(test_mc_module, (8, 10))
    # "unpatch": outside the block the model is back in eval and deterministic
    assert is_deterministic(a_model_with_dropout.eval(), (8, 10))


def test_context_manager(a_model_with_dropout):
    convert(a_model_with_dropout)
    with mc_dropout(a_model_with_dropout) as model:
        assert not is_deterministic(model.eval(), (8, 10))
    assert is_deterministic(model.eval(), (8, 10))
