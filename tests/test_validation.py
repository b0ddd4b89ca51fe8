"""Every error message of ``dropkit.functional``, ``dropkit.nn`` (at construction) and
``dropkit.numpy``: the exception type and the full text.

Messages start with the function (or class) name, name the argument, say what was expected and
show what was received. Validation happens before any short cut, so every check is also made
with ``training=False`` and with ``p=0``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import dropkit
import dropkit.functional as DF
import dropkit.numpy as dnp
from helpers import FUNCS

NAMES = tuple(FUNCS)
MODED = ("dropout", "spatial_dropout1d", "spatial_dropout2d", "spatial_dropout3d",
         "timestep_dropout")
SPATIAL = ("spatial_dropout1d", "spatial_dropout2d", "spatial_dropout3d")
NOISE_SHAPED = ("dropout", "alpha_dropout")
SHAPES = {
    "dropout": (1, 7, 5),
    "spatial_dropout1d": (2, 3, 4),
    "spatial_dropout2d": (2, 3, 4, 4),
    "spatial_dropout3d": (2, 3, 2, 2, 2),
    "timestep_dropout": (2, 5, 3),
    "gaussian_dropout": (1, 7, 5),
    "alpha_dropout": (1, 7, 5),
}

CLASSES = {
    "Dropout": dropkit.nn.Dropout,
    "SpatialDropout1d": dropkit.nn.SpatialDropout1d,
    "SpatialDropout2d": dropkit.nn.SpatialDropout2d,
    "SpatialDropout3d": dropkit.nn.SpatialDropout3d,
    "TimestepDropout": dropkit.nn.TimestepDropout,
    "GaussianDropout": dropkit.nn.GaussianDropout,
    "AlphaDropout": dropkit.nn.AlphaDropout,
}
MODED_CLASSES = ("Dropout", "SpatialDropout1d", "SpatialDropout2d", "SpatialDropout3d",
                 "TimestepDropout")
SPATIAL_CLASSES = ("SpatialDropout1d", "SpatialDropout2d", "SpatialDropout3d")

DTYPE_LIST = "torch.float16, torch.bfloat16, torch.float32 or torch.float64"


def raises(exc: type[Exception], message: str):
    """``pytest.raises`` matching the whole message exactly."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


# Variants of an otherwise valid call: validation must not be skipped by the short cuts.
CONTEXTS = ({}, {"training": False}, {"p": 0.0}, {"p": 1.0})


def call(name: str, context: dict, **kwargs):
    args = {"p": 0.5, **context, **kwargs}
    return FUNCS[name](torch.ones(SHAPES[name]), **args)


# --------------------------------------------------------------------------------------------
# p
# --------------------------------------------------------------------------------------------

BAD_P = [
    ("0.5", TypeError, "`p` must be a real number in [0, 1], got str '0.5'."),
    (True, TypeError, "`p` must be a real number in [0, 1], got bool True."),
    (False, TypeError, "`p` must be a real number in [0, 1], got bool False."),
    (None, TypeError, "`p` must be a real number in [0, 1], got NoneType None."),
    (0.5j, TypeError, "`p` must be a real number in [0, 1], got complex 0.5j."),
    ([0.5], TypeError, "`p` must be a real number in [0, 1], got list [0.5]."),
    (float("nan"), ValueError, "`p` must be in [0, 1], got nan."),
    (-0.1, ValueError, "`p` must be in [0, 1], got -0.1."),
    (1.5, ValueError, "`p` must be in [0, 1], got 1.5."),
    (-1, ValueError, "`p` must be in [0, 1], got -1."),
    (2, ValueError, "`p` must be in [0, 1], got 2."),
    (float("inf"), ValueError, "`p` must be in [0, 1], got inf."),
    (1.0 + 2.0**-52, ValueError, f"`p` must be in [0, 1], got {1.0 + 2.0**-52!r}."),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("p", "exc", "message"), BAD_P)
def test_function_bad_p(name, p, exc, message):
    for context in ({}, {"training": False}):
        with raises(exc, f"{name}: {message}"):
            call(name, context, p=p)
    with raises(exc, f"{name}: {message}"):
        FUNCS[name](torch.ones(SHAPES[name]), p)  # positional


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("p", "exc", "message"), BAD_P)
def test_module_bad_p(cls, p, exc, message):
    with raises(exc, f"{cls}: {message}"):
        CLASSES[cls](p)
    with raises(exc, f"{cls}: {message}"):
        CLASSES[cls](p=p)


