"""Semantics of every function in ``dropkit.functional``.

Masks are checked against the spec (``dropkit.rng.keep_field`` / ``normal_field``), values against
the documented arithmetic (kept values are ``x * scale`` rounded once to the input's dtype, with
``scale`` rounded to float32 for float16/bfloat16/float32 and to float64 for float64 inputs).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dropkit.functional as DF
from dropkit import rng
from helpers import DTYPES, FUNCS, assert_keep_rate

SELU_ALPHA = 1.7580993408473766

NAMES = tuple(FUNCS)
# Functions whose randomness is a Bernoulli keep field (everything but Gaussian noise).
MASKED = tuple(n for n in NAMES if n != "gaussian_dropout")
# Functions with `mode` ("inverted" / "vanilla") whose dropped values are 0.
MODED = tuple(n for n in NAMES if n not in ("gaussian_dropout", "alpha_dropout"))

SHAPES = {
    "dropout": (3, 4, 5),
    "spatial_dropout1d": (3, 6, 5),
    "spatial_dropout2d": (2, 6, 3, 4),
    "spatial_dropout3d": (2, 5, 2, 3, 2),
    "timestep_dropout": (3, 7, 4),
    "gaussian_dropout": (3, 4, 5),
    "alpha_dropout": (3, 4, 5),
}
SMALL_SHAPES = {
    "dropout": (3, 4),
    "spatial_dropout1d": (2, 3, 2),
    "spatial_dropout2d": (2, 3, 2, 2),
    "spatial_dropout3d": (1, 3, 2, 1, 2),
    "timestep_dropout": (2, 3, 2),
    "gaussian_dropout": (3, 4),
    "alpha_dropout": (3, 4),
}
EMPTY_SHAPES = {
    "dropout": [(0,), (2, 0, 3)],
    "spatial_dropout1d": [(0, 3, 4), (2, 3, 0), (3, 0)],
    "spatial_dropout2d": [(0, 3, 4, 4), (2, 0, 4, 4), (3, 0, 2)],
    "spatial_dropout3d": [(0, 3, 2, 2, 2), (2, 3, 2, 0, 2), (3, 2, 0, 2)],
    "timestep_dropout": [(0, 3, 4), (2, 0, 4), (2, 3, 0, 5)],
    "gaussian_dropout": [(0,), (2, 0, 3)],
    "alpha_dropout": [(0,), (2, 0, 3)],
}


def noise_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The documented noise shape of each function (channels_first for the spatial ones)."""
    if name.startswith("spatial_dropout"):
        k = int(name[-2])
        lead = len(shape) - k  # (N, C) batched, (C,) unbatched
        return tuple(shape[:lead]) + (1,) * k
    if name == "timestep_dropout":
        return tuple(shape[:2]) + (1,) * (len(shape) - 2)
    return tuple(shape)


