"""Port of PyTorch's dropout tests to dropkit.

Sources:
- pytorch/pytorch ``test/nn/test_dropout.py`` at commit 09d3a8687489ca4b89f667780644d6aceea9e30b
  (TestDropoutNN, TestDropoutNNDeviceType on CPU).
- pytorch/pytorch ``torch/testing/_internal/common_methods_invocations.py`` as shipped in torch
  2.13.0 (git cf30153c4c131c8164ee7798e5022d810682e2cb): the ``nn.functional.dropout`` OpInfo's
  ``sample_inputs_dropout`` and its generic checks (non-contiguous samples, in-place variant,
  identity at p=0 / eval), ported as plain tests.

API mapping: nn.Dropout -> dropkit.nn.Dropout, nn.Dropout1d/2d/3d -> dropkit.nn.SpatialDropout1d/
2d/3d, nn.AlphaDropout -> dropkit.nn.AlphaDropout, nn.FeatureAlphaDropout ->
dropkit.nn.AlphaDropout(noise_shape=(None, None, 1, ...)), F.dropout -> dropkit.functional.dropout;
``freeze_rng_state()`` / ``wrapper_set_seed`` -> an explicit ``seed=``. Assertions and tolerances
are the originals'.
"""

from __future__ import annotations

import itertools
import random
from itertools import product

import pytest
import torch

import dropkit
import dropkit.functional as DF
from dropkit import nn as dnn

FEATURE_ALPHA = {4: (None, None, 1, 1), 5: (None, None, 1, 1, 1)}
STRICT_RANK_DOC = ("dropkit.functional.spatial_dropout*d docstring: 'Any other rank is a "
                   "ValueError' (no warning-and-guess as torch's Dropout2d/3d)")


def feature_alpha_dropout(p, rank):
    return dnn.AlphaDropout(p, noise_shape=FEATURE_ALPHA[rank])


# --- TestDropoutNN ---------------------------------------------------------------------------


def _test_alpha_dropout(make, input):
    mean = input.mean()
    std = input.std()

    for p in [0.2, 0.5, 0.8]:
        module = make(p)
        input_var = input.detach().clone().requires_grad_()
        output = module(input_var)
        # output mean should be close to input mean
        assert abs(output.data.mean() - mean) < 0.1
        # output std should be close to input std
        assert abs(output.data.std() - std) < 0.1
        output.backward(input)


def test_AlphaDropout():
    torch.manual_seed(0)
    input = torch.randn(5000)
    _test_alpha_dropout(dnn.AlphaDropout, input)


def test_FeatureAlphaDropout():
    rnd = random.Random(0)
    b, w, h, d = rnd.randint(1, 5), rnd.randint(1, 5), rnd.randint(1, 5), rnd.randint(1, 2)
    num_features = 1000
    torch.manual_seed(0)
    input = torch.randn(num_features, b, d, w, h)
    _test_alpha_dropout(lambda p: feature_alpha_dropout(p, 5), input)

    # no batch dims
    input = torch.randn(50, 20, 64, 64)
    _test_alpha_dropout(lambda p: feature_alpha_dropout(p, 4), input)


def test_invalid_dropout_p():
    v = torch.ones(1)
    for cls in (dnn.Dropout, dnn.SpatialDropout1d, dnn.SpatialDropout2d, dnn.SpatialDropout3d):
        with pytest.raises(ValueError):
            cls(-0.1)
        with pytest.raises(ValueError):
            cls(1.1)
    with pytest.raises(ValueError):
        DF.dropout(v, -0.1)
    with pytest.raises(ValueError):
        DF.dropout(v, 1.1)


# --- TestDropoutNNDeviceType (cpu) -------------------------------------------------------------