@pytest.mark.parametrize("name", NAMES)
def test_function_tensor_p_must_be_a_0dim_floating_tensor(name):
    for bad, desc in ((torch.tensor([0.5]), "shape (1,) and dtype torch.float32"),
                      (torch.tensor(1), "shape () and dtype torch.int64")):
        with raises(TypeError, f"{name}: `p` must be a real number in [0, 1] or a 0-dim "
                    f"floating tensor, got a tensor of {desc}."):
            FUNCS[name](torch.ones(SHAPES[name]), bad)


# Every public function that takes a rate, called with x and p (the rest valid).
RATE_FUNCS = {
    **{name: (lambda f, s: lambda p, **kw: f(torch.ones(s), p, **kw))(FUNCS[name], SHAPES[name])
       for name in NAMES},
    "drop_path": lambda p, **kw: DF.drop_path(torch.ones(4, 3), p, **kw),
    "drop_connect": lambda p, **kw: DF.drop_connect(torch.ones(4, 3), p, **kw),
    "drop_block2d": lambda p, **kw: DF.drop_block2d(torch.ones(2, 3, 6, 6), p, 3, **kw),
    "bias_dropout_add": lambda p, **kw: DF.bias_dropout_add(torch.ones(4, 3), None,
                                                            torch.ones(4, 3), p, **kw),
    "drop_path_add": lambda p, **kw: DF.drop_path_add(torch.ones(4, 3), torch.ones(4, 3), p,
                                                      **kw),
}


@pytest.mark.parametrize("name", RATE_FUNCS)
@pytest.mark.parametrize("value", [1.5, -0.25, float("nan")])
def test_function_tensor_p_out_of_range_names_the_function(name, value):
    for training in (True, False):
        with raises(ValueError, f"{name}: `p` must be in [0, 1], got {value!r}."):
            RATE_FUNCS[name](torch.tensor(value, dtype=torch.float64), training=training)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_tensor_p_out_of_range_fails_when_the_op_runs():
    # Under torch.compile the value is only known when the op runs, which cannot name the caller.
    compiled = torch.compile(lambda x, p: DF.dropout(x, p), fullgraph=True)
    x = torch.ones(4, 3)
    assert compiled(x, torch.tensor(0.0)).shape == x.shape
    with pytest.raises(ValueError, match=re.escape("dropkit: `p` must be in [0, 1], got 1.5.")):
        compiled(x, torch.tensor(1.5))


@pytest.mark.parametrize("cls", CLASSES)
def test_module_p_must_be_a_number_not_a_tensor(cls):
    with raises(TypeError, f"{cls}: `p` must be a real number in [0, 1], got Tensor "
                "tensor(0.5000)."):
        CLASSES[cls](torch.tensor(0.5))


def test_valid_p_values_are_accepted():
    x = torch.ones(10)
    for p in (0, 1, 0.0, 1.0, 0.25, np.float32(0.25), np.float64(0.25), 2.0**-18):
        DF.dropout(x, p)
        assert isinstance(dropkit.nn.Dropout(p).p, float)
    assert dropkit.nn.Dropout(1).p == 1.0


# --------------------------------------------------------------------------------------------
# training / inplace
# --------------------------------------------------------------------------------------------

NOT_BOOL = [
    (1, "int 1"),
    (0, "int 0"),
    ("yes", "str 'yes'"),
    (None, "NoneType None"),
    (torch.tensor(True), "Tensor tensor(True)"),
    (np.bool_(True), "bool True"),
]


def _numpy_bool(value: np.bool_) -> str:
    """How a message shows a NumPy bool: NumPy 2 names its type ``bool``, so the message
    qualifies it (``numpy.bool np.True_``) instead of showing ``bool np.True_``."""
    kind = type(value).__name__
    return f"{'numpy.bool' if kind == 'bool' else kind} {value!r}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("value", "received"), NOT_BOOL)
def test_function_training_not_bool(name, value, received):
    if isinstance(value, np.bool_):
        received = _numpy_bool(value)
    for context in ({}, {"p": 0.0}):
        with raises(TypeError, f"{name}: `training` must be a bool, got {received}."):
            call(name, context, training=value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("value", "received"), NOT_BOOL)
