"""Port of PyTorch-NLP's LockedDropout / WeightDrop tests to dropkit.

Source: PetrochukM/PyTorch-NLP ``tests/nn/test_lock_dropout.py`` and
``tests/nn/test_weight_drop.py`` at commit 53d7edcb8e0c099efce7c2ddf8cd7c44157fcac3.

API mapping: torchnlp LockedDropout(p) (time-major input) -> dropkit.nn.LockedDropout(p,
batch_first=False); WeightDrop(module, names, dropout) -> dropkit.nn.WeightDrop(module, names,
p); WeightDropLinear(10, 10, weight_dropout=p) -> WeightDrop(nn.Linear(10, 10), "weight", p);
WeightDropLSTM/GRU(10, 10, num_layers=2, weight_dropout=p) -> WeightDrop(nn.LSTM/GRU(10, 10,
num_layers=2), ["weight_hh_l0", "weight_hh_l1"], p). The original's random sizes and rate come
from a seeded ``random.Random``; its eval check calls ``np.equal`` without asserting it, asserted
here.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dropkit import nn as dnn

RND = random.Random(0)
INPUT = torch.randn(RND.randint(1, 10), RND.randint(1, 10), RND.randint(1, 10))
PROBABILITY = RND.random()


def test_locked_dropout_init():
    dnn.LockedDropout(PROBABILITY, batch_first=False)


def test_locked_dropout_forward():
    dropout = dnn.LockedDropout(PROBABILITY, batch_first=False)
    output = dropout.forward(INPUT)
    assert output.size() == INPUT.size()
    assert output.type() == "torch.FloatTensor"


def test_locked_dropout_forward_eval():
    dropout = dnn.LockedDropout(PROBABILITY, batch_first=False).eval()
    output = dropout.forward(INPUT)
    assert np.equal(output.numpy(), INPUT.numpy()).all()


def _runs(module, input_, output=lambda out: out[0]):
    run1 = [x.sum() for x in output(module(input_)).data]
    run2 = [x.sum() for x in output(module(input_)).data]
    return run1, run2


def test_weight_drop_linear():
    x = torch.randn(2, 1, 10)
    lin = dnn.WeightDrop(torch.nn.Linear(10, 10), "weight", p=0.9)
    run1, run2 = _runs(lin, x, output=lambda out: out)
    assert run1[0] != run2[0]
    assert run1[1] != run2[1]


@pytest.mark.parametrize("rnn", [torch.nn.LSTM, torch.nn.GRU])
def test_weight_drop_lstm_gru(rnn):
    input_ = torch.randn(2, 1, 10)
    wd = dnn.WeightDrop(rnn(10, 10, num_layers=2), ["weight_hh_l0", "weight_hh_l1"], p=0.9)
    run1, run2 = _runs(wd, input_)
    # First time step, not influenced by hidden to hidden weights, should be equal
    assert pytest.approx(run1[0].item()) == pytest.approx(run2[0].item())
    # Second step should not
    assert run1[1] != run2[1]


def test_weight_drop():
    input_ = torch.randn(2, 1, 10)
    wd_lstm = dnn.WeightDrop(torch.nn.LSTM(10, 10), ["weight_hh_l0"], p=0.9)
    run1, run2 = _runs(wd_lstm, input_)
    assert pytest.approx(run1[0].item()) == pytest.approx(run2[0].item())
    assert run1[1] != run2[1]


def test_weight_drop_zero():
    input_ = torch.randn(2, 1, 10)
    wd_lstm = dnn.WeightDrop(torch.nn.LSTM(10, 10), ["weight_hh_l0"], p=0.0)
    run1, run2 = _runs(wd_lstm, input_)
    assert pytest.approx(run1[0].item()) == pytest.approx(run2[0].item())
    assert pytest.approx(run1[1].item()) == pytest.approx(run2[1].item())