def _test_dropout(cls, input, memory_format=torch.contiguous_format):
    p = 0.2
    input = input.fill_(1 - p)

    module = cls(p)
    input_var = input.clone(memory_format=memory_format).requires_grad_()
    output = module(input_var)
    assert output.is_contiguous(memory_format=memory_format)
    assert abs(output.data.mean() - (1 - p)) < 0.05
    output.backward(input)
    assert input_var.grad.is_contiguous(memory_format=memory_format)
    assert abs(input_var.grad.data.mean() - (1 - p)) < 0.05

    module = cls(p, True)
    input_var = input.clone(memory_format=memory_format).requires_grad_()
    output = module(input_var + 0)
    assert output.is_contiguous(memory_format=memory_format)
    assert abs(output.data.mean() - (1 - p)) < 0.05
    output.backward(input)
    assert input_var.grad.is_contiguous(memory_format=memory_format)
    assert abs(input_var.grad.data.mean() - (1 - p)) < 0.05

    # check eval mode doesn't change anything
    for inplace in [True, False]:
        module = cls(p, inplace).eval()
        torch.testing.assert_close(input, module(input))

    # Check that these don't raise errors
    module.__repr__()
    str(module)


CLOSE_TO_ZERO_P = 1e-10  # Should be almost zero but not zero, as for p=0 different path is taken


def _test_dropout_discontiguous(cls, memory_format=torch.contiguous_format, ps=(0,)):
    # Dropout preserves layout and data for different memory formats, for p == 0 or close to 0.
    # The original loops over p in [0, close_to_zero_p]; the two are separate tests here.
    for p in ps:
        inp = torch.ones(2, 3, 3, 3)
        inp_discontiguous = torch.empty(2, 3, 3, 6, memory_format=memory_format)[..., ::2]
        inp_discontiguous.copy_(inp)
        mod = cls(p=p)
        out = mod(inp_discontiguous)
        if p != 0:  # Zero will keep strides as is based on input.
            assert out.is_contiguous(memory_format=memory_format)
        torch.testing.assert_close(inp_discontiguous, out)


def _invert_perm(p):
    d = {x: i for i, x in enumerate(p)}
    return (d[0], d[1], d[2], d[3])


def _stride_mean_preserve_cases():
    inp = torch.ones(2, 3, 4, 5)
    shifts = [(0, 0), (1, 0), (0, 1), (1, 1)]
    for perm in itertools.permutations((0, 1, 2, 3), r=4):
        for shift in shifts:
            for p in [1e-10, 0.3, 0.5, 0.7]:
                permuted_inp = inp.permute(perm).contiguous().permute(_invert_perm(perm))
                permuted_inp = permuted_inp[shift[0]:, shift[1]:, :, :]
                yield inp, perm, p, permuted_inp


def test_Dropout_stride_mean_preserve_values():
    """_test_dropout_stride_mean_preserve: the value assertions."""
    for inp, _, p, permuted_inp in _stride_mean_preserve_cases():
        out = dnn.Dropout(p=p)(permuted_inp)
        torch.testing.assert_close(inp.mean(), out.mean(), rtol=0.5, atol=0.5)
        if p == 1e-10:
            torch.testing.assert_close(permuted_inp, out)
        else:
            assert not torch.equal(permuted_inp, out)


