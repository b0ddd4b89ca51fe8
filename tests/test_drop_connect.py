"""DropConnect: the function, the layers (Linear, Conv1d/2d/3d), scaling for every p, per-sample
masks, Gaussian moment-matching inference, gradients, errors, state_dict, compile."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dropkit.functional as DF
from dropkit import rng
from dropkit._drop_connect import drop_connect, sample_weights
from dropkit.nn import RateModule
from dropkit.nn.drop_connect import (
    DropConnectConv1d,
    DropConnectConv2d,
    DropConnectConv3d,
    DropConnectLinear,
)
from helpers import assert_keep_rate

PS = (0.1, 0.3, 0.5, 0.9)
K = 3000  # masks per expectation estimate (one forward each)
K_SAMPLE = 50_000
K_CONV = 20_000
K_CONV_BATCH = 2000  # masks per estimate when one forward draws them all


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_matches(samples: torch.Tensor, ref: torch.Tensor, sigmas: float = 5.0) -> bool:
    """Every element of the sample mean is within ``sigmas`` standard errors of ``ref``."""
    samples = samples.double()
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return bool(((samples.mean(0) - ref.double()).abs() <= sigmas * se + 1e-9).all())


def _linear(p, mask="batch", **kw):
    torch.manual_seed(0)
    layer = DropConnectLinear(6, 4, p=p, mask=mask, dtype=torch.float64, **kw)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 6, generator=_gen(1)) + 0.5)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(4, generator=_gen(2)))
    return layer


def _conv(p, mask="batch", **kw):
    layer = DropConnectConv2d(2, 2, 3, padding=1, p=p, mask=mask, dtype=torch.float64, **kw)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=_gen(3)) + 0.5)
        layer.bias.copy_(torch.randn(2, generator=_gen(4)))
    return layer


X_LIN = torch.randn(3, 6, generator=_gen(5), dtype=torch.float64).abs() + 0.5
X_CONV = torch.randn(1, 2, 4, 4, generator=_gen(6), dtype=torch.float64).abs() + 0.5


# ---------------------------------------------------------------------------------- function


def test_drop_connect_is_dropout_of_the_weight():
    w = torch.randn(5, 7, generator=_gen(0))
    for p in PS:
        assert torch.equal(drop_connect(w, p, seed=9), DF.dropout(w, p, seed=9))
    assert drop_connect(w, 0.3, training=False) is w
    assert drop_connect(w, 0.0, seed=1) is w


def test_drop_connect_keep_rate_and_scale():
    w = torch.ones(300, 100)
    y = drop_connect(w, 0.3, seed=4)
    t = rng.threshold(0.3)
    assert bool(((y == 0) | (y == rng.inverted_scale(t))).all())
    assert_keep_rate(int((y != 0).sum()), w.numel(), rng.effective_p(t))


def test_drop_connect_gradient_flows_to_the_weight_through_the_mask():
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = drop_connect(w, 0.4, seed=2)
    y.sum().backward()
    assert torch.equal(w.grad, (y != 0).double() * rng.inverted_scale(rng.threshold(0.4)))
    assert torch.autograd.gradcheck(lambda t: drop_connect(t, 0.4, seed=2), (w,))


def test_drop_connect_p1_is_exact_zero_even_for_nonfinite_weights():
    w = torch.tensor([[float("inf"), float("nan"), 1.0]])
    assert torch.equal(drop_connect(w, 1.0, seed=0), torch.zeros_like(w))


def test_drop_connect_errors():
    w = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"drop_connect: `p` must be in \[0, 1\], got 1.5\."):
        drop_connect(w, 1.5)
    with pytest.raises(TypeError, match=r"drop_connect: `weight` must be a torch\.Tensor"):
        drop_connect([1.0], 0.5)
    with pytest.raises(ValueError, match=r"drop_connect: pass either `seed` or `generator`"):
        drop_connect(w, 0.5, seed=1, generator=torch.Generator())


def test_sample_weights_are_the_keep_field_over_the_batch_noise_shape():
    w = torch.randn(3, 5, generator=_gen(0), dtype=torch.float64)
    ws = sample_weights(w, 7, 0.3, seed=11)
    t = rng.threshold(0.3)
    keep = torch.from_numpy(np.asarray(rng.keep_field((7, 3, 5), 0.3, 11)))
    expected = torch.where(keep, w * rng.inverted_scale(t), torch.zeros(()).double())
    assert torch.equal(ws, expected)


# --------------------------------------------------------------- scaling correct for every p


def _wide(layer):
    """Positive weights over a wide fan-in: the relative spread of one masked output is about
    ``sqrt(p / (1 - p) / fan_in)``, so a few thousand masks resolve a 10% bias even at p = 0.9
    (one mask per forward call; the per-sample tests get their power from the batch instead)."""
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=_gen(8)) + 0.1)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=_gen(9)))
    return layer


@pytest.mark.parametrize("p", PS)
def test_linear_batch_mask_expectation_is_the_plain_layer(p):
    layer = _wide(DropConnectLinear(200, 4, p=p, dtype=torch.float64))
    x = torch.rand(3, 200, generator=_gen(10), dtype=torch.float64) + 0.1
    ref = TF.linear(x, layer.weight, layer.bias).detach()
    with torch.no_grad():
        samples = torch.stack([layer(x, seed=k) for k in range(K)])
    assert mean_matches(samples, ref)


@pytest.mark.parametrize("p", PS)
def test_linear_sample_mask_expectation_is_the_plain_layer(p):
    layer = _linear(p, mask="sample")
    ref = TF.linear(X_LIN, layer.weight, layer.bias).detach()
    with torch.no_grad():
        samples = layer(X_LIN.repeat(K_SAMPLE, 1), seed=7).reshape(K_SAMPLE, *ref.shape)
    assert mean_matches(samples, ref)


@pytest.mark.parametrize("p", PS)
def test_conv2d_batch_mask_expectation_is_the_plain_layer(p):
    layer = _wide(DropConnectConv2d(16, 2, 3, padding=1, p=p, dtype=torch.float64))
    x = torch.rand(1, 16, 3, 3, generator=_gen(11), dtype=torch.float64) + 0.1
    ref = TF.conv2d(x, layer.weight, layer.bias, padding=1).detach()
    with torch.no_grad():
        samples = torch.stack([layer(x, seed=k) for k in range(K_CONV_BATCH)])
    assert mean_matches(samples, ref)


@pytest.mark.parametrize("p", PS)
def test_conv2d_sample_mask_expectation_is_the_plain_layer(p):
    layer = _conv(p, mask="sample")
    ref = TF.conv2d(X_CONV, layer.weight, layer.bias, padding=1).detach()
    with torch.no_grad():
        samples = layer(X_CONV.expand(K_CONV, -1, -1, -1), seed=8)
    assert mean_matches(samples, ref[0])


@pytest.mark.parametrize("p", PS)
def test_seed_article_rule_fails_the_expectation_test(p):
    """Negative control: ``dropout(W) * p`` (the seed's DropConnectConv2D) has mean ``p * W``.

    With the same check and sample size that accept the correct layer at every ``p`` (the
    per-sample test above), the rule never matches the plain layer, and it matches the paper's
    unscaled ``(1 - p) * W`` layer only at ``p = 0.5``.
    """
    layer = _linear(p)
    w, b = layer.weight.detach(), layer.bias.detach()
    x = X_LIN.repeat(K_SAMPLE, 1)
    masked = DF.dropout(w.expand(len(x), 4, 6), p, seed=7) * p  # one seed-rule mask per row
    samples = (torch.einsum("noi,ni->no", masked, x) + b).reshape(K_SAMPLE, 3, 4)
    assert not mean_matches(samples, TF.linear(X_LIN, w, b))
    unscaled_mean = TF.linear(X_LIN, (1 - p) * w, b)
    assert mean_matches(samples, unscaled_mean) == (p == 0.5)


def test_seed_article_rule_fails_for_conv_too():
    layer = _conv(0.3)
    w, b = layer.weight.detach(), layer.bias.detach()
    samples = torch.stack(
        [TF.conv2d(X_CONV, DF.dropout(w, 0.3, seed=k) * 0.3, b, padding=1) for k in range(K)]
    )
    assert not mean_matches(samples, TF.conv2d(X_CONV, w, b, padding=1))


# --------------------------------------------------------------------------- per-sample masks


def test_linear_sample_mode_uses_one_mask_per_row():
    layer = _linear(0.4, mask="sample", bias=False)
    x = torch.randn(5, 2, 6, generator=_gen(0), dtype=torch.float64)
    y = layer(x, seed=3)
    ws = sample_weights(layer.weight, 10, 0.4, seed=3)
    expected = torch.einsum("moi,mi->mo", ws, x.reshape(10, 6)).reshape(5, 2, 4)
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ws[0], ws[1])


def test_conv_sample_mode_matches_per_example_convolutions():
    layer = _conv(0.4, mask="sample")
    layer.padding_mode = "reflect"
    x = torch.randn(3, 2, 5, 5, generator=_gen(1), dtype=torch.float64)
    y = layer(x, seed=5)
    ws = sample_weights(layer.weight, 3, 0.4, seed=5)
    for n in range(3):
        xn = TF.pad(x[n : n + 1], (1, 1, 1, 1), mode="reflect")
        ref = TF.conv2d(xn, ws[n], layer.bias)
        assert torch.allclose(y[n : n + 1], ref, rtol=1e-12, atol=1e-12)
    # unbatched input is one example
    assert torch.equal(layer(x[0], seed=5), layer(x[:1], seed=5)[0])


@pytest.mark.parametrize("cls,shape", [(DropConnectConv1d, (4, 2, 7)),
                                       (DropConnectConv3d, (2, 2, 3, 4, 4))])
def test_conv1d_conv3d_both_masks_expectation_and_shape(cls, shape):
    layer = cls(2, 3, 3, padding=1, groups=1, p=0.3, dtype=torch.float64)
    x = torch.randn(shape, generator=_gen(2), dtype=torch.float64)
    plain = layer._conv_forward(x, layer.weight, layer.bias).detach()
    for mask in ("batch", "sample"):
        layer.mask = mask
        assert layer(x, seed=1).shape == plain.shape
    layer.mask = "sample"
    with torch.no_grad():
        samples = layer(x[:1].expand(1500, *shape[1:]), seed=2)
    assert mean_matches(samples, plain[0])


def test_grouped_conv_sample_mode():
    layer = DropConnectConv2d(4, 6, 3, groups=2, p=0.3, mask="sample", dtype=torch.float64)
    x = torch.randn(3, 4, 5, 5, generator=_gen(3), dtype=torch.float64)
    y = layer(x, seed=6)
    ws = sample_weights(layer.weight, 3, 0.3, seed=6)
    for n in range(3):
        ref = TF.conv2d(x[n : n + 1], ws[n], layer.bias, groups=2)
        assert torch.allclose(y[n : n + 1], ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(lead=st.lists(st.integers(0, 3), min_size=0, max_size=2), seed=st.integers(0, 2**64 - 1))
def test_linear_shapes_and_seed_reproducibility(lead, seed):
    layer = DropConnectLinear(3, 2, mask="sample", p=0.3)
    x = torch.randn(*lead, 3)
    y = layer(x, seed=seed)
    assert y.shape == (*lead, 2)
    assert torch.equal(y, layer(x, seed=seed))


def test_generator_reproduces_masks():
    layer = _linear(0.5)
    a = layer(X_LIN, generator=_gen(3))
    b = layer(X_LIN, generator=_gen(3))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------- inference ("eval")


@pytest.mark.parametrize("make", [_linear, _conv])
def test_eval_mean_is_the_plain_layer(make):
    layer = make(0.5).eval()
    x = X_LIN if make is _linear else X_CONV
    plain = layer._conv_forward(x, layer.weight, layer.bias) if make is _conv else TF.linear(
        x, layer.weight, layer.bias)
    assert torch.equal(layer(x), plain)


def test_gaussian_without_activation_is_the_exact_mean():
    layer = _linear(0.5, inference="gaussian").eval()
    assert torch.equal(layer(X_LIN), TF.linear(X_LIN, layer.weight, layer.bias))


@pytest.mark.parametrize("act", [torch.relu, torch.tanh])
def test_gaussian_inference_is_closer_than_mean_to_the_monte_carlo_average(act):
    torch.manual_seed(0)
    layer = DropConnectLinear(40, 10, p=0.5, mask="sample", activation=act, dtype=torch.float64)
    x = torch.randn(4, 40, generator=_gen(7), dtype=torch.float64)
    with torch.no_grad():
        mc = torch.stack(
            [layer(x.repeat(2000, 1), seed=s).reshape(2000, 4, 10).mean(0) for s in range(5)]
        ).mean(0)
        layer.eval()
        mean_inf = layer(x)
        layer.inference = "gaussian"
        layer.n_samples = 20000
        gauss = layer(x, seed=1)
    err_gauss = (gauss - mc).norm().item()
    err_mean = (mean_inf - mc).norm().item()
    assert err_gauss < 0.5 * err_mean, (err_gauss, err_mean)


def test_gaussian_variance_formula_matches_the_masked_layer():
    """sigma^2 = p/(1-p) (W^2)(x^2): the variance of the masked pre-activation."""
    p = 0.3
    layer = _linear(p, mask="sample")
    with torch.no_grad():
        samples = layer(X_LIN.repeat(20000, 1), seed=2).reshape(20000, 3, 4)
    p_eff = rng.effective_p(rng.threshold(p))
    var = p_eff / (1 - p_eff) * TF.linear(X_LIN**2, layer.weight.detach() ** 2)
    # relative error of a sample variance of 20000 draws: about sqrt(2/20000) = 1%
    assert torch.allclose(samples.var(0), var, rtol=0.06)


def test_gaussian_conv_runs_and_is_seeded():
    layer = _conv(0.5, inference="gaussian", activation=torch.relu).eval()
    a, b = layer(X_CONV, seed=3), layer(X_CONV, seed=3)
    assert torch.equal(a, b) and a.shape == X_CONV[:, :2].shape
    assert not torch.equal(a, layer(X_CONV, seed=4))
    assert bool((a >= 0).all())


def test_activation_applies_in_every_mode():
    layer = _linear(0.5, activation=torch.relu)
    for mask in ("batch", "sample"):
        layer.mask = mask
        assert bool((layer(X_LIN - 3, seed=1) >= 0).all())
    layer.eval()
    assert torch.equal(layer(X_LIN), torch.relu(TF.linear(X_LIN, layer.weight, layer.bias)))


# ---------------------------------------------------------------------------- p = 0 and p = 1


@pytest.mark.parametrize("make", [_linear, _conv])
@pytest.mark.parametrize("mask", ["batch", "sample"])
def test_p0_training_is_the_plain_layer(make, mask):
    layer = make(0.0, mask=mask)
    x = X_LIN if make is _linear else X_CONV
    assert torch.allclose(layer(x, seed=1), layer.eval()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [_linear, _conv])
@pytest.mark.parametrize("mask", ["batch", "sample"])
def test_p1_training_outputs_only_the_bias_without_nan(make, mask):
    layer = make(1.0, mask=mask)
    with torch.no_grad():
        layer.weight[0].fill_(float("inf"))
    x = X_LIN if make is _linear else X_CONV
    y = layer(x, seed=1)
    bias = layer.bias.detach()
    expected = bias.expand_as(y) if make is _linear else bias.reshape(-1, 1, 1).expand_as(y)
    assert torch.equal(y, expected)
    layer.eval()
    layer.inference = "gaussian"
    layer.activation = torch.tanh
    assert torch.equal(layer(x, seed=1), torch.tanh(expected))


def test_p1_gradient_is_zero_for_the_weight():
    layer = _linear(1.0)
    layer(X_LIN, seed=0).sum().backward()
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))
    assert torch.equal(layer.bias.grad, torch.full((4,), 3.0, dtype=torch.float64))


# -------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("make", [_linear, _conv])
@pytest.mark.parametrize("mask", ["batch", "sample"])
def test_gradcheck(make, mask):
    layer = make(0.4, mask=mask)
    x = (X_LIN if make is _linear else X_CONV[:, :, :3, :3]).clone().requires_grad_()
    if mask == "sample":
        x = x.repeat(2, *([1] * (x.dim() - 1))).detach().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,), {"seed": 5})

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_gaussian_inference_gradcheck():
    layer = _linear(0.4, inference="gaussian", activation=torch.tanh, n_samples=8).eval()
    x = X_LIN.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer(t, seed=2), (x,))


# ----------------------------------------------------------------------------------- errors


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"DropConnectLinear: `p` must be in \[0, 1\], got 1.5\."):
        DropConnectLinear(2, 2, p=1.5)
    with pytest.raises(ValueError, match=r"DropConnectConv2d: `p` must be in \[0, 1\], got -0.1\."):
        DropConnectConv2d(2, 2, 3, p=-0.1)
    with pytest.raises(
        ValueError, match=r"DropConnectLinear: `mask` must be 'batch' or 'sample', got 'x'\."
    ):
        DropConnectLinear(2, 2, mask="x")
    with pytest.raises(
        ValueError, match=r"DropConnectConv1d: `inference` must be 'mean' or 'gaussian', got 'mc'\."
    ):
        DropConnectConv1d(2, 2, 3, inference="mc")
    with pytest.raises(
        ValueError, match=r"DropConnectLinear: `n_samples` must be a positive int, got 0\."
    ):
        DropConnectLinear(2, 2, n_samples=0)
    with pytest.raises(
        TypeError, match=r"DropConnectLinear: `n_samples` must be a positive int, got float 1\.5\."
    ):
        DropConnectLinear(2, 2, n_samples=1.5)
    with pytest.raises(
        TypeError, match=r"DropConnectLinear: `n_samples` must be a positive int, got bool True\."
    ):
        DropConnectLinear(2, 2, n_samples=True)
    with pytest.raises(
        TypeError, match=r"DropConnectLinear: `activation` must be callable or None, got str\."
    ):
        DropConnectLinear(2, 2, activation="relu")


def test_p_setter_and_call_errors():
    layer = DropConnectLinear(2, 2)
    with pytest.raises(ValueError, match=r"DropConnectLinear: `p` must be in \[0, 1\], got 2\."):
        layer.p = 2
    with pytest.raises(ValueError, match=r"DropConnectLinear: pass either `seed` or `generator`"):
        layer(torch.ones(1, 2), seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"DropConnectLinear: `generator` must be a torch\.Gener"):
        layer(torch.ones(1, 2), generator=3)
    with pytest.raises(ValueError, match=r"DropConnectLinear: `seed` must be"):
        layer(torch.ones(1, 2), seed=-1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_per_sample_conv_with_a_wrong_channel_count_or_rank_names_the_layer(dims):
    cls = {1: DropConnectConv1d, 2: DropConnectConv2d, 3: DropConnectConv3d}[dims]
    axes = {1: "L", 2: "H, W", 3: "D, H, W"}[dims]
    layer = cls(3, 4, 3, p=0.5, mask="sample")
    plain = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](3, 4, 3)
    for shape in [(2, 5) + (6,) * dims, (5,) + (6,) * dims, (2, 3, 2) + (6,) * dims]:
        with pytest.raises(RuntimeError):  # torch's own layer rejects it too
            plain(torch.ones(shape))
        message = (f"{cls.__name__}: expected `input` of shape (N, 3, {axes}) or (3, {axes}) "
                   f"(in_channels=3), got shape {shape}.")
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            layer(torch.ones(shape), seed=0)
    assert layer(torch.ones((2, 3) + (6,) * dims), seed=0).shape == (2, 4) + (4,) * dims


def test_from_module_errors():
    with pytest.raises(
        TypeError,
        match=r"DropConnectLinear\.from_module: `module` must be a torch\.nn\.Linear, got Conv2d\.",
    ):
        DropConnectLinear.from_module(nn.Conv2d(1, 1, 1))
    with pytest.raises(
        TypeError,
        match=r"DropConnectConv2d\.from_module: `module` must be a torch\.nn\.Conv2d, got Conv1d\.",
    ):
        DropConnectConv2d.from_module(nn.Conv1d(1, 1, 1))


# ------------------------------------------------------------------- structure and plumbing


def test_is_the_torch_layer_and_a_rate_module():
    layer = DropConnectConv2d(2, 3, 3)
    assert isinstance(layer, nn.Conv2d) and isinstance(layer, RateModule)
    assert isinstance(DropConnectLinear(2, 2), nn.Linear)
    layer.p = 0.25
    assert layer.p == 0.25 and layer._rate() == 0.25
    assert "p=0.25, mask='batch', inference='mean'" in repr(layer)


def test_from_module_copies_weights_bias_and_settings():
    src = nn.Conv2d(2, 4, (3, 2), stride=2, padding=1, dilation=1, groups=2, bias=True,
                    padding_mode="circular", dtype=torch.float64)
    layer = DropConnectConv2d.from_module(src, 0.2, mask="sample")
    assert layer.p == 0.2 and layer.mask == "sample" and layer.weight.dtype == torch.float64
    assert (layer.stride, layer.padding_mode, layer.groups) == ((2, 2), "circular", 2)
    assert torch.equal(layer.weight, src.weight) and torch.equal(layer.bias, src.bias)
    assert layer.weight is not src.weight
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    assert torch.equal(layer.eval()(x), src(x))
    lin = nn.Linear(3, 2, bias=False)
    dc = DropConnectLinear.from_module(lin, 0.5, inference="gaussian")
    assert dc.bias is None and torch.equal(dc.weight, lin.weight) and dc.inference == "gaussian"


def test_state_dict_is_exactly_weight_and_bias_and_round_trips():
    layer = DropConnectLinear(3, 2, p=0.3)
    assert list(layer.state_dict()) == ["weight", "bias"]
    plain = nn.Linear(3, 2)
    plain.load_state_dict(layer.state_dict())
    back = DropConnectLinear(3, 2, p=0.7)
    back.load_state_dict(plain.state_dict())
    assert torch.equal(back.weight, layer.weight) and back.p == 0.7
    conv = DropConnectConv2d(2, 2, 3, bias=False)
    assert list(conv.state_dict()) == ["weight"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_train_and_eval():
    layer = DropConnectLinear(5, 3, p=0.3)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 5)
    torch.manual_seed(3)
    eager = layer(x)
    torch.manual_seed(3)
    assert torch.allclose(compiled(x), eager)
    layer.p = 0.6  # read at run time: still the same graph
    torch.manual_seed(4)
    eager = layer(x)
    torch.manual_seed(4)
    assert torch.allclose(compiled(x), eager)
    layer.eval()
    assert torch.allclose(compiled(x), TF.linear(x, layer.weight, layer.bias))


def test_rate_scheduler_drives_the_layers():
    from dropkit.schedules import Linear, RateScheduler

    model = nn.Sequential(DropConnectLinear(3, 3, p=0.0), nn.ReLU(), DropConnectConv1d(1, 1, 1))
    sched = RateScheduler(model, Linear(0.0, 0.2, steps=10))
    for _ in range(5):
        sched.step()
    assert model[0].p == pytest.approx(0.1) and model[2].p == pytest.approx(0.1)
    assert float(model[0]._p_tensor) == pytest.approx(0.1)


def test_pickle_and_deepcopy_round_trip():
    import copy
    import pickle

    layer = DropConnectConv2d(2, 2, 3, p=0.3, mask="sample", inference="gaussian",
                              activation=torch.tanh)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert repr(clone) == repr(layer) and clone.p == 0.3
        assert torch.equal(clone.weight, layer.weight)