def test_function_inplace_not_bool(name, value, received):
    if isinstance(value, np.bool_):
        received = _numpy_bool(value)
    for context in CONTEXTS:
        with raises(TypeError, f"{name}: `inplace` must be a bool, got {received}."):
            call(name, context, inplace=value)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("value", "received"), NOT_BOOL)
def test_module_inplace_not_bool(cls, value, received):
    if isinstance(value, np.bool_):
        received = _numpy_bool(value)
    with raises(TypeError, f"{cls}: `inplace` must be a bool, got {received}."):
        CLASSES[cls](0.5, value)
    with raises(TypeError, f"{cls}: `inplace` must be a bool, got {received}."):
        CLASSES[cls](inplace=value)


# --------------------------------------------------------------------------------------------
# mode / data_format
# --------------------------------------------------------------------------------------------

BAD_MODES = ["foo", "Inverted", "", None, 1]


@pytest.mark.parametrize("name", MODED)
@pytest.mark.parametrize("mode", BAD_MODES)
def test_function_unknown_mode(name, mode):
    for context in CONTEXTS:
        with raises(ValueError, f"{name}: `mode` must be 'inverted' or 'vanilla', got {mode!r}."):
            call(name, context, mode=mode)


@pytest.mark.parametrize("cls", MODED_CLASSES)
@pytest.mark.parametrize("mode", BAD_MODES)
def test_module_unknown_mode(cls, mode):
    with raises(ValueError, f"{cls}: `mode` must be 'inverted' or 'vanilla', got {mode!r}."):
        CLASSES[cls](0.5, mode=mode)


BAD_FORMATS = ["NCHW", "channels-last", "", None]


@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("data_format", BAD_FORMATS)
def test_function_unknown_data_format(name, data_format):
    message = (
        f"{name}: `data_format` must be 'channels_first' or 'channels_last', "
        f"got {data_format!r}."
    )
    for context in CONTEXTS:
        with raises(ValueError, message):
            call(name, context, data_format=data_format)


@pytest.mark.parametrize("cls", SPATIAL_CLASSES)
@pytest.mark.parametrize("data_format", BAD_FORMATS)
def test_module_unknown_data_format(cls, data_format):
    message = (
        f"{cls}: `data_format` must be 'channels_first' or 'channels_last', got {data_format!r}."
    )
    with raises(ValueError, message):
        CLASSES[cls](0.5, data_format=data_format)


# --------------------------------------------------------------------------------------------
# noise_shape
# --------------------------------------------------------------------------------------------

NOISE_TYPE = "`noise_shape` must be a sequence of ints or None (one per input dimension), got"

NOISE_BYTES = bytes([1, 1, 5])
BAD_NOISE_TYPES = [
    ("1,1,5", f"{NOISE_TYPE} str '1,1,5'."),
    (NOISE_BYTES, f"{NOISE_TYPE} bytes {NOISE_BYTES!r}."),
    (5, f"{NOISE_TYPE} int 5."),
    ({1: 1}, f"{NOISE_TYPE} dict {{1: 1}}."),
    (torch.Size, f"{NOISE_TYPE} type {torch.Size!r}."),
    ((1, 1.0, 5), "`noise_shape[1]` must be an int or None, got float 1.0."),
    ((1, 7, 5.0), "`noise_shape[2]` must be an int or None, got float 5.0."),
    ((True, 1, 5), "`noise_shape[0]` must be an int or None, got bool True."),
    ((1, "7", 5), "`noise_shape[1]` must be an int or None, got str '7'."),
]
BAD_NOISE_VALUES = [
    ((0, 1, 5), "`noise_shape[0]` must be a positive int or None, got 0."),
    ((1, -1, 5), "`noise_shape[1]` must be a positive int or None, got -1."),
    ((1, 7, -5), "`noise_shape[2]` must be a positive int or None, got -5."),
]
# For an input of shape (1, 7, 5).
BAD_NOISE_FITS = [
    (
        (1, 5),
        "`noise_shape` must have one entry per input dimension (3 for an input of shape "
        "(1, 7, 5)), got 2: (1, 5).",
    ),
    (
        (1, 1, 1, 5),
        "`noise_shape` must have one entry per input dimension (3 for an input of shape "
        "(1, 7, 5)), got 4: (1, 1, 1, 5).",
    ),
    (
        (),
        "`noise_shape` must have one entry per input dimension (3 for an input of shape "
        "(1, 7, 5)), got 0: ().",
    ),
    ((1, 3, 5), "`noise_shape[1]` must be 1, 7 (input.shape[1]) or None, got 3."),
    ((1, 7, 2), "`noise_shape[2]` must be 1, 5 (input.shape[2]) or None, got 2."),
    ((2, None, None), "`noise_shape[0]` must be 1, 1 (input.shape[0]) or None, got 2."),
    ([None, 14, 1], "`noise_shape[1]` must be 1, 7 (input.shape[1]) or None, got 14."),
]


