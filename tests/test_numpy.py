"""``dropkit.numpy``: the NumPy twin of the torch API, and the seeds' NumPy MLP example.

The exhaustive backend bit-identity sweep lives elsewhere; here a few representative calls are
compared with the torch API, plus the NumPy-only behaviour (``rng=``, dtypes, short cuts).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dropkit.functional as DF
import dropkit.numpy as dnp
from dropkit import rng as spec


def p_eff(p: float) -> float:
    return spec.effective_p(spec.threshold(p))


# --------------------------------------------------------------------------------------------
# Same seed, same result as the torch API
# --------------------------------------------------------------------------------------------

# (numpy function, torch function, shape, kwargs)
CASES = [
    (dnp.dropout, DF.dropout, (6, 7, 5), {}),
    (dnp.dropout, DF.dropout, (6, 7, 5), {"mode": "vanilla"}),
    (dnp.dropout, DF.dropout, (6, 7, 5), {"noise_shape": (None, 1, 5)}),
    (dnp.dropout, DF.dropout, (1000,), {"p": 0.1}),
    (dnp.spatial_dropout1d, DF.spatial_dropout1d, (3, 9, 4), {"data_format": "channels_last"}),
    (dnp.spatial_dropout2d, DF.spatial_dropout2d, (2, 5, 3, 3), {}),
    (dnp.spatial_dropout3d, DF.spatial_dropout3d, (5, 2, 2, 3), {"mode": "vanilla"}),
    (dnp.timestep_dropout, DF.timestep_dropout, (3, 10, 2, 2), {}),
    (dnp.gaussian_dropout, DF.gaussian_dropout, (6, 7, 5), {}),
    (dnp.alpha_dropout, DF.alpha_dropout, (6, 7, 5), {}),
    (dnp.alpha_dropout, DF.alpha_dropout, (6, 7, 5), {"noise_shape": (6, 1, 1)}),
]
CASE_IDS = [f"{c[0].__name__}-{c[3]}" for c in CASES]
NP_DTYPES = (np.float16, np.float32, np.float64)


@pytest.mark.parametrize(("np_fn", "torch_fn", "shape", "kwargs"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
def test_equals_the_torch_api(np_fn, torch_fn, shape, kwargs, dtype):
    kwargs = {"p": 0.4, **kwargs}
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    for seed in (0, 77, 2**64 - 1):
        expected = torch_fn(torch.from_numpy(x.copy()), seed=seed, **kwargs).numpy()
        actual = np_fn(x, seed=seed, **kwargs)
        assert actual.dtype == dtype and actual.shape == x.shape
        assert np.array_equal(actual, expected), f"{int((actual != expected).sum())} differ"


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
def test_trivial_cases_match_the_torch_api(dtype):
    x = np.random.default_rng(4).standard_normal((5, 6)).astype(dtype)
    x[0, :3] = [np.inf, -np.inf, np.nan]
    for kwargs in (
        {"p": 0.3, "training": False, "mode": "vanilla"},
        {"p": 1.0},
        {"p": 1.0, "training": False, "mode": "vanilla"},
    ):
        expected = DF.dropout(torch.from_numpy(x.copy()), **kwargs).numpy()
        actual = dnp.dropout(x, **kwargs)
        assert actual.dtype == dtype
        assert np.array_equal(actual, expected, equal_nan=True)
    assert np.array_equal(dnp.dropout(x, 1.0), np.zeros_like(x))
    assert np.array_equal(dnp.gaussian_dropout(x, 1.0), np.zeros_like(x))
    assert np.array_equal(dnp.alpha_dropout(x, 1.0), np.zeros_like(x))


def test_short_cuts_return_the_input_itself():
    x = np.ones((2, 3, 4))
    for fn in (dnp.dropout, dnp.spatial_dropout1d, dnp.timestep_dropout, dnp.gaussian_dropout,
               dnp.alpha_dropout):
        assert fn(x, 0.0) is x
        assert fn(x, 0.5, training=False) is x
        assert fn(x, 1.0, training=False) is x
    empty = np.ones((0, 3, 4))
    for fn in (dnp.dropout, dnp.spatial_dropout1d, dnp.timestep_dropout, dnp.gaussian_dropout,
               dnp.alpha_dropout):
        assert fn(empty, 0.5) is empty
        assert fn(empty, 1.0) is empty


def test_input_is_not_modified():
    x = np.random.default_rng(5).standard_normal((4, 5))
    before = x.copy()
    dnp.dropout(x, 0.5, seed=1)
    dnp.alpha_dropout(x, 0.5, seed=1)
    dnp.gaussian_dropout(x, 0.5, seed=1)
    dnp.dropout(x, 0.5, training=False, mode="vanilla")
    assert np.array_equal(x, before)


# --------------------------------------------------------------------------------------------
# rng=
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [dnp.dropout, dnp.spatial_dropout2d, dnp.timestep_dropout, dnp.gaussian_dropout,
     dnp.alpha_dropout],
    ids=lambda f: f.__name__,
)
def test_rng_generator(fn):
    x = np.random.default_rng(0).standard_normal((4, 8, 3, 3))
    a = fn(x, 0.5, rng=np.random.default_rng(123))
    b = fn(x, 0.5, rng=np.random.default_rng(123))
    c = fn(x, 0.5, rng=np.random.default_rng(124))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # The generator advances: two calls on one generator give two masks.
    g = np.random.default_rng(123)
    first, second = fn(x, 0.5, rng=g), fn(x, 0.5, rng=g)
    assert np.array_equal(first, a)
    assert not np.array_equal(first, second)
    # The same generator state reproduces the same sequence.
    g2 = np.random.default_rng(123)
    assert np.array_equal(fn(x, 0.5, rng=g2), first)
    assert np.array_equal(fn(x, 0.5, rng=g2), second)


def test_rng_does_not_touch_numpy_legacy_global_state():
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    dnp.dropout(np.ones(100), 0.5, rng=np.random.default_rng(1))
    dnp.dropout(np.ones(100), 0.5, seed=1)
    assert np.array_equal(np.random.get_state()[1], state)


def test_seed_is_reproducible_and_seeds_differ():
    x = np.ones((16, 16))
    assert np.array_equal(dnp.dropout(x, 0.5, seed=5), dnp.dropout(x, 0.5, seed=5))
    assert not np.array_equal(dnp.dropout(x, 0.5, seed=5), dnp.dropout(x, 0.5, seed=6))
    assert not np.array_equal(dnp.dropout(x, 0.5, seed=5), dnp.dropout(x, 0.5, seed=5 + 2**32))


# --------------------------------------------------------------------------------------------
# dtypes and bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
def test_float_dtypes(dtype):
    x = np.random.default_rng(6).standard_normal((8, 8)).astype(dtype)
    for fn in (dnp.dropout, dnp.gaussian_dropout, dnp.alpha_dropout):
        y = fn(x, 0.3, seed=2)
        assert y.dtype == dtype and y.shape == x.shape
    y = dnp.dropout(x, 0.5, seed=2)
    kept = y != 0
    assert kept.any() and (~kept).any()
    # Kept values are x * 2 (exact in every float dtype), dropped values exactly 0.
    assert np.array_equal(y[kept], (x * 2)[kept])
    y = dnp.dropout(x, 0.3, training=False, mode="vanilla")
    assert y.dtype == dtype


def test_float16_mlp_layer():
    x = np.random.default_rng(7).standard_normal((32, 64)).astype(np.float16)
    h = dnp.dropout(np.maximum(x, 0), 0.5, seed=9)
    assert h.dtype == np.float16
    assert np.array_equal(h, DF.dropout(torch.from_numpy(np.maximum(x, 0)), 0.5, seed=9).numpy())


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match=r"^dropout: `x` must be a numpy\.ndarray, got list\.$"):
        dnp.dropout([1.0, 2.0])
    with pytest.raises(TypeError, match=r"^dropout: `x` must be a numpy\.ndarray, got Tensor\.$"):
        dnp.dropout(torch.ones(3))
    with pytest.raises(
        TypeError,
        match=r"^alpha_dropout: `x` must have dtype float16, float32 or float64, got int64\.$",
    ):
        dnp.alpha_dropout(np.arange(4))
    with pytest.raises(
        TypeError, match=r"^gaussian_dropout: `x` must have dtype float16, float32 or float64"
    ):
        dnp.gaussian_dropout(np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match=r"^dropout: `p` must be in \[0, 1\], got 1\.5\.$"):
        dnp.dropout(np.ones(4), 1.5)
    with pytest.raises(TypeError, match=r"^dropout: `rng` must be a numpy\.random\.Generator"):
        dnp.dropout(np.ones(4), rng=torch.Generator())


# --------------------------------------------------------------------------------------------
# The seeds' NumPy two-layer MLP: vanilla vs inverted dropout
# --------------------------------------------------------------------------------------------
#
# The seed articles (CS231n-style notes) write the keep probability as `p`; dropkit's `p` is the
# *drop* probability. With keep = 0.7 (dropkit p = 0.3) the two conventions give different
# numbers, so the test would notice a mix-up.
#
# Vanilla dropout:  train  H = relu(X W1) * mask            test  H = relu(X W1) * keep
# Inverted dropout: train  H = relu(X W1) * mask / keep     test  H = relu(X W1)
#
# Either way, the expected training-time activation equals the test-time activation; that is
# the whole point of the test-time rule. Averaged over S seeds, each hidden unit's training
# activation is a binomial mean: |mean - test| <= 5 * |h| * c * sqrt(q (1 - q) / S), where c is
# the training scale (1 or 1 / (1 - q)) and q = p_eff.

P_DROP = 0.3
N_SEEDS = 2000
SIGMAS = 5.0


def _mlp():
    g = np.random.default_rng(2024)
    x = g.standard_normal((6, 10))
    w1 = g.standard_normal((10, 12))
    w2 = g.standard_normal((12, 3))
    return x, w1, w2


def _train_step(x, w1, w2, mode, seed):
    h = dnp.dropout(np.maximum(0.0, x @ w1), P_DROP, mode=mode, seed=seed)
    return h, h @ w2


def _predict(x, w1, w2, mode):
    h = dnp.dropout(np.maximum(0.0, x @ w1), P_DROP, training=False, mode=mode)
    return h, h @ w2


def _training_means(mode):
    x, w1, w2 = _mlp()
    hs, outs = zip(*(_train_step(x, w1, w2, mode, seed) for seed in range(N_SEEDS)), strict=True)
    return np.mean(hs, axis=0), np.mean(outs, axis=0)


def _bounds(mode):
    """5-sigma bounds of the seed-averaged hidden and output activations."""
    x, w1, w2 = _mlp()
    h = np.maximum(0.0, x @ w1)
    q = p_eff(P_DROP)
    c = 1.0 / (1.0 - q) if mode == "inverted" else 1.0
    sd_h = np.abs(h) * c * math.sqrt(q * (1.0 - q) / N_SEEDS)
    sd_out = c * np.sqrt(q * (1.0 - q) * ((h**2) @ (w2**2)) / N_SEEDS)
    return SIGMAS * sd_h + 1e-12, SIGMAS * sd_out + 1e-12


def test_mlp_train_and_test_rules():
    x, w1, w2 = _mlp()
    h = np.maximum(0.0, x @ w1)
    q = p_eff(P_DROP)
    # Vanilla: training keeps or zeroes without scaling; test multiplies by keep = 1 - q.
    hv, _ = _train_step(x, w1, w2, "vanilla", seed=1)
    kept = hv != 0
    assert np.array_equal(hv[kept], h[kept])
    assert np.array_equal(_predict(x, w1, w2, "vanilla")[0], h * (1.0 - q))
    # Inverted: training scales kept units by 1 / (1 - q); test is the identity.
    hi, _ = _train_step(x, w1, w2, "inverted", seed=1)
    assert np.array_equal(hi != 0, kept)  # the same seed drops the same units
    assert np.array_equal(hi[kept], h[kept] * spec.inverted_scale(spec.threshold(P_DROP)))
    assert np.array_equal(_predict(x, w1, w2, "inverted")[0], h)
    assert (h > 0).sum() > 20  # enough active units for the statistics below


@pytest.mark.parametrize("mode", ["vanilla", "inverted"])
def test_mlp_training_matches_test_time_in_expectation(mode):
    x, w1, w2 = _mlp()
    mean_h, mean_out = _training_means(mode)
    test_h, test_out = _predict(x, w1, w2, mode)
    bound_h, bound_out = _bounds(mode)
    assert (np.abs(mean_h - test_h) <= bound_h).all()
    assert (np.abs(mean_out - test_out) <= bound_out).all()


def test_mlp_mixing_the_rules_is_detected():
    # Vanilla training with inverted testing (or the reverse) is off by a factor 1 - q on every
    # active unit: far outside the same bounds, so the test above can tell the rules apart.
    x, w1, w2 = _mlp()
    h = np.maximum(0.0, x @ w1)
    active = h > 0
    mean_v, _ = _training_means("vanilla")
    mean_i, _ = _training_means("inverted")
    bound_v, _ = _bounds("vanilla")
    bound_i, _ = _bounds("inverted")
    assert (np.abs(mean_v - _predict(x, w1, w2, "inverted")[0]) > bound_v)[active].all()
    assert (np.abs(mean_i - _predict(x, w1, w2, "vanilla")[0]) > bound_i)[active].all()