def test_Dropout_stride_mean_preserve_layout():
    """_test_dropout_stride_mean_preserve: ``out.permute(perm).is_contiguous()``."""
    for _, perm, p, permuted_inp in _stride_mean_preserve_cases():
        out = dnn.Dropout(p=p)(permuted_inp)
        assert out.permute(perm).is_contiguous(), (perm, p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_Dropout(dtype):
    input = torch.empty(1000, dtype=dtype)
    _test_dropout(dnn.Dropout, input)


@pytest.mark.parametrize("cls", [dnn.Dropout, dnn.SpatialDropout2d, dnn.SpatialDropout3d])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_Dropout_discontiguous_p0(cls, memory_format):
    _test_dropout_discontiguous(cls, memory_format=memory_format, ps=(0,))


@pytest.mark.parametrize("cls", [dnn.Dropout, dnn.SpatialDropout2d, dnn.SpatialDropout3d])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_Dropout_discontiguous_close_to_zero_p(cls, memory_format):
    _test_dropout_discontiguous(cls, memory_format=memory_format, ps=(CLOSE_TO_ZERO_P,))


def _test_dropoutNd_no_batch(dropout, input):
    input_clone = input.clone()
    res_no_batch = dropout(input, seed=1234)
    res_batched = dropout(input_clone.unsqueeze(0), seed=1234).squeeze(0)
    torch.testing.assert_close(res_no_batch, res_batched)


def _test_dropoutNd_channel_zero(dropout, input):
    # The number of zeros in a channel is 0 or the channel's size for a fully positive input
    shape = input.shape
    B = shape[0]
    C = shape[1]
    channel_numel = torch.tensor(shape[2:]).prod()
    result = dropout(input)

    for b, c in product(range(B), range(C)):
        assert result[b, c].count_nonzero() in (0, channel_numel)


def _sizes(n):
    rnd = random.Random(n)
    return [rnd.randint(1, 5) for _ in range(3)] + [rnd.randint(1, 2)]


def test_Dropout1d():
    rnd = random.Random(1)
    N, C, L = rnd.randint(10, 15), rnd.randint(10, 15), rnd.randint(10, 15)
    input = torch.empty(N, C, L, dtype=torch.double)
    _test_dropout(dnn.SpatialDropout1d, input)

    # no batch dims
    input = torch.rand(50, 2, dtype=torch.double)
    _test_dropoutNd_no_batch(dnn.SpatialDropout1d(p=0.5), input)
    _test_dropoutNd_no_batch(dnn.SpatialDropout1d(p=0.5, inplace=True), input)

    # check that complete channels are dropped
    input = torch.ones(10, 4, 2, dtype=torch.double)
    _test_dropoutNd_channel_zero(dnn.SpatialDropout1d(p=0.5), input)
    _test_dropoutNd_channel_zero(dnn.SpatialDropout1d(p=0.5, inplace=True), input)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason=f"documented: {STRICT_RANK_DOC}; a wrong rank is a ValueError, not "
                   "torch's RuntimeError")
@pytest.mark.parametrize("shape", [(1, 2, 2, 2), (2,)])
def test_Dropout1d_wrong_rank_is_RuntimeError(shape):
    try:
        dnn.SpatialDropout1d(p=0.5)(torch.rand(shape))
    except RuntimeError as e:
        assert f"received a {len(shape)}D input" in str(e)
    except ValueError:
        raise AssertionError("ValueError, not RuntimeError") from None


def test_Dropout2d():
    b, w, h, _ = _sizes(2)
    num_features = 1000
    input = torch.empty(num_features, b, w, h)
    _test_dropout(dnn.SpatialDropout2d, input)

    # check that complete channels are dropped
    input = torch.ones(10, 4, 2, 2)
    _test_dropoutNd_channel_zero(dnn.SpatialDropout2d(p=0.5), input)
    _test_dropoutNd_channel_zero(dnn.SpatialDropout2d(p=0.5, inplace=True), input)


def test_Dropout2d_channels_last():
    b, w, h, _ = _sizes(2)
    input = torch.empty(1000, b, w, h)
    _test_dropout(dnn.SpatialDropout2d, input, memory_format=torch.channels_last)


@pytest.mark.xfail(strict=True, reason=f"documented: {STRICT_RANK_DOC}")
@pytest.mark.parametrize("shape, message", [
    ((1, 2, 2, 2, 2), "Received a 5-D input to dropout2d"),
    ((1, 2), "Received a 2-D input to dropout2d"),
    ((1, 2, 2), "assuming that channel-wise 1D dropout behavior is desired"),
])
def test_Dropout2d_warns_on_other_ranks(shape, message):
    with pytest.warns(UserWarning, match=message):
        dnn.SpatialDropout2d(p=0.5)(torch.rand(shape))


def test_Dropout3d():
    b, w, h, d = _sizes(3)
    num_features = 1000
    input = torch.empty(num_features, b, d, w, h)
    _test_dropout(dnn.SpatialDropout3d, input)

    # no batch dims
    input = torch.rand(50, 2, 2, 2)
    _test_dropoutNd_no_batch(dnn.SpatialDropout3d(p=0.5), input)
    _test_dropoutNd_no_batch(dnn.SpatialDropout3d(p=0.5, inplace=True), input)

    # check that complete channels are dropped
    input = torch.ones(10, 4, 2, 2, 2)
    _test_dropoutNd_channel_zero(dnn.SpatialDropout3d(p=0.5), input)
    _test_dropoutNd_channel_zero(dnn.SpatialDropout3d(p=0.5, inplace=True), input)