def spec_keep(field: tuple[int, ...], p: float, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The spec's keep field of ``field`` broadcast to ``shape``."""
    keep = torch.from_numpy(np.ascontiguousarray(rng.keep_field(field, p, seed)))
    return keep.reshape(field).expand(shape)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` with the documented rounding (scale in the compute dtype, one rounding)."""
    ct = compute_dtype(x.dtype)
    return (x.to(ct) * torch.tensor(scale, dtype=ct)).to(x.dtype)


def alpha_constants(p: float) -> tuple[float, float, float]:
    """(a, shift, fill) of alpha dropout for drop rate ``p`` (Klambauer et al., 2017)."""
    q = rng.effective_p(rng.threshold(p))
    a = 1.0 / math.sqrt((SELU_ALPHA**2 * q + 1.0) * (1.0 - q))
    shift = SELU_ALPHA * a * q
    return a, shift, -SELU_ALPHA * a + shift


def p_eff(p: float) -> float:
    return rng.effective_p(rng.threshold(p))


def special_values(shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """A tensor of ``shape`` cycling through 1.5, inf, -inf, NaN, -2.0."""
    n = math.prod(shape)
    pattern = torch.tensor([1.5, math.inf, -math.inf, math.nan, -2.0], dtype=dtype)
    return pattern.repeat(n // 5 + 1)[:n].reshape(shape).clone()


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-for-bit equality that also treats NaN == NaN (and checks dtype and shape)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------------------------
# Trivial cases: p = 0, training=False, vanilla eval
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_p0_and_eval_return_the_input_object(name):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name], requires_grad=True)
    assert f(x, 0.0) is x
    assert f(x, 0) is x
    assert f(x, 0.0, inplace=True) is x
    assert f(x, 0.5, training=False) is x
    assert f(x, 1.0, training=False) is x  # inverted mode: eval is the identity, even at p = 1
    assert f(x, 0.5, False, seed=3) is x


@pytest.mark.parametrize("name", MODED)
def test_p_below_half_a_lane_step_keeps_everything_in_a_new_tensor(name):
    # p_eff = round(p * 65536) / 65536 is 0 for p < 2**-17: the values come back unchanged, but
    # in a new tensor (only p == 0 and eval may return the input itself).
    x = torch.randn(SHAPES[name])
    for mode in ("inverted", "vanilla"):
        for training in (True, False) if mode == "vanilla" else (True,):
            y = FUNCS[name](x, 2.0**-18, training, mode=mode)
            assert y is not x and torch.equal(y, x)
    assert FUNCS[name](x, 0.0, training=False, mode="vanilla") is x
    assert FUNCS[name](x, 0.5, training=False, mode="inverted") is x


@pytest.mark.parametrize("name", MODED)
@pytest.mark.parametrize("p", [0.1, 1 / 3, 0.5, 0.9, 2.0**-16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_vanilla_eval_multiplies_by_keep_probability(name, p, dtype):
    x = torch.randn(SHAPES[name]).to(dtype)
    before = x.clone()
    y = FUNCS[name](x, p, training=False, mode="vanilla")
    keep = 1.0 - p_eff(p)
    assert y is not x
    assert torch.equal(y, x * keep)
    assert y.dtype == dtype
    assert torch.equal(x, before)
    # In place: same numbers, written into the input.
    z = FUNCS[name](x, p, training=False, inplace=True, mode="vanilla")
    assert z is x
    assert torch.equal(x, before * keep)


# --------------------------------------------------------------------------------------------
# Training values: kept = x * scale exactly, dropped = exactly 0
# --------------------------------------------------------------------------------------------


@given(
    name=st.sampled_from(MODED),
    dtype=st.sampled_from(DTYPES),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**64 - 1),
    mode=st.sampled_from(("inverted", "vanilla")),
)
def test_training_values_follow_the_spec(name, dtype, p, seed, mode):
    shape = SHAPES[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed % 1000)).to(dtype)
    y = FUNCS[name](x, p, seed=seed, mode=mode)
    t = rng.threshold(p)
    if p == 0.0:
        assert y is x
        return
    keep = spec_keep(noise_shape(name, shape), p, seed, shape)
    scale = rng.inverted_scale(t) if mode == "inverted" else 1.0
    expected = torch.where(keep, scaled(x, scale), torch.zeros((), dtype=dtype))
    assert y is not x and y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, expected)
    assert (y[~keep] == 0).all() and not torch.signbit(y[~keep]).any()
    if mode == "vanilla":
        assert torch.equal(y[keep], x[keep])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_dropout_values(p, dtype):
    shape = SHAPES["alpha_dropout"]
    x = torch.randn(shape).to(dtype)
    y = DF.alpha_dropout(x, p, seed=21)
    a, shift, fill = alpha_constants(p)
    keep = spec_keep(shape, p, 21, shape)
    ct = compute_dtype(dtype)
    kept = (scaled(x, a).to(ct) + torch.tensor(shift, dtype=ct)).to(dtype)
    expected = torch.where(keep, kept, torch.tensor(fill, dtype=dtype))
    assert y.dtype == dtype
    assert torch.equal(y, expected)
    assert (~keep).any() and keep.any()


def gaussian_noise(shape: tuple[int, ...], p: float, seed: int, dtype: torch.dtype):
    """The spec's multiplicative noise ``1 + sqrt(p / (1 - p)) * z`` in the compute dtype."""
    z = torch.from_numpy(rng.normal_field(shape, seed))
    return (1.0 + math.sqrt(p / (1.0 - p)) * z).to(compute_dtype(dtype))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_dropout_values(p, dtype):
    # x * noise computed in the compute dtype (float32, float64 for float64), rounded once.
    shape = SHAPES["gaussian_dropout"]
    x = torch.randn(shape).to(dtype)
    y = DF.gaussian_dropout(x, p, seed=8)
    noise = gaussian_noise(shape, p, 8, dtype)
    assert y.dtype == dtype
    assert torch.equal(y, (x.to(noise.dtype) * noise).to(dtype))


@pytest.mark.parametrize("name", MASKED)
def test_keep_rate(name):
    # One decision per noise-field cell (N, C) / (N, T) / element: the realized keep rate of
    # the 64 * 128 cells is binomial.
    shape = {
        "dropout": (64, 128),
        "spatial_dropout1d": (64, 128, 3),
        "spatial_dropout2d": (64, 128, 2, 2),
        "spatial_dropout3d": (64, 128, 2, 1, 2),
        "timestep_dropout": (64, 128, 3),
        "alpha_dropout": (64, 128),
    }[name]
    first_of_each_cell = (slice(None), slice(None)) + (0,) * (len(shape) - 2)
    for p, seed in [(0.1, 1), (0.5, 2), (0.75, 3)]:
        y = FUNCS[name](torch.ones(shape), p, seed=seed)[first_of_each_cell]
        dropped_value = alpha_constants(p)[2] if name == "alpha_dropout" else 0.0
        kept = int((y != torch.tensor(dropped_value)).sum())
        assert_keep_rate(kept, 64 * 128, p_eff(p))


# --------------------------------------------------------------------------------------------
# p = 1 and non-finite inputs
# --------------------------------------------------------------------------------------------


def _p1_call(name, variant, x):
    f = FUNCS[name]
    if variant == "plain":
        return f(x, 1.0)
    if variant == "seeded":
        return f(x, 1.0, seed=5)
    if variant == "vanilla_train":
        return f(x, 1.0, mode="vanilla")
    if variant == "vanilla_eval":
        return f(x, 1.0, training=False, mode="vanilla")
    raise AssertionError(variant)


P1_CASES = [(n, "plain") for n in NAMES] + [(n, "seeded") for n in NAMES]
P1_CASES += [(n, v) for n in MODED for v in ("vanilla_train", "vanilla_eval")]


@pytest.mark.parametrize(("name", "variant"), P1_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_p1_gives_exact_zeros_and_zero_gradient_for_non_finite_input(name, variant, dtype):
    shape = SHAPES[name]
    x = special_values(shape, dtype).requires_grad_()
    y = _p1_call(name, variant, x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, torch.zeros(shape, dtype=dtype))
    assert not torch.signbit(y).any()
    # Even an upstream gradient full of inf/NaN gives an exactly zero, finite gradient.
    y.backward(special_values(shape, dtype))
    assert x.grad is not None
    assert torch.equal(x.grad, torch.zeros(shape, dtype=dtype))
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_p1_inplace_on_non_leaf(name):
    shape = SHAPES[name]
    a = special_values(shape).requires_grad_()
    b = a * 1.0  # non-leaf holding inf, -inf and NaN
    y = FUNCS[name](b, 1.0, inplace=True)
    assert y is b
    assert torch.equal(b, torch.zeros(shape))
    y.backward(special_values(shape))
    assert torch.equal(a.grad, torch.zeros(shape))


@pytest.mark.parametrize("name", MODED)
def test_p1_vanilla_eval_inplace_on_non_leaf(name):
    shape = SHAPES[name]
    a = special_values(shape).requires_grad_()
    b = a * 1.0
    y = FUNCS[name](b, 1.0, training=False, inplace=True, mode="vanilla")
    assert y is b
    assert torch.equal(b, torch.zeros(shape))
    y.sum().backward()
    assert torch.equal(a.grad, torch.zeros(shape))


# Gaussian dropout has no dropped positions (it multiplies by noise): it is not in MASKED.
@pytest.mark.parametrize("name", MASKED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropped_positions_are_exact_even_for_inf_and_nan(name, dtype):
    shape = SHAPES[name]
    ones = torch.ones(shape, dtype=dtype)
    x = special_values(shape, dtype)
    ref = FUNCS[name](ones, 0.5, seed=11)
    y = FUNCS[name](x, 0.5, seed=11)
    if name == "alpha_dropout":
        a, shift, fill = alpha_constants(0.5)
        dropped_value = torch.tensor(fill, dtype=dtype)
    else:
        dropped_value = torch.zeros((), dtype=dtype)
    dropped = ref == dropped_value
    assert dropped.any() and (~dropped).any()
    # Dropped positions hold exactly the dropped value (0, or alpha's finite fill).
    assert (y[dropped] == dropped_value).all()
    if name != "alpha_dropout":
        assert not torch.signbit(y[dropped]).any()  # +0.0, never -0.0 from -inf * 0
    # Kept positions carry the non-finite values through the scaling.
    if name == "alpha_dropout":
        ct = compute_dtype(dtype)
        kept = (scaled(x, a).to(ct) + shift).to(dtype)
    else:
        kept = scaled(x, rng.inverted_scale(rng.threshold(0.5)))
    assert_identical(y[~dropped], kept[~dropped])


# --------------------------------------------------------------------------------------------
# Empty tensors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_empty_tensors_pass_through(name):
    f = FUNCS[name]
    for shape in EMPTY_SHAPES[name]:
        x = torch.empty(shape, requires_grad=True)
        for kwargs in ({}, {"p": 1.0}, {"p": 0.3, "seed": 4}, {"training": False}):
            y = f(x, **kwargs)
            assert y.shape == torch.Size(shape)
            assert y is x
        z = torch.empty(shape)
        assert f(z, 0.5, inplace=True) is z
        if name in MODED:
            assert f(z, 0.5, training=False, mode="vanilla").shape == torch.Size(shape)


# --------------------------------------------------------------------------------------------
# In place
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_writes_into_the_input(name, dtype):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name]).to(dtype)
    expected = f(x.clone(), 0.4, seed=3)
    ptr = x.data_ptr()
    y = f(x, 0.4, inplace=True, seed=3)
    assert y is x
    assert x.data_ptr() == ptr
    assert torch.equal(x, expected)


@pytest.mark.parametrize("name", NAMES)
def test_inplace_on_a_non_contiguous_view(name):
    f = FUNCS[name]
    shape = SHAPES[name]
    dims = tuple(range(len(shape)))[::-1]
    base = torch.randn(shape[::-1])
    x = base.permute(dims)  # same logical shape as `shape`, transposed storage
    assert x.shape == torch.Size(shape) and not x.is_contiguous()
    expected = f(x.contiguous(), 0.4, seed=13)
    y = f(x, 0.4, inplace=True, seed=13)
    assert y is x
    assert torch.equal(x, expected)
    assert torch.equal(base, expected.permute(dims))


@pytest.mark.parametrize("name", NAMES)
def test_inplace_on_non_leaf_has_the_out_of_place_gradient(name):
    f = FUNCS[name]
    shape = SHAPES[name]
    g = torch.randn(shape)
    a = torch.randn(shape, requires_grad=True)
    b = a * 3.0
    y = f(b, 0.4, inplace=True, seed=17)
    assert y is b
    y.backward(g)

    a2 = a.detach().clone().requires_grad_()
    y2 = f(a2 * 3.0, 0.4, seed=17)
    y2.backward(g)
    assert torch.equal(y, y2)
    assert torch.equal(a.grad, a2.grad)


@pytest.mark.parametrize("name", NAMES)
def test_inplace_on_leaf_requiring_grad(name):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        f(x, 0.4, inplace=True, seed=1)
    # Without grad mode it is an ordinary in-place write.
    expected = f(x.detach().clone(), 0.4, seed=1)
    with torch.no_grad():
        y = f(x, 0.4, inplace=True, seed=1)
    assert y is x
    assert torch.equal(x.detach(), expected)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODED)
@pytest.mark.parametrize("mode", ["inverted", "vanilla"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_is_mask_times_scale(name, mode, dtype):
    f = FUNCS[name]
    shape = SHAPES[name]
    ref = f(torch.ones(shape, dtype=dtype), 0.3, seed=5, mode=mode)  # mask * scale
    scale = rng.inverted_scale(rng.threshold(0.3)) if mode == "inverted" else 1.0
    assert set(ref.unique().tolist()) == {0.0, float(torch.tensor(scale, dtype=dtype))}

    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    f(x, 0.3, seed=5, mode=mode).sum().backward()
    assert torch.equal(x.grad, ref)

    x.grad = None
    g = torch.randn(shape).to(dtype)
    f(x, 0.3, seed=5, mode=mode).backward(g)
    zero = torch.zeros((), dtype=dtype)
    assert torch.equal(x.grad, torch.where(ref != 0, scaled(g, scale), zero))


@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_dropout_gradient(dtype):
    shape = SHAPES["alpha_dropout"]
    a, _, fill = alpha_constants(0.3)
    keep = DF.alpha_dropout(torch.ones(shape, dtype=dtype), 0.3, seed=5) != torch.tensor(
        fill, dtype=dtype
    )
    assert torch.equal(keep, spec_keep(shape, 0.3, 5, shape))
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    g = torch.randn(shape).to(dtype)
    DF.alpha_dropout(x, 0.3, seed=5).backward(g)
    assert torch.equal(x.grad, torch.where(keep, scaled(g, a), torch.zeros((), dtype=dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_dropout_gradient(dtype):
    # The gradient is the upstream gradient times the same noise (regenerated from the key).
    shape = SHAPES["gaussian_dropout"]
    noise = gaussian_noise(shape, 0.3, 5, dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    DF.gaussian_dropout(x, 0.3, seed=5).sum().backward()
    assert torch.equal(x.grad, noise.to(dtype))
    assert torch.equal(x.grad, DF.gaussian_dropout(torch.ones(shape, dtype=dtype), 0.3, seed=5))
    x.grad = None
    g = torch.randn(shape).to(dtype)
    DF.gaussian_dropout(x, 0.3, seed=5).backward(g)
    assert torch.equal(x.grad, (g.to(noise.dtype) * noise).to(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_and_gradgradcheck(name):
    f = FUNCS[name]
    x = torch.randn(SMALL_SHAPES[name], dtype=torch.float64, requires_grad=True)

    def fn(t):
        return f(t, 0.4, seed=9)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    if name in MODED:

        def vanilla(t):
            return f(t, 0.4, seed=9, mode="vanilla")

        def vanilla_eval(t):
            return f(t, 0.4, training=False, mode="vanilla")

        assert torch.autograd.gradcheck(vanilla, (x,))
        assert torch.autograd.gradgradcheck(vanilla, (x,))
        assert torch.autograd.gradcheck(vanilla_eval, (x,))


# --------------------------------------------------------------------------------------------
# Seeds and generators
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_different_seed_different_output(name):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name])
    y = f(x, 0.5, seed=42)
    assert torch.equal(y, f(x, 0.5, seed=42))
    for other in (43, 42 + 2**32, 0, 2**64 - 1):  # the key's high word matters too
        assert not torch.equal(y, f(x, 0.5, seed=other))


@pytest.mark.parametrize("name", NAMES)
def test_manual_seed_makes_unseeded_calls_reproducible(name):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name])
    torch.manual_seed(7)
    y1 = f(x, 0.5)
    torch.manual_seed(7)
    y2 = f(x, 0.5)
    torch.manual_seed(8)
    y3 = f(x, 0.5)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    # The default generator is consumed, so two calls in a row differ.
    assert not torch.equal(f(x, 0.5), f(x, 0.5))


@pytest.mark.parametrize("name", NAMES)
def test_explicit_generator(name):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name])
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(5)
    y1 = f(x, 0.5, generator=g)
    y2 = f(x, 0.5, generator=torch.Generator().manual_seed(5))
    y3 = f(x, 0.5, generator=g)  # g has advanced
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    assert not torch.equal(y1, f(x, 0.5, generator=torch.Generator().manual_seed(6)))
    # Drawing from a generator is drawing a uniform 64-bit seed: two 32-bit key words.
    k0, k1 = torch.randint(0, 2**32, (2,), generator=torch.Generator().manual_seed(5)).tolist()
    assert torch.equal(y1, f(x, 0.5, seed=k0 | (k1 << 32)))
    # An unseeded call does consume the global RNG.
    f(x, 0.5)
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", NAMES)
def test_seed_and_generator_together_is_an_error(name):
    with pytest.raises(ValueError, match=rf"^{name}: pass either `seed` or `generator`, not both"):
        FUNCS[name](torch.ones(SHAPES[name]), 0.5, seed=1, generator=torch.Generator())


def test_seeded_call_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    for name in NAMES:
        FUNCS[name](torch.ones(SHAPES[name]), 0.5, seed=3)
        FUNCS[name](torch.ones(SHAPES[name]), 1.0)  # p_eff = 1 draws nothing
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------------------------
# noise_shape: the seeds' example
# --------------------------------------------------------------------------------------------


def test_seeds_example_noise_shape_drops_whole_columns_and_rows():
    x = torch.arange(35.0).reshape(1, 7, 5)
    columns_dropped = columns_kept = rows_dropped = rows_kept = 0
    for seed in range(20):
        y = DF.dropout(x, 0.5, noise_shape=(1, 1, 5), seed=seed)
        for c in range(5):
            dropped = bool((y[0, :, c] == 0).all())
            kept = torch.equal(y[0, :, c], 2 * x[0, :, c])
            assert dropped != kept  # every column has a non-zero entry, so not both
            columns_dropped += dropped
            columns_kept += kept
        y = DF.dropout(x, 0.5, noise_shape=(1, 7, 1), seed=seed)
        for r in range(7):
            dropped = bool((y[0, r] == 0).all())
            kept = torch.equal(y[0, r], 2 * x[0, r])
            assert dropped != kept
            rows_dropped += dropped
            rows_kept += kept
    assert_keep_rate(columns_kept, 100, 0.5)
    assert_keep_rate(rows_kept, 140, 0.5)
    assert columns_dropped and rows_dropped


def test_noise_shape_none_means_the_input_size():
    x = torch.arange(35.0).reshape(1, 7, 5)
    for seed in range(5):
        assert torch.equal(
            DF.dropout(x, 0.5, noise_shape=(None, 1, None), seed=seed),
            DF.dropout(x, 0.5, noise_shape=(1, 1, 5), seed=seed),
        )
        assert torch.equal(
            DF.dropout(x, 0.5, noise_shape=(1, None, 1), seed=seed),
            DF.dropout(x, 0.5, noise_shape=(1, 7, 1), seed=seed),
        )
        assert torch.equal(
            DF.dropout(x, 0.5, noise_shape=(None, None, None), seed=seed),
            DF.dropout(x, 0.5, seed=seed),
        )
        assert torch.equal(
            DF.dropout(x, 0.5, noise_shape=[1, 7, 5], seed=seed), DF.dropout(x, 0.5, seed=seed)
        )
        assert torch.equal(
            DF.alpha_dropout(x, 0.5, noise_shape=(None, 1, None), seed=seed),
            DF.alpha_dropout(x, 0.5, noise_shape=(1, 1, 5), seed=seed),
        )


def test_noise_shape_shared_over_the_batch():
    x = torch.ones(4, 7, 5)
    y = DF.dropout(x, 0.5, noise_shape=(1, 1, 5), seed=2)
    assert (y == y[:1]).all()  # the same columns for every sample
    y = DF.dropout(x, 0.5, noise_shape=(None, 1, None), seed=2)
    assert (y == y[:, :1]).all()  # whole columns, per sample
    assert not (y == y[:1]).all()


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    choice=st.lists(st.sampled_from(("one", "full", "none")), min_size=4, max_size=4),
    p=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**64 - 1),
    alpha=st.booleans(),
)
def test_noise_shape_broadcasts_the_spec_field(shape, choice, p, seed, alpha):
    spec = tuple(
        {"one": 1, "full": size, "none": None}[c] for c, size in zip(choice, shape, strict=False)
    )
    field = tuple(size if n is None else n for n, size in zip(spec, shape, strict=True))
    x = torch.randn(shape)
    keep = spec_keep(field, p, seed, shape)
    if alpha:
        a, shift, fill = alpha_constants(p)
        y = DF.alpha_dropout(x, p, noise_shape=spec, seed=seed)
        kept = (scaled(x, a) + torch.tensor(shift, dtype=torch.float32))
        assert torch.equal(y, torch.where(keep, kept, torch.tensor(fill)))
    else:
        y = DF.dropout(x, p, noise_shape=spec, seed=seed)
        expected = torch.where(keep, scaled(x, rng.inverted_scale(rng.threshold(p))), 0.0)
        assert torch.equal(y, expected)


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_float_dtypes_are_kept(name, dtype):
    f = FUNCS[name]
    x = torch.randn(SHAPES[name]).to(dtype).requires_grad_()
    for kwargs in ({"seed": 1}, {}, {"training": False}, {"p": 1.0}, {"p": 0.3, "seed": 2}):
        y = f(x, **kwargs)
        assert y.dtype == dtype and y.shape == x.shape
    y = f(x, 0.5, seed=1)
    y.sum().backward()
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool, torch.complex64]
)
def test_non_float_dtypes_raise(name, dtype):
    x = torch.zeros(SHAPES[name], dtype=dtype)
    message = (
        rf"^{name}: `input` must have dtype torch\.float16, torch\.bfloat16, torch\.float32 or "
        rf"torch\.float64, got {dtype}\.$"
    )
    with pytest.raises(TypeError, match=message):
        FUNCS[name](x, 0.5)
    with pytest.raises(TypeError, match=message):
        FUNCS[name](x, 0.0)  # checked before the p = 0 short cut
    with pytest.raises(TypeError, match=message):
        FUNCS[name](x, 0.5, training=False)


# --------------------------------------------------------------------------------------------
# Spatial and timestep rank rules
# --------------------------------------------------------------------------------------------

SPATIAL = {1: DF.spatial_dropout1d, 2: DF.spatial_dropout2d, 3: DF.spatial_dropout3d}
AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_spatial_accepts_batched_and_unbatched(k):
    f = SPATIAL[k]
    spatial = (3, 4, 2)[:k]
    batched = torch.ones((6, 16, *spatial))
    y = f(batched, 0.5, seed=3)
    assert y.shape == batched.shape
    per_channel = y.reshape(6, 16, -1)
    dropped = (per_channel == 0).all(-1)
    kept = (per_channel == 2).all(-1)
    assert bool((dropped | kept).all())  # whole channels
    assert dropped.any() and kept.any()
    assert torch.equal(kept, spec_keep((6, 16), 0.5, 3, (6, 16)))

    unbatched = torch.ones((16, *spatial))
    z = f(unbatched, 0.5, seed=3)
    assert z.shape == unbatched.shape
    per_channel = z.reshape(16, -1)
    assert bool(((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all())
    # Unbatched is batched with N = 1: the same field.
    assert torch.equal(z, f(unbatched[None], 0.5, seed=3)[0])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_spatial_channels_last(k):
    f = SPATIAL[k]
    spatial = (5, 3, 2)[:k]
    x = torch.randn((4, *spatial, 12))
    y = f(x, 0.5, data_format="channels_last", seed=8)
    per_channel = y.reshape(4, -1, 12)
    flat_x = x.reshape(4, -1, 12)
    dropped = (per_channel == 0).all(1)
    kept = (per_channel == 2 * flat_x).all(1)
    assert bool((dropped | kept).all())
    assert dropped.any() and kept.any()
    # channels_last is channels_first on the moved axes (the field is (N, C) either way).
    moved = f(x.movedim(-1, 1), 0.5, seed=8).movedim(1, -1)
    assert torch.equal(y, moved)
    # Unbatched (spatial..., C).
    z = f(x[0], 0.5, data_format="channels_last", seed=8)
    assert torch.equal(z, y[0])


def test_spatial_dropout1d_channels_last_drops_embedding_dims_as_text_arrives():
    # (samples, sequence_length, embedding_dim): a dropped embedding dim is zero at every step.
    x = torch.randn(2, 9, 16)
    y = DF.spatial_dropout1d(x, 0.5, data_format="channels_last", seed=4)
    for n in range(2):
        for c in range(16):
            column = y[n, :, c]
            assert torch.equal(column, torch.zeros(9)) or torch.equal(column, 2 * x[n, :, c])
    keep = spec_keep((2, 1, 16), 0.5, 4, (2, 9, 16))
    assert torch.equal(y, torch.where(keep, 2 * x, 0.0))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_spatial_wrong_rank(k, data_format):
    f = SPATIAL[k]
    batched, unbatched = k + 2, k + 1
    if data_format == "channels_first":
        layouts = rf"\(N, C, {AXES[k]}\) or an unbatched {unbatched}D input \(C, {AXES[k]}\)"
    else:
        layouts = rf"\(N, {AXES[k]}, C\) or an unbatched {unbatched}D input \({AXES[k]}, C\)"
    for rank in (0, 1, unbatched - 1, batched + 1):
        if rank in (batched, unbatched):
            continue
        shape = (2,) * rank
        message = (
            rf"^spatial_dropout{k}d: expected a {batched}D input {layouts} with "
            rf"data_format='{data_format}', got a {rank}D tensor of shape "
            rf"{re_shape(shape)}\.$"
        )
        with pytest.raises(ValueError, match=message):
            f(torch.ones(shape), 0.5, data_format=data_format)
        with pytest.raises(ValueError, match=message):
            f(torch.ones(shape), 0.5, training=False, data_format=data_format)


def re_shape(shape: tuple[int, ...]) -> str:
    return re.escape(str(tuple(shape)))


def test_timestep_dropout_rank():
    for shape in [(3, 8, 4), (3, 8, 2, 3), (2, 8, 2, 1, 2)]:
        x = torch.randn(shape)
        y = DF.timestep_dropout(x, 0.5, seed=6)
        per_step = y.reshape(shape[0], shape[1], -1)
        flat_x = x.reshape(shape[0], shape[1], -1)
        dropped = (per_step == 0).all(-1)
        kept = (per_step == 2 * flat_x).all(-1)
        assert bool((dropped | kept).all())
        assert dropped.any() and kept.any()
        assert torch.equal(kept, spec_keep(shape[:2], 0.5, 6, shape[:2]))
    for shape in [(), (5,), (3, 8)]:
        message = (
            r"^timestep_dropout: expected an input \(N, T, \*features\) of at least 3 "
            rf"dimensions, got a {len(shape)}D tensor of shape {re_shape(shape)}\.$"
        )
        with pytest.raises(ValueError, match=message):
            DF.timestep_dropout(torch.ones(shape), 0.5)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


# Inductor's first compile imports code that uses the deprecated torch.jit.script_method; the
# suite turns warnings into errors, so that one warning (torch's, not dropkit's) is let through.
compile_warning = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def _dropped_value(name: str, p: float) -> float:
    return alpha_constants(p)[2] if name == "alpha_dropout" else 0.0


@compile_warning
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_fullgraph(name):
    torch._dynamo.reset()
    f = FUNCS[name]
    shape = SHAPES[name]

    def fn(x):
        outs = (f(x, 0.5, seed=7), f(x, 0.5, training=False), f(x, 0.5), f(x, 1.0))
        if name in MODED:
            outs += (f(x, 0.25, training=False, mode="vanilla"),)
        return outs

    compiled = torch.compile(fn, fullgraph=True)
    x = torch.ones(shape, requires_grad=True)
    torch.manual_seed(99)
    outs = compiled(x)
    torch.manual_seed(99)
    eager = fn(x)
    seeded, evaluated, unseeded, zeros = outs[:4]
    # Training with a seed: the compiled output equals the eager one, bit for bit.
    assert seeded.shape == x.shape
    assert torch.equal(seeded, eager[0])
    if name in MASKED:
        keep = spec_keep(noise_shape(name, shape), 0.5, 7, shape)
        assert torch.equal(seeded != _dropped_value(name, 0.5), keep)
    # Eval is the identity; vanilla eval multiplies by 1 - p.
    assert torch.equal(evaluated, x)
    assert torch.equal(zeros, torch.zeros(shape))
    if name in MODED:
        assert torch.equal(outs[4], x * 0.75)
    # Without a seed, torch.manual_seed reproduces the eager draw.
    assert torch.equal(unseeded, eager[2])
    # Backward under compile regenerates the forward's mask from the saved key.
    unseeded.sum().backward()
    if name == "gaussian_dropout":
        expected_grad = unseeded.detach()  # x = 1: the output is the noise itself
    elif name == "alpha_dropout":
        a, _, fill = alpha_constants(0.5)
        expected_grad = torch.where(unseeded.detach() != fill, torch.tensor(a), 0.0)
    else:
        expected_grad = unseeded.detach()  # x = 1: the output is mask * scale
    assert torch.equal(x.grad, expected_grad)


@compile_warning
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_eval_only(name):
    torch._dynamo.reset()
    f = FUNCS[name]

    def fn(x):
        return f(x, 0.5, training=False) * 2

    x = torch.randn(SHAPES[name])
    assert torch.equal(torch.compile(fn, fullgraph=True)(x), x * 2)


@compile_warning
def test_torch_compile_each_spatial_function_directly():
    # The three spatial functions come from one factory (one code object, different closure
    # ints). Compiling them one after the other must not confuse the rank check.
    torch._dynamo.reset()
    for k, shape in [(1, (2, 3, 4)), (2, (2, 3, 4, 5)), (3, (2, 3, 2, 2, 2))]:
        f = SPATIAL[k]
        y = torch.compile(f, fullgraph=True)(torch.ones(shape), 0.5, seed=7)
        assert torch.equal(y, f(torch.ones(shape), 0.5, seed=7))


# --- save="bitmask": 1 bit per field element kept for backward instead of the key ---


def _saved_bytes(fn) -> tuple[object, list[int]]:
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (sizes.append(t.nbytes), t)[1],
                                                  lambda t: t):
        result = fn()
    return result, sizes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "noise_shape"), [((50, 37), None), ((6, 5, 7), (6, 1, 7)),
                                                    ((3, 4, 1, 9), (3, 4, 1, 1)), ((5,), None)])
@pytest.mark.parametrize("mode", ["inverted", "vanilla"])
def test_bitmask_mode_gives_the_seed_mode_output_and_gradient(dtype, shape, noise_shape, mode):
    x = torch.randn(shape, dtype=torch.float64).to(dtype).requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64).to(dtype)
    kwargs = dict(noise_shape=noise_shape, mode=mode, seed=77)
    y_seed, seed_saved = _saved_bytes(lambda: DF.dropout(x, 0.3, **kwargs))
    y_bits, bits_saved = _saved_bytes(lambda: DF.dropout(x, 0.3, save="bitmask", **kwargs))
    assert torch.equal(y_seed, y_bits)
    assert torch.equal(*(torch.autograd.grad(y, x, grad)[0] for y in (y_seed, y_bits)))
    field = math.prod(noise_shape or shape)
    assert seed_saved == [16] and bits_saved == [-(-field // 8)]


def test_bitmask_packing_order_and_generator_draws():
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    assert DF._ops.pack_bits(keep).tolist() == [0b1101, 1]
    assert torch.equal(DF._ops.unpack_bits(DF._ops.pack_bits(keep), [9]), keep)
    x = torch.randn(300, requires_grad=True)
    torch.manual_seed(3)
    a = DF.dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, DF.dropout(x, 0.5, save="bitmask"))  # draws the same key


def test_bitmask_mode_without_grad_inplace_and_tensor_rate():
    x = torch.randn(64, 8)
    want = DF.dropout(x, 0.25, seed=1)
    assert torch.equal(DF.dropout(x, 0.25, seed=1, save="bitmask"), want)  # no grad: seed path
    leaf = x.clone().requires_grad_()
    y = DF.dropout(leaf * 1.0, torch.tensor(0.25), True, True, seed=1, save="bitmask")
    assert torch.equal(y, want)
    y.sum().backward()
    assert torch.equal(leaf.grad, DF.dropout(torch.ones(64, 8), 0.25, seed=1))
    for p in (0.0, 1.0):
        assert torch.equal(DF.dropout(leaf, p, seed=1, save="bitmask"), DF.dropout(leaf, p, seed=1))


def test_bitmask_mode_unknown_value():
    with pytest.raises(ValueError, match=re.escape(
            "dropout: `save` must be 'seed' or 'bitmask', got 'mask'.")):
        DF.dropout(torch.ones(3), 0.5, save="mask")


# --- the eager fast path: an autograd.Function instead of the custom-op dispatcher ---


@pytest.mark.parametrize("dtype", DTYPES)
def test_eager_path_equals_the_custom_op_forward_backward_and_double_backward(dtype):
    x = torch.randn(37, 5, dtype=torch.float64).to(dtype).requires_grad_()
    key = DF.draw_key(9)
    args = (key, rng.threshold(0.3), [37, 5], 1 / 0.7, 0.0, 0.0)
    fast, slow = DF._ops.masked_affine_eager(x, *args), DF._ops.masked_affine(x, *args)
    assert type(fast.grad_fn).__name__ == "_MaskedAffineFnBackward"
    assert torch.equal(fast, slow)
    grad = torch.randn(37, 5, dtype=torch.float64).to(dtype).requires_grad_()
    (g_fast,) = torch.autograd.grad(fast, x, grad, create_graph=True)
    (g_slow,) = torch.autograd.grad(slow, x, grad, create_graph=True)
    assert torch.equal(g_fast, g_slow)
    # The gradient is itself differentiable (linear in `grad`): double backward agrees.
    assert torch.equal(*(torch.autograd.grad(g.sum(), grad)[0] for g in (g_fast, g_slow)))


def test_eager_path_hands_traced_and_fake_calls_to_the_custom_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    key, args = DF.draw_key(1), (rng.threshold(0.5), [8], 2.0, 0.0, 0.0)
    assert not DF._ops._traced((torch.ones(8), key))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = mode.from_tensor(torch.ones(8))
        assert DF._ops._traced((fake, key))
        assert DF._ops.masked_affine_eager(fake, key, *args).shape == (8,)
    graph = torch.fx.experimental.proxy_tensor.make_fx(
        lambda t: DF._ops.masked_affine_eager(t, key, *args))(torch.ones(8))
    assert "dropkit.masked_affine" in str(graph.code)