@pytest.mark.parametrize("name", NOISE_SHAPED)
@pytest.mark.parametrize(("noise_shape", "message"), BAD_NOISE_TYPES)
def test_function_noise_shape_bad_type(name, noise_shape, message):
    for context in CONTEXTS:
        with raises(TypeError, f"{name}: {message}"):
            call(name, context, noise_shape=noise_shape)


@pytest.mark.parametrize("name", NOISE_SHAPED)
@pytest.mark.parametrize(("noise_shape", "message"), BAD_NOISE_VALUES + BAD_NOISE_FITS)
def test_function_noise_shape_bad_value(name, noise_shape, message):
    for context in CONTEXTS:
        with raises(ValueError, f"{name}: {message}"):
            call(name, context, noise_shape=noise_shape)


@pytest.mark.parametrize(("noise_shape", "message"), BAD_NOISE_TYPES)
def test_module_noise_shape_bad_type(noise_shape, message):
    with raises(TypeError, f"Dropout: {message}"):
        dropkit.nn.Dropout(0.5, noise_shape=noise_shape)


@pytest.mark.parametrize(("noise_shape", "message"), BAD_NOISE_VALUES)
def test_module_noise_shape_zero_or_negative_entry(noise_shape, message):
    with raises(ValueError, f"Dropout: {message}"):
        dropkit.nn.Dropout(0.5, noise_shape=noise_shape)


@pytest.mark.parametrize(("noise_shape", "message"), BAD_NOISE_FITS)
def test_module_noise_shape_that_does_not_fit_the_input(noise_shape, message):
    # Sizes are only known in forward: the module accepts the spec, forward names the module.
    module = dropkit.nn.Dropout(0.5, noise_shape=noise_shape)
    with raises(ValueError, f"Dropout: {message}"):
        module(torch.ones(1, 7, 5))
    with raises(ValueError, f"Dropout: {message}"):
        module.eval()(torch.ones(1, 7, 5))


def test_noise_shape_accepts_numpy_ints_and_lists():
    x = torch.ones(1, 7, 5)
    expected = DF.dropout(x, 0.5, noise_shape=(1, 1, 5), seed=0)
    assert torch.equal(DF.dropout(x, 0.5, noise_shape=[1, 1, 5], seed=0), expected)
    assert torch.equal(
        DF.dropout(x, 0.5, noise_shape=(np.int64(1), np.int32(1), np.int64(5)), seed=0), expected
    )
    assert torch.equal(DF.dropout(x, 0.5, noise_shape=torch.Size([1, 1, 5]), seed=0), expected)


# --------------------------------------------------------------------------------------------
# seed / generator
# --------------------------------------------------------------------------------------------

BAD_SEEDS = [
    (True, TypeError, "`seed` must be an int in [0, 2**64), got bool True."),
    (1.0, TypeError, "`seed` must be an int in [0, 2**64), got float 1.0."),
    ("1", TypeError, "`seed` must be an int in [0, 2**64), got str '1'."),
    (torch.tensor(1), TypeError, "`seed` must be an int in [0, 2**64), got Tensor tensor(1)."),
    (-1, ValueError, "`seed` must be an int in [0, 2**64), got -1."),
    (np.int64(-3), ValueError, "`seed` must be an int in [0, 2**64), got -3."),
    (2**64, ValueError, "`seed` must be an int in [0, 2**64), got 18446744073709551616."),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("seed", "exc", "message"), BAD_SEEDS)
def test_function_bad_seed(name, seed, exc, message):
    for context in CONTEXTS:
        with raises(exc, f"{name}: {message}"):
            call(name, context, seed=seed)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("seed", "exc", "message"), BAD_SEEDS)
