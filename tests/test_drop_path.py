"""DropPath / stochastic depth: semantics, statistics, structure, gradients, errors, module."""

from __future__ import annotations

import pickle

import pytest
import torch

import dropkit
import dropkit.functional as DF
from dropkit import rng
from helpers import BACKENDS, DTYPES, assert_keep_rate, run_on

P_EFF = rng.effective_p(rng.threshold(0.3))
SCALE = rng.inverted_scale(rng.threshold(0.3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_mode_drops_whole_samples_at_the_binomial_rate(backend):
    x = torch.ones(20_000, 3, 4)
    y = run_on(backend, DF.drop_path, x, 0.3, seed=11)
    per_sample = y.reshape(len(y), -1)
    kept = (per_sample == SCALE).all(1)
    dropped = (per_sample == 0).all(1)
    assert bool((kept | dropped).all())
    assert_keep_rate(int(kept.sum()), len(y), P_EFF)


def test_batch_mode_drops_the_whole_batch_at_the_binomial_rate():
    x = torch.ones(5, 2)
    kept = 0
    for seed in range(3000):
        y = DF.drop_path(x, 0.3, mode="batch", seed=seed)
        assert bool((y == 0).all()) or bool((y == SCALE).all())
        kept += int(bool((y != 0).all()))
    assert_keep_rate(kept, 3000, P_EFF)


def test_row_decisions_are_the_dropout_field_of_noise_shape_n_1():
    x = torch.randn(64, 5, 7)
    expected = DF.dropout(x, 0.3, noise_shape=(64, 1, 1), seed=5)
    assert torch.equal(DF.drop_path(x, 0.3, seed=5), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backends_bit_identical(dtype):
    x = torch.randn(33, 4, 5).to(dtype)
    for mode in ("row", "batch"):
        a = run_on("numba", DF.drop_path, x, 0.4, mode=mode, seed=2**63 + 1)
        b = run_on("torch", DF.drop_path, x, 0.4, mode=mode, seed=2**63 + 1)
        assert torch.equal(a, b)


def test_scale_by_keep_false_leaves_kept_samples_unscaled():
    x = torch.randn(200, 3)
    y = DF.drop_path(x, 0.3, scale_by_keep=False, seed=1)
    kept = (y != 0).any(1)
    assert torch.equal(y[kept], x[kept])
    assert bool((y[~kept] == 0).all())


def test_training_defaults_to_true_and_eval_or_p0_return_the_input():
    x = torch.randn(8, 3)
    assert not torch.equal(DF.drop_path(x, 0.5, seed=0), x)  # applied without training=...
    assert DF.drop_path(x, 0.5, training=False) is x
    assert DF.drop_path(x, 0.0) is x


def test_p1_gives_zeros_and_a_zero_gradient_even_for_inf():
    x = torch.tensor([[float("inf"), 1.0], [float("nan"), -2.0]], requires_grad=True)
    y = DF.drop_path(x, 1.0)
    assert torch.equal(y, torch.zeros(2, 2))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(2, 2))


def test_gradient_is_mask_times_scale_and_gradcheck():
    x = torch.randn(50, 3, requires_grad=True)
    y = DF.drop_path(x, 0.3, seed=9)
    y.backward(torch.ones_like(y))
    mask = DF.drop_path(torch.ones(50, 3), 0.3, seed=9)
    assert torch.equal(x.grad, mask)
    x64 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: DF.drop_path(t, 0.4, seed=2), (x64,))


def test_residual_use_skips_the_block_for_dropped_samples():
    x = torch.randn(100, 8)
    branch = torch.randn(100, 8)
    out = x + DF.drop_path(branch, 0.5, seed=4)
    skipped = (out == x).all(1)
    assert 0 < int(skipped.sum()) < 100
    assert torch.allclose(out[~skipped], x[~skipped] + 2 * branch[~skipped])


def test_empty_input_passes_through():
    x = torch.ones(0, 3)
    assert DF.drop_path(x, 0.5) is x


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": 1.5}, ValueError, r"^drop_path: `p` must be in \[0, 1\], got 1\.5\.$"),
        ({"p": "a"}, TypeError, (
            r"^drop_path: `p` must be a real number in"
            r" \[0, 1\], got str 'a'\.$"
        )),
        ({"p": 0.1, "mode": "col"}, ValueError, (
            r"^drop_path: `mode` must be 'row' or"
            r" 'batch', got 'col'\.$"
        )),
        ({"p": 0.1, "scale_by_keep": 1}, TypeError, (
            r"^drop_path: `scale_by_keep` must be a"
            r" bool, got int 1\.$"
        )),
    ],
)
def test_function_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        DF.drop_path(torch.ones(2, 2), **kwargs)


def test_zero_dim_input_is_an_error():
    with pytest.raises(ValueError, match=(
        r"^drop_path: expected an input \(N, \*\) with a"
        r" batch dimension, got a 0D tensor\.$"
    )):
        DF.drop_path(torch.tensor(1.0), 0.1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": -0.1}, ValueError, r"^DropPath: `p` must be in \[0, 1\], got -0\.1\.$"),
        ({"mode": "x"}, ValueError, r"^DropPath: `mode` must be 'row' or 'batch', got 'x'\.$"),
        ({"scale_by_keep": None}, TypeError, (
            r"^DropPath: `scale_by_keep` must be a"
            r" bool, got NoneType None\.$"
        )),
    ],
)
def test_module_errors_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        dropkit.nn.DropPath(**kwargs)


def test_module_repr_modes_state_and_pickle():
    m = dropkit.nn.DropPath(0.2, mode="batch", scale_by_keep=False)
    assert repr(m) == "DropPath(p=0.2, mode='batch', scale_by_keep=False)"
    assert dict(m.state_dict()) == {} and list(m.parameters()) == []
    x = torch.randn(4, 3)
    expected = DF.drop_path(x, 0.2, mode="batch", scale_by_keep=False, seed=3)
    assert torch.equal(m(x, seed=3), expected)
    assert m.eval()(x) is x
    clone = pickle.loads(pickle.dumps(m))
    assert repr(clone) == repr(m)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_module_compiles_fullgraph_in_train_and_eval():
    block = torch.nn.Linear(6, 6)
    drop = dropkit.nn.DropPath(0.3)

    def residual(x):
        return x + drop(block(x))

    compiled = torch.compile(residual, fullgraph=True)
    x = torch.randn(16, 6)
    torch.manual_seed(0)
    eager = residual(x)
    torch.manual_seed(0)
    out = compiled(x)
    assert out.shape == eager.shape
    out.sum().backward()
    drop.eval()
    assert torch.allclose(compiled(x), x + block(x))