@pytest.mark.xfail(strict=True, reason=f"documented: {STRICT_RANK_DOC}")
@pytest.mark.parametrize("shape, message", [
    ((1, 2, 2, 2, 2, 2), "Received a 6-D input to dropout3d"),
    ((1, 2, 2), "Received a 3-D input to dropout3d"),
])
def test_Dropout3d_warns_on_other_ranks(shape, message):
    with pytest.warns(UserWarning, match=message):
        dnn.SpatialDropout3d(p=0.5)(torch.rand(shape))


def test_empty_dropout():
    x = torch.tensor([])
    out = DF.dropout(x)
    assert out.size() == x.size()


# --- OpInfo nn.functional.dropout: sample_inputs_dropout and the generic checks ---------------

S = 5
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def sample_inputs_dropout(dtype, requires_grad):
    """``sample_inputs_dropout``: cases ((S, S), (S,), ()) x p in [0, .5, 1] x training, then one
    sample with the defaults. Tensors as ``make_tensor`` makes them (uniform in [-9, 9])."""
    def make_arg(shape):
        t = torch.empty(shape, dtype=torch.float64).uniform_(-9, 9).to(dtype)
        return t.requires_grad_(requires_grad)

    case = ()
    for case, p, training in product(((S, S), (S,), ()), [0.0, 0.5, 1.0], [True, False]):
        yield make_arg(case), {"p": p, "training": training}
    yield make_arg(case), {}


def _noncontiguous(t):
    """``noncontiguous_like``: the same values in a tensor with a stride of 2."""
    if t.numel() <= 1:
        return t.detach().clone().requires_grad_(t.requires_grad)
    big = torch.empty((*t.shape, 2), dtype=t.dtype)[..., 0]
    big.copy_(t.detach())
    assert not big.is_contiguous()
    return big.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opinfo_noncontiguous_samples(dtype):
    """TestCommon.test_noncontiguous_samples: the op on a non-contiguous copy of each sample
    gives the same output and the same input gradient (same seed)."""
    torch.manual_seed(0)
    for x, kwargs in sample_inputs_dropout(dtype, requires_grad=True):
        xn = _noncontiguous(x)
        out = DF.dropout(x, **kwargs, seed=42)
        out_n = DF.dropout(xn, **kwargs, seed=42)
        torch.testing.assert_close(out, out_n, equal_nan=True)
        g = torch.randn(out.shape).to(dtype)
        (grad,) = torch.autograd.grad(out, x, g, allow_unused=True)
        (grad_n,) = torch.autograd.grad(out_n, xn, g, allow_unused=True)
        torch.testing.assert_close(grad, grad_n, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opinfo_variant_consistency_inplace(dtype):
    """TestCommon.test_variant_consistency_eager: the in-place variant (``inplace=True``) gives
    the out-of-place result, writes it into the input and returns the input."""
    torch.manual_seed(0)
    for x, kwargs in sample_inputs_dropout(dtype, requires_grad=False):
        expected = DF.dropout(x.clone(), **kwargs, seed=7)
        xi = x.clone()
        got = DF.dropout(xi, **kwargs, inplace=True, seed=7)
        assert got is xi
        torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opinfo_identity_samples(dtype):
    """The samples that must be the identity (p = 0, or training=False) give the input back,
    and p = 1 in training gives zeros with a zero gradient."""
    torch.manual_seed(0)
    for x, kwargs in sample_inputs_dropout(dtype, requires_grad=True):
        out = DF.dropout(x, **kwargs)
        p, training = kwargs.get("p", 0.5), kwargs.get("training", True)
        if p == 0.0 or not training:
            torch.testing.assert_close(out, x, rtol=0, atol=0)
        elif p == 1.0:
            torch.testing.assert_close(out, torch.zeros_like(x), rtol=0, atol=0)
            if out.requires_grad:
                (grad,) = torch.autograd.grad(out.sum(), x)
                torch.testing.assert_close(grad, torch.zeros_like(x), rtol=0, atol=0)


def test_opinfo_uses_dropkit():
    """Guard: the ports above run dropkit's functions, not torch's."""
    assert DF.dropout is dropkit.functional.dropout
    assert DF.dropout.__module__ == "dropkit.functional"