def test_module_forward_bad_seed(cls, seed, exc, message):
    # The module's forward names the module, not the function it calls.
    name = {
        "Dropout": "dropout",
        "SpatialDropout1d": "spatial_dropout1d",
        "SpatialDropout2d": "spatial_dropout2d",
        "SpatialDropout3d": "spatial_dropout3d",
        "TimestepDropout": "timestep_dropout",
        "GaussianDropout": "gaussian_dropout",
        "AlphaDropout": "alpha_dropout",
    }[cls]
    module = CLASSES[cls](0.5)
    with raises(exc, f"{cls}: {message}"):
        module(torch.ones(SHAPES[name]), seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_seed_limits_are_accepted(name):
    x = torch.ones(SHAPES[name])
    for seed in (0, 2**32 - 1, 2**32, 2**64 - 1, np.uint64(2**64 - 1)):
        call(name, {}, seed=seed)
    assert torch.equal(call(name, {}, seed=np.uint64(5)), FUNCS[name](x, 0.5, seed=5))


@pytest.mark.parametrize("name", NAMES)
def test_seed_with_generator(name):
    for context in CONTEXTS:
        with raises(ValueError, f"{name}: pass either `seed` or `generator`, not both."):
            call(name, context, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("generator", "received"),
    [(5, "int"), (np.random.default_rng(0), "Generator"), ("cpu", "str"), (torch, "module")],
)
def test_generator_not_a_torch_generator(name, generator, received):
    message = f"{name}: `generator` must be a torch.Generator or None, got {received}."
    for context in CONTEXTS:
        with raises(TypeError, message):
            call(name, context, generator=generator)
    # The type check comes before the seed/generator conflict.
    with raises(TypeError, message):
        call(name, {}, generator=generator, seed=1)


# --------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("value", "received"),
    [([1.0, 2.0], "list"), (np.ones(3), "ndarray"), (1.0, "float"), (None, "NoneType")],
)
def test_input_not_a_tensor(name, value, received):
    for p in (0.5, 0.0, 1.0):
        with raises(TypeError, f"{name}: `input` must be a torch.Tensor, got {received}."):
            FUNCS[name](value, p)
        with raises(TypeError, f"{name}: `input` must be a torch.Tensor, got {received}."):
            FUNCS[name](value, p, training=False)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.complex64]
)
def test_input_dtype(name, dtype):
    message = f"{name}: `input` must have dtype {DTYPE_LIST}, got {dtype}."
    x = torch.zeros(SHAPES[name], dtype=dtype)
    for context in CONTEXTS:
        with raises(TypeError, message):
            FUNCS[name](x, **{"p": 0.5, **context})


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state:UserWarning")
@pytest.mark.parametrize("name", RATE_FUNCS)
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_sparse_input_in_training_is_a_type_error(name, layout):
    arg = {"drop_connect": "weight", "bias_dropout_add": "x", "drop_path_add": "x"}.get(name,
                                                                                      "input")
    x = torch.zeros(4, 3)
    sparse = x.to_sparse() if layout == "sparse_coo" else x.to_sparse_csr()
    message = (f"{name}: `{arg}` must be a dense (strided) tensor in training, got layout "
               f"torch.{layout} (torch.nn.functional.dropout does not support sparse tensors "
               f"either; drop the values instead, or use `{arg}.to_dense()`).")
    call = {  # the sparse tensor in the checked argument
        "drop_connect": lambda **kw: DF.drop_connect(sparse, 0.5, **kw),
        "bias_dropout_add": lambda **kw: DF.bias_dropout_add(sparse, None, x, 0.5, **kw),
        "drop_path_add": lambda **kw: DF.drop_path_add(sparse, x, 0.5, **kw),
        "drop_path": lambda **kw: DF.drop_path(sparse, 0.5, **kw),
        "drop_block2d": lambda **kw: DF.drop_block2d(sparse, 0.5, 3, **kw),
    }.get(name, lambda **kw: FUNCS[name](sparse, 0.5, **kw))
    with raises(TypeError, message):  # checked before the rank or shape of the input
        call()
    with pytest.raises(NotImplementedError):  # torch.nn.functional.dropout rejects it as well
        torch.nn.functional.dropout(sparse, 0.5)


def test_sparse_input_in_eval_passes_through_as_in_torch():
    sparse = torch.eye(3).to_sparse()
    assert torch.nn.functional.dropout(sparse, 0.5, training=False) is sparse
    assert DF.dropout(sparse, 0.5, training=False) is sparse
    vanilla = DF.dropout(sparse, 0.25, training=False, mode="vanilla")
    assert vanilla.layout == torch.sparse_coo
    assert torch.equal(vanilla.to_dense(), torch.eye(3) * 0.75)


