"""Correctness measured: keep rates, preserved expectations, all-or-nothing structure, Gaussian
noise moments and alpha dropout's self-normalization, on both backends. Every bound is 4 sigma
of the exact sampling distribution (fixed seeds, so the tests are deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dropkit.functional as DF
import dropkit.numpy as dnp
from dropkit import rng
from helpers import BACKENDS, DTYPES, assert_keep_rate, run_on

P_VALUES = (0.05, 0.1, 0.3, 0.5, 0.9)
SELU_ALPHA = 1.7580993408473766


def p_eff(p: float) -> float:
    return rng.effective_p(rng.threshold(p))


# ---------------------------------------------------------------------------------------------
# Keep rates


# (function, input shape with ~2**20 elements, data_format or None, spatial axes of the input)
STRUCTURED = [
    ("spatial_dropout1d", (256, 256, 16), "channels_first", (2,)),
    ("spatial_dropout1d", (256, 16, 256), "channels_last", (1,)),
    ("spatial_dropout2d", (256, 256, 4, 4), "channels_first", (2, 3)),
    ("spatial_dropout2d", (256, 4, 4, 256), "channels_last", (1, 2)),
    ("spatial_dropout3d", (256, 256, 2, 2, 4), "channels_first", (2, 3, 4)),
    ("spatial_dropout3d", (256, 2, 2, 4, 256), "channels_last", (1, 2, 3)),
    ("timestep_dropout", (256, 256, 4, 4), None, (2, 3)),
]
STRUCTURED_IDS = [f"{name}-{fmt}" for name, _, fmt, _ in STRUCTURED]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", P_VALUES)
def test_dropout_keep_rate(backend, p):
    n = 2**20
    y = run_on(backend, DF.dropout, torch.ones(n), p, seed=int(p * 1000) + 17)
    assert_keep_rate(int((y != 0).sum()), n, p_eff(p))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize(("name", "shape", "fmt", "spatial"), STRUCTURED, ids=STRUCTURED_IDS)
def test_structured_keep_rate(backend, p, name, shape, fmt, spatial):
    """n = number of independent decisions (the noise field: N * C or N * T)."""
    kw = {} if fmt is None else {"data_format": fmt}
    y = run_on(backend, getattr(DF, name), torch.ones(shape), p, seed=int(p * 1000) + 3, **kw)
    decisions = (y != 0).any(dim=spatial)
    assert decisions.numel() == 256 * 256
    assert_keep_rate(int(decisions.sum()), decisions.numel(), p_eff(p))


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_rate_over_many_seeds(backend):
    """A small tensor, 2000 consecutive seeds: overall and per-position drop rates."""
    p, n_seeds, size = 0.3, 2000, 16
    x = torch.ones(size)
    kept = torch.zeros(size, dtype=torch.int64)
    for seed in range(n_seeds):
        kept += run_on(backend, DF.dropout, x, p, seed=seed) != 0
    assert_keep_rate(int(kept.sum()), n_seeds * size, p_eff(p))
    for position in range(size):  # no lane of a Philox block is biased
        assert_keep_rate(int(kept[position]), n_seeds, p_eff(p))


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_rate_over_generator_draws(backend):
    """Without ``seed``, the 64-bit key is drawn from the generator: fresh masks each call."""
    p, n_calls, size = 0.5, 500, 64
    g = torch.Generator().manual_seed(2024)
    masks = torch.stack(
        [run_on(backend, DF.dropout, torch.ones(size), p, generator=g) != 0 for _ in range(n_calls)]
    )
    assert_keep_rate(int(masks.sum()), masks.numel(), p_eff(p))
    assert len({tuple(m.tolist()) for m in masks}) == n_calls  # 2**-64 chance of a repeat


# ---------------------------------------------------------------------------------------------
# Expectations


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", P_VALUES)
def test_inverted_mean_preserved(backend, p):
    n = 2**20
    y = run_on(backend, DF.dropout, torch.ones(n, dtype=torch.float64), p, seed=int(p * 100) + 5)
    q = 1.0 - p_eff(p)  # keep probability
    scale = rng.inverted_scale(rng.threshold(p))
    assert scale * q == pytest.approx(1.0, rel=1e-15)  # E[output] == input exactly
    sd = scale * math.sqrt(q * (1 - q) / n)
    assert abs(y.mean().item() - 1.0) <= 4 * sd, (y.mean().item(), sd)
    assert set(torch.unique(y).tolist()) <= {0.0, scale}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", P_VALUES)
def test_vanilla_training_mean(backend, p):
    n = 2**18
    y = run_on(
        backend,
        DF.dropout,
        torch.ones(n, dtype=torch.float64),
        p,
        mode="vanilla",
        seed=int(p * 100) + 9,
    )
    q = 1.0 - p_eff(p)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}  # no scaling in training
    assert abs(y.mean().item() - q) <= 4 * math.sqrt(q * (1 - q) / n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", (*P_VALUES, 0.123456, 1 / 3))
def test_vanilla_eval_is_exact(backend, dtype, p):
    g = torch.Generator().manual_seed(1)
    for shape in [(), (5,), (3, 4, 7)]:
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(dtype)
        y = run_on(backend, DF.dropout, x, p, training=False, mode="vanilla")
        keep = 1.0 - p_eff(p)
        assert y.dtype == dtype and y.shape == x.shape
        # 1 - p_eff has 17 significant bits, so x * keep is exact in float64 and the result
        # is its single rounding to the computation dtype (float32 for half types).
        exact = x.double() * keep
        want = (
            exact.to(dtype)
            if dtype in (torch.float32, torch.float64)
            else ((x.float() * torch.tensor(keep, dtype=torch.float32)).to(dtype))
        )
        assert torch.equal(y, want)
        if dtype != torch.bfloat16 and x.dim() > 0:  # 0-d: see test_kernels' 0-d oracle test
            got_np = dnp.dropout(x.numpy(), p, training=False, mode="vanilla")
            assert np.array_equal(got_np, y.numpy())


# ---------------------------------------------------------------------------------------------
# Structure


SPATIAL_LAYOUTS = [
    # (name, shape, data_format, spatial axes, channel axis)
    ("spatial_dropout1d", (4, 64, 5), "channels_first", (2,), 1),
    ("spatial_dropout1d", (64, 5), "channels_first", (1,), 0),
    ("spatial_dropout1d", (4, 5, 64), "channels_last", (1,), 2),
    ("spatial_dropout1d", (5, 64), "channels_last", (0,), 1),
    ("spatial_dropout2d", (4, 64, 3, 5), "channels_first", (2, 3), 1),
    ("spatial_dropout2d", (64, 3, 5), "channels_first", (1, 2), 0),
    ("spatial_dropout2d", (4, 3, 5, 64), "channels_last", (1, 2), 3),
    ("spatial_dropout2d", (3, 5, 64), "channels_last", (0, 1), 2),
    ("spatial_dropout3d", (4, 64, 2, 3, 5), "channels_first", (2, 3, 4), 1),
    ("spatial_dropout3d", (64, 2, 3, 5), "channels_first", (1, 2, 3), 0),
    ("spatial_dropout3d", (4, 2, 3, 5, 64), "channels_last", (1, 2, 3), 4),
    ("spatial_dropout3d", (2, 3, 5, 64), "channels_last", (0, 1, 2), 3),
]


def _assert_all_or_nothing(x, y, axes, scale):
    """Along ``axes`` every cell is either entirely dropped (0) or entirely x * scale."""
    kept = y != 0
    assert torch.equal(kept.all(dim=axes), kept.any(dim=axes))
    assert torch.equal(y[kept], (x * scale)[kept])
    return kept.any(dim=axes)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "shape", "fmt", "spatial", "channel"),
    SPATIAL_LAYOUTS,
    ids=[f"{s[0]}-{s[2]}-{len(s[1])}D" for s in SPATIAL_LAYOUTS],
)
def test_spatial_all_or_nothing(backend, name, shape, fmt, spatial, channel):
    p, seed = 0.5, 77
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 0.5  # no zeros
    y = run_on(backend, getattr(DF, name), x, p, data_format=fmt, seed=seed)
    decisions = _assert_all_or_nothing(x, y, spatial, 2.0)
    # The decisions are the spec's keep field over (sample, channel), in row-major order.
    field_shape = tuple(1 if d in spatial else s for d, s in enumerate(shape))
    assert torch.equal(
        decisions.reshape(field_shape), torch.from_numpy(rng.keep_field(field_shape, p, seed))
    )
    # Different channels get different decisions.
    per_channel = decisions.movedim(channel - sum(a < channel for a in spatial), -1)
    assert per_channel.any() and not per_channel.all()
    assert (per_channel != per_channel[..., :1]).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 50, 6), (3, 50, 2, 3), (2, 50, 1, 2, 2)])
def test_timestep_all_or_nothing(backend, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) + 0.5
    y = run_on(backend, DF.timestep_dropout, x, 0.3, seed=5)
    features = tuple(range(2, len(shape)))
    decisions = _assert_all_or_nothing(x, y, features, rng.inverted_scale(rng.threshold(0.3)))
    assert decisions.shape == shape[:2]
    assert decisions.any() and not decisions.all()
    field_shape = shape[:2] + (1,) * len(features)
    assert torch.equal(
        decisions.reshape(field_shape), torch.from_numpy(rng.keep_field(field_shape, 0.3, 5))
    )


def test_seeds_example_columns_and_rows():
    """The seeds' example: noise_shape (1, 1, 5) zeroes whole columns, (1, 7, 1) whole rows."""
    x = torch.arange(35.0).reshape(1, 7, 5)
    for backend in BACKENDS:
        for noise_shape, shared_axis in (((1, 1, 5), 1), ((1, 7, 1), 2)):
            kinds = set()
            for seed in range(4):
                y = run_on(backend, DF.dropout, x, 0.5, noise_shape=noise_shape, seed=seed)
                # Decide from x + 1 (no zeros) with the same seed: the same mask.
                kept = (
                    run_on(backend, DF.dropout, x + 1, 0.5, noise_shape=noise_shape, seed=seed) != 0
                )
                assert torch.equal(kept.all(dim=shared_axis), kept.any(dim=shared_axis))
                assert torch.equal(y, torch.where(kept, x * 2, 0.0))
                line = kept.any(dim=shared_axis)
                kinds |= set(line.flatten().tolist())
            assert kinds == {True, False}  # whole lines both kept and dropped


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "noise_shape",
    [
        (6, 1, 1, 1),
        (1, 8, 1, 1),
        (1, 1, 5, 1),
        (1, 1, 1, 7),
        (6, 8, 1, 1),
        (6, 1, 5, 1),
        (1, 8, 1, 7),
        (None, 1, None, 1),
        (1, 1, 1, 1),
    ],
    ids=str,
)
def test_noise_shape_shares_decisions(backend, noise_shape):
    shape = (6, 8, 5, 7)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2)) + 0.5
    y = run_on(backend, DF.dropout, x, 0.4, noise_shape=noise_shape, seed=31)
    scale = rng.inverted_scale(rng.threshold(0.4))
    kept = y != 0
    assert torch.equal(y[kept], (x * scale)[kept])
    shared = tuple(d for d, n in enumerate(noise_shape) if n == 1)
    for d in shared:  # every slice along a shared axis is identical
        assert torch.equal(kept, kept.narrow(d, 0, 1).expand_as(kept))
    resolved = tuple(s if n is None else n for n, s in zip(noise_shape, shape, strict=True))
    field = kept[tuple(slice(0, n) for n in resolved)]
    assert torch.equal(field, torch.from_numpy(rng.keep_field(resolved, 0.4, 31)))
    if math.prod(resolved) >= 30:
        assert field.any() and not field.all()


