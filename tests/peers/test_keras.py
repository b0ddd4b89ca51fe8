"""Port of Keras 3's regularization-layer and random dropout tests to dropkit.

Source: keras-team/keras at commit 3422977a5e38fb2f7709aaa9a08e47f0c43d0f60:
``keras/src/layers/regularization/{dropout,spatial_dropout,gaussian_dropout,gaussian_noise,
alpha_dropout}_test.py`` and the dropout tests of ``keras/src/random/random_test.py``.

API mapping: layers.Dropout(rate, noise_shape, seed) -> dropkit.nn.Dropout(p, noise_shape) called
with ``seed=``; SpatialDropout1D/2D/3D -> dropkit.nn.SpatialDropout1d/2d/3d with
``data_format="channels_last"`` (Keras' default image_data_format); GaussianDropout,
GaussianNoise, AlphaDropout -> dropkit.nn.GaussianDropout, GaussianNoise, AlphaDropout;
random.dropout -> dropkit.functional.dropout; ``training=True`` -> module in train mode.
NumPy inputs become torch tensors. ``run_layer_test`` is reduced to what applies to a torch
module: output shape, no trainable / non-trainable weights (parameters, buffers, state_dict).
Error-message regexes are translated to dropkit's wording of the same check (argument `p`, the
range [0, 1]); every assertion and tolerance is otherwise the original's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dropkit.functional as DF
from dropkit import nn as dnn

TYPE_ERRORS_DOC = ("documented: dropkit raises TypeError for a value of the wrong type and "
                   "ValueError for a value out of range (src/dropkit/_validation.py docstring; "
                   "dropkit.functional.dropout 'Raises'); Keras raises ValueError for both")


def assert_all_close(a, b, atol=1e-6, rtol=1e-6):
    """keras.testing.TestCase.assertAllClose (np.testing.assert_allclose)."""
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               atol=atol, rtol=rtol)


def ones(*shape):
    return torch.ones(shape, dtype=torch.float32)


def run_layer_test(layer, input_shape, training=True, expected_output_shape=None):
    """The parts of ``run_layer_test`` that apply to a torch module."""
    layer.train(training)
    out = layer(torch.randn(input_shape))
    assert tuple(out.shape) == tuple(expected_output_shape or input_shape)
    assert len(list(layer.parameters())) == 0  # expected_num_trainable_weights=0
    assert len(list(layer.buffers())) == 0  # expected_num_non_trainable_weights=0
    assert layer.state_dict() == {}


# --- dropout_test.py -------------------------------------------------------------------------


def test_dropout_basics():
    run_layer_test(dnn.Dropout(0.2), (2, 3), expected_output_shape=(2, 3))


def test_dropout_rescaling():
    inputs = ones(20, 500)
    layer = dnn.Dropout(0.5)
    outputs = layer(inputs, seed=1337).numpy()
    assert_all_close(np.mean(outputs), 1.0, atol=0.02)
    assert_all_close(np.max(outputs), 2.0)


def test_dropout_partial_noise_shape_dynamic():
    inputs = ones(20, 5, 10)
    layer = dnn.Dropout(0.5, noise_shape=(None, 1, None))
    outputs = layer(inputs)
    assert_all_close(outputs[:, 0, :], outputs[:, 1, :])


def test_dropout_partial_noise_shape_static():
    inputs = ones(20, 5, 10)
    layer = dnn.Dropout(0.5, noise_shape=(20, 1, 10))
    outputs = layer(inputs)
    assert_all_close(outputs[:, 0, :], outputs[:, 1, :])


@pytest.mark.parametrize("cls", [dnn.Dropout, dnn.AlphaDropout])
@pytest.mark.parametrize("rate", [-0.5, 1.5])
def test_dropout_rate_out_of_range(cls, rate):
    """test_dropout_negative_rate / _rate_greater_than_one (and the AlphaDropout twins)."""
    with pytest.raises(ValueError, match=r"`p` must be in \[0, 1\]"):
        cls(p=rate)


def test_validate_noise_shape_none():
    layer = dnn.Dropout(0.5, noise_shape=None)
    assert layer.noise_shape is None


def test_validate_noise_shape_integer_tuple():
    layer = dnn.Dropout(0.5, noise_shape=(20, 1, 10))
    assert layer.noise_shape == (20, 1, 10)


def test_validate_noise_shape_none_values():
    layer = dnn.Dropout(0.5, noise_shape=(None, 1, None))
    assert layer.noise_shape == (None, 1, None)


def test_validate_noise_shape_cast_to_a_tuple():
    layer = dnn.Dropout(0.5, noise_shape=[20, 1, 10])
    assert layer.noise_shape == (20, 1, 10)
    assert isinstance(layer.noise_shape, tuple)


@pytest.mark.xfail(strict=True, raises=TypeError, reason=TYPE_ERRORS_DOC)
def test_validate_noise_shape_non_iterable():
    with pytest.raises(ValueError, match="`noise_shape`"):
        dnn.Dropout(0.5, noise_shape="Invalid")


@pytest.mark.xfail(strict=True, raises=TypeError, reason=TYPE_ERRORS_DOC)
def test_validate_noise_shape_invalid_type():
    with pytest.raises(ValueError, match="`noise_shape"):
        dnn.Dropout(0.5, noise_shape=(20, 1.5, 10))


@pytest.mark.parametrize("shape", [(20, -1, 10), (20, 0, 10)])
def test_validate_noise_shape_non_positive_value(shape):
    """test_validate_noise_shape_negative_value / _zero_value."""
    with pytest.raises(ValueError, match=r"`noise_shape\[1\]` must be a positive int or None"):
        dnn.Dropout(0.5, noise_shape=shape)


# --- spatial_dropout_test.py -----------------------------------------------------------------

SPATIAL = {1: dnn.SpatialDropout1d, 2: dnn.SpatialDropout2d, 3: dnn.SpatialDropout3d}


def test_spatial_dropout_1d():
    run_layer_test(dnn.SpatialDropout1d(0.5, data_format="channels_last"), (2, 3, 4), True)
    run_layer_test(dnn.SpatialDropout1d(0.5, data_format="channels_last"), (2, 3, 4), False)


@pytest.mark.parametrize("dims, shape", [(2, (2, 3, 4, 5)), (3, (2, 3, 4, 4, 5))])
def test_spatial_dropout_2d_3d(dims, shape):
    run_layer_test(SPATIAL[dims](0.5, data_format="channels_last"), shape)
    run_layer_test(SPATIAL[dims](0.5, data_format="channels_first"), shape)


@pytest.mark.parametrize("dims, shape", [(1, (3, 2)), (2, (3, 2, 4)), (3, (3, 2, 4, 2))])
def test_spatial_dropout_dynamic(dims, shape):
    """layers.Input(shape) has a free batch axis: any batch size works."""
    layer = SPATIAL[dims](0.5, data_format="channels_last")
    for batch in (1, 4):
        layer(torch.ones((batch, *shape)))


def test_spatial_dropout_1D_correctness():
    inputs = ones(10, 3, 10)
    layer = dnn.SpatialDropout1d(0.5, data_format="channels_last")
    outputs = layer(inputs)
    assert_all_close(outputs[:, 0, :], outputs[:, 1, :])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_spatial_dropout_2D_correctness(data_format):
    if data_format == "channels_last":
        inputs = ones(10, 3, 3, 10)
    else:
        inputs = ones(10, 10, 3, 3)
    layer = dnn.SpatialDropout2d(0.5, data_format=data_format)
    outputs = layer(inputs)
    if data_format == "channels_last":
        assert_all_close(outputs[:, 0, 0, :], outputs[:, 1, 1, :])
    else:
        assert_all_close(outputs[:, :, 0, 0], outputs[:, :, 1, 1])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_spatial_dropout_3D_correctness(data_format):
    if data_format == "channels_last":
        inputs = ones(10, 3, 3, 3, 10)
    else:
        inputs = ones(10, 10, 3, 3, 3)
    layer = dnn.SpatialDropout3d(0.5, data_format=data_format)
    outputs = layer(inputs)
    if data_format == "channels_last":
        assert_all_close(outputs[:, 0, 0, 0, :], outputs[:, 1, 1, 1, :])
    else:
        assert_all_close(outputs[:, :, 0, 0, 0], outputs[:, :, 1, 1, 1])


# --- gaussian_dropout_test.py, gaussian_noise_test.py --------------------------------------


def test_gaussian_dropout_basics():
    run_layer_test(dnn.GaussianDropout(0.2), (2, 3), expected_output_shape=(2, 3))


def test_gaussian_dropout_correctness():
    inputs = ones(20, 500)
    layer = dnn.GaussianDropout(0.3)
    outputs = layer(inputs, seed=1337)
    assert_all_close(np.std(outputs.numpy()), np.sqrt(0.3 / (1 - 0.3)), atol=0.02)


def test_gaussian_noise_basics():
    run_layer_test(dnn.GaussianNoise(0.2), (2, 3), expected_output_shape=(2, 3))


def test_gaussian_noise_correctness():
    inputs = ones(20, 500)
    layer = dnn.GaussianNoise(0.3)
    outputs = layer(inputs, seed=1337)
    assert_all_close(np.std(outputs.numpy()), 0.3, atol=0.02)


# --- alpha_dropout_test.py -------------------------------------------------------------------


def test_alpha_dropout_basics():
    run_layer_test(dnn.AlphaDropout(0.2), (2, 3), expected_output_shape=(2, 3))


def test_alpha_dropout_correctness():
    inputs = ones(20, 500)
    layer = dnn.AlphaDropout(0.3)
    outputs = layer(inputs, seed=1337)
    assert_all_close(np.std(outputs.numpy()), 1.0, atol=1e-1)


@pytest.mark.parametrize("noise_shape", [(None, 1, None), (20, 1, 10)])
def test_alpha_dropout_partial_noise_shape(noise_shape):
    inputs = ones(20, 5, 10)
    layer = dnn.AlphaDropout(0.5, noise_shape=noise_shape)
    outputs = layer(inputs)
    assert_all_close(outputs[:, 0, :], outputs[:, 1, :])


# --- random_test.py --------------------------------------------------------------------------


def test_random_dropout():
    x = ones(10, 10)
    assert_all_close(DF.dropout(x, 0, seed=0), x)
    x_res = DF.dropout(x, 0.5, seed=0)
    assert torch.max(x_res) > torch.max(x)
    assert_all_close(torch.max(x_res), 2.0)
    assert int(torch.sum(x_res == 0)) > 2
    x_res = DF.dropout(x, 1.0, seed=0)
    assert_all_close(x_res, torch.zeros(10, 10))


def test_random_dropout_noise_shape():
    inputs = ones(2, 3, 5, 7)
    x = DF.dropout(inputs, 0.3, noise_shape=[None, 3, 5, None], seed=0)
    assert tuple(x.shape) == (2, 3, 5, 7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_random_dropout_dtype(dtype):
    x = torch.ones((3, 5), dtype=dtype)
    res = DF.dropout(x, 0.8, seed=0)
    assert res.dtype == dtype