def test_drop_connect_names_its_weight_argument():
    with raises(TypeError, "drop_connect: `weight` must be a torch.Tensor, got list."):
        DF.drop_connect([1.0], 0.5)
    with raises(TypeError, f"drop_connect: `weight` must have dtype {DTYPE_LIST}, got "
                           "torch.int64."):
        DF.drop_connect(torch.ones(3, dtype=torch.int64), 0.5)


def test_input_check_comes_first():
    # A bad input is reported before a bad p.
    with raises(TypeError, "dropout: `input` must be a torch.Tensor, got list."):
        DF.dropout([1.0], 2.0)
    with raises(TypeError, f"dropout: `input` must have dtype {DTYPE_LIST}, got torch.int64."):
        DF.dropout(torch.ones(3, dtype=torch.int64), 2.0)


# --------------------------------------------------------------------------------------------
# rank
# --------------------------------------------------------------------------------------------

AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_spatial_rank(k, data_format):
    name = f"spatial_dropout{k}d"
    axes = AXES[k]
    if data_format == "channels_first":
        layouts = f"(N, C, {axes}) or an unbatched {k + 1}D input (C, {axes})"
    else:
        layouts = f"(N, {axes}, C) or an unbatched {k + 1}D input ({axes}, C)"
    module = CLASSES[f"SpatialDropout{k}d"](0.5, data_format=data_format)
    for rank in (0, 1, 2, 3, 4, 5, 6):
        if rank in (k + 1, k + 2):
            continue
        shape = (3,) * rank
        message = (
            f"{name}: expected a {k + 2}D input {layouts} with data_format={data_format!r}, "
            f"got a {rank}D tensor of shape {shape}."
        )
        for context in CONTEXTS:
            with raises(ValueError, message):
                FUNCS[name](torch.ones(shape), **{"p": 0.5, "data_format": data_format,
                                                  **context})
        with raises(ValueError, message.replace(name, f"SpatialDropout{k}d", 1)):
            module(torch.ones(shape))


def test_spatial_rank_messages_verbatim():
    # Two complete messages, written out, as a user sees them.
    with raises(
        ValueError,
        "spatial_dropout2d: expected a 4D input (N, C, H, W) or an unbatched 3D input "
        "(C, H, W) with data_format='channels_first', got a 2D tensor of shape (8, 8).",
    ):
        DF.spatial_dropout2d(torch.ones(8, 8))
    with raises(
        ValueError,
        "spatial_dropout1d: expected a 3D input (N, L, C) or an unbatched 2D input (L, C) "
        "with data_format='channels_last', got a 4D tensor of shape (2, 3, 4, 5).",
    ):
        DF.spatial_dropout1d(torch.ones(2, 3, 4, 5), data_format="channels_last")


def test_timestep_rank():
    module = dropkit.nn.TimestepDropout(0.5)
    for shape in [(), (4,), (2, 4)]:
        message = (
            "timestep_dropout: expected an input (N, T, *features) of at least 3 dimensions, "
            f"got a {len(shape)}D tensor of shape {shape}."
        )
        for context in CONTEXTS:
            with raises(ValueError, message):
                DF.timestep_dropout(torch.ones(shape), **{"p": 0.5, **context})
        with raises(ValueError, message.replace("timestep_dropout", "TimestepDropout", 1)):
            module(torch.ones(shape))


# --------------------------------------------------------------------------------------------
# Module keyword-only arguments
# --------------------------------------------------------------------------------------------


def test_module_options_are_keyword_only():
    positional = r"takes from 1 to 3 positional arguments but 4 were given"
    with pytest.raises(TypeError, match=positional):
        dropkit.nn.Dropout(0.5, False, "vanilla")  # mode is keyword-only
    with pytest.raises(TypeError, match=positional):
        dropkit.nn.SpatialDropout2d(0.5, False, "channels_last")
    # forward(input, seed=None, generator=None): positional, as TorchScript needs; the seed
    # given positionally is still checked.
    with pytest.raises(TypeError, match=r"takes from 2 to 4 positional arguments but 5"):
        dropkit.nn.Dropout()(torch.ones(3), 5, None, None)
    assert torch.equal(dropkit.nn.Dropout()(torch.ones(3), 5), dropkit.nn.Dropout()(
        torch.ones(3), seed=5))


# --------------------------------------------------------------------------------------------
# dropkit.numpy
# --------------------------------------------------------------------------------------------