# ---------------------------------------------------------------------------------------------
# Gaussian dropout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", (0.1, 0.3, 0.5, 0.9))
def test_gaussian_noise_moments(backend, p):
    n = 2**18
    noise = run_on(
        backend, DF.gaussian_dropout, torch.ones(n, dtype=torch.float64), p, seed=int(p * 10) + 100
    )
    var = p / (1 - p)
    mean = noise.mean().item()
    assert abs(mean - 1.0) <= 4 * math.sqrt(var / n), mean
    # Sample variance of a normal: Var(s^2) ~ 2 sigma^4 / n.
    s2 = noise.var().item()
    assert abs(s2 - var) <= 4 * math.sqrt(2 * var**2 / n), (s2, var)
    # A normal, not a two-point distribution: many distinct values, both sides of 1.
    assert (noise < 1).any() and (noise > 1).any()
    assert torch.unique(noise[:1000]).numel() == 1000


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_noise_is_the_spec_normal_field(backend):
    """Noise = 1 + sqrt(p / (1 - p)) * z, z the spec's stream-1 field (float64 tolerance is
    rounding-level: exact bits are test_kernels' business)."""
    p, seed = 0.2, 9
    noise = run_on(
        backend, DF.gaussian_dropout, torch.ones(1000, dtype=torch.float64), p, seed=seed
    )
    want = 1.0 + math.sqrt(p / (1 - p)) * rng.normal_field((1000,), seed)
    assert np.allclose(noise.numpy(), want, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Alpha dropout


def _alpha_affine(p: float) -> tuple[float, float, float]:
    """(a, b, fill) of Klambauer et al. / torch.nn.AlphaDropout for the effective p."""
    q = p_eff(p)
    a = 1.0 / math.sqrt((SELU_ALPHA**2 * q + 1.0) * (1.0 - q))
    b = SELU_ALPHA * a * q
    return a, b, -SELU_ALPHA * a + b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", (0.05, 0.2, 0.5, 0.9))
def test_alpha_dropout_self_normalizing(backend, p):
    n = 2**18
    x = torch.randn(n, generator=torch.Generator().manual_seed(int(p * 100)), dtype=torch.float64)
    seed = int(p * 100) + 1
    y = run_on(backend, DF.alpha_dropout, x, p, seed=seed)
    q = p_eff(p)
    a, b, fill = _alpha_affine(p)
    # y = a * (z + alpha q) with z = x (kept) or -alpha (dropped): mean 0, variance 1.
    # 4th central moment of z + alpha q: kept  E[(x + c)^4] = 3 + 6 c^2 + c^4 (c = alpha q),
    # dropped (alpha (q - 1))^4.
    c = SELU_ALPHA * q
    mu4 = a**4 * ((1 - q) * (3 + 6 * c**2 + c**4) + q * (SELU_ALPHA * (1 - q)) ** 4)
    assert abs(y.mean().item()) <= 4 / math.sqrt(n)
    assert abs(y.var().item() - 1.0) <= 4 * math.sqrt((mu4 - 1.0) / n), (y.var().item(), mu4)
    # Dropped positions hold exactly the documented fill a * (-alpha) + b; kept hold a x + b.
    keep = run_on(backend, DF.dropout, torch.ones(n), p, seed=seed) != 0
    assert_keep_rate(int(keep.sum()), n, q)
    assert torch.equal(y[~keep], torch.full_like(y[~keep], fill))
    assert torch.equal(y[keep], (x * a + b)[keep])
    assert fill == pytest.approx(-SELU_ALPHA * a * (1 - q), rel=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_dropout_matches_torch_formula(backend):
    """Same affine as torch.nn.functional.alpha_dropout, given the same mask."""
    p, seed = 0.25, 4  # 0.25 is exact in 16 bits: p_eff == p
    assert p_eff(p) == p
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = run_on(backend, DF.alpha_dropout, x, p, seed=seed)
    keep = (run_on(backend, DF.dropout, torch.ones(4096), p, seed=seed) != 0).double()
    a = 1.0 / math.sqrt((SELU_ALPHA**2 * p + 1) * (1 - p))
    b = (keep - 1) * (SELU_ALPHA * a) + SELU_ALPHA * a * p  # torch's construction of b
    assert torch.allclose(y, x * keep * a + b, rtol=0, atol=1e-15)