NP_FUNCS = {
    "dropout": dnp.dropout,
    "spatial_dropout1d": dnp.spatial_dropout1d,
    "spatial_dropout2d": dnp.spatial_dropout2d,
    "spatial_dropout3d": dnp.spatial_dropout3d,
    "timestep_dropout": dnp.timestep_dropout,
    "gaussian_dropout": dnp.gaussian_dropout,
    "alpha_dropout": dnp.alpha_dropout,
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("value", "received"),
    [([1.0, 2.0], "list"), (torch.ones(3), "Tensor"), (1.5, "float"), (None, "NoneType")],
)
def test_numpy_input_not_an_array(name, value, received):
    for p in (0.5, 0.0):
        with raises(TypeError, f"{name}: `x` must be a numpy.ndarray, got {received}."):
            NP_FUNCS[name](value, p)
    with raises(TypeError, f"{name}: `x` must be a numpy.ndarray, got {received}."):
        NP_FUNCS[name](value, 0.5, training=False)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex64])
def test_numpy_integer_array(name, dtype):
    x = np.zeros(SHAPES[name], dtype=dtype)
    message = f"{name}: `x` must have dtype float16, float32 or float64, got {np.dtype(dtype)}."
    for kwargs in ({}, {"p": 0.0}, {"training": False}):
        with raises(TypeError, message):
            NP_FUNCS[name](x, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_shared_checks(name):
    x = np.ones(SHAPES[name])
    f = NP_FUNCS[name]
    with raises(ValueError, f"{name}: `p` must be in [0, 1], got 1.5."):
        f(x, 1.5)
    with raises(TypeError, f"{name}: `p` must be a real number in [0, 1], got str '0.5'."):
        f(x, "0.5")
    with raises(TypeError, f"{name}: `training` must be a bool, got int 1."):
        f(x, 0.5, training=1)
    with raises(ValueError, f"{name}: `seed` must be an int in [0, 2**64), got -1."):
        f(x, 0.5, seed=-1)
    with raises(TypeError, f"{name}: `seed` must be an int in [0, 2**64), got float 1.0."):
        f(x, 0.5, seed=1.0)
    with raises(
        TypeError, f"{name}: `rng` must be a numpy.random.Generator or None, got RandomState."
    ):
        f(x, 0.5, rng=np.random.RandomState(0))
    with raises(TypeError, f"{name}: `rng` must be a numpy.random.Generator or None, got int."):
        f(x, 0.5, rng=0)
    if name in MODED:
        with raises(ValueError, f"{name}: `mode` must be 'inverted' or 'vanilla', got 'foo'."):
            f(x, 0.5, mode="foo")


@pytest.mark.parametrize("name", NAMES)
def test_numpy_seed_with_rng_names_rng(name):
    # The NumPy functions take `rng`, not `generator`: the message must name the real argument.
    with raises(ValueError, f"{name}: pass either `seed` or `rng`, not both."):
        NP_FUNCS[name](np.ones(SHAPES[name]), 0.5, seed=1, rng=np.random.default_rng(0))


def test_numpy_rank_and_noise_shape_messages():
    with raises(
        ValueError,
        "spatial_dropout2d: expected a 4D input (N, C, H, W) or an unbatched 3D input "
        "(C, H, W) with data_format='channels_first', got a 2D tensor of shape (8, 8).",
    ):
        dnp.spatial_dropout2d(np.ones((8, 8)))
    with raises(
        ValueError,
        "timestep_dropout: expected an input (N, T, *features) of at least 3 dimensions, got "
        "a 2D tensor of shape (2, 4).",
    ):
        dnp.timestep_dropout(np.ones((2, 4)))
    with raises(ValueError, "dropout: `noise_shape[1]` must be 1, 7 (input.shape[1]) or None, "
                            "got 3."):
        dnp.dropout(np.ones((1, 7, 5)), noise_shape=(1, 3, 5))
    with raises(ValueError, "alpha_dropout: `noise_shape[0]` must be a positive int or None, "
                            "got 0."):
        dnp.alpha_dropout(np.ones((1, 7, 5)), noise_shape=(0, 7, 5))
    with raises(
        ValueError,
        "spatial_dropout1d: `data_format` must be 'channels_first' or 'channels_last', "
        "got 'NLC'.",
    ):
        dnp.spatial_dropout1d(np.ones((2, 3, 4)), data_format="NLC")
