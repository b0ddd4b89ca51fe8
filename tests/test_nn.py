"""The modules of ``dropkit.nn``: train/eval, repr, state, forward arguments, copies, compile."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import dropkit
import dropkit.functional as DF
from dropkit import rng

# (module class, constructor kwargs, function, function kwargs, input shape)
CONFIGS = [
    (dropkit.nn.Dropout, {}, DF.dropout, {}, (4, 6, 5)),
    (dropkit.nn.Dropout, {"mode": "vanilla"}, DF.dropout, {"mode": "vanilla"}, (4, 6, 5)),
    (
        dropkit.nn.Dropout,
        {"noise_shape": (None, 1, None)},
        DF.dropout,
        {"noise_shape": (None, 1, None)},
        (4, 6, 5),
    ),
    (dropkit.nn.SpatialDropout1d, {}, DF.spatial_dropout1d, {}, (4, 6, 5)),
    (
        dropkit.nn.SpatialDropout1d,
        {"data_format": "channels_last"},
        DF.spatial_dropout1d,
        {"data_format": "channels_last"},
        (4, 6, 5),
    ),
    (dropkit.nn.SpatialDropout2d, {}, DF.spatial_dropout2d, {}, (2, 6, 3, 4)),
    (
        dropkit.nn.SpatialDropout2d,
        {"data_format": "channels_last", "mode": "vanilla"},
        DF.spatial_dropout2d,
        {"data_format": "channels_last", "mode": "vanilla"},
        (2, 3, 4, 6),
    ),
    (dropkit.nn.SpatialDropout3d, {}, DF.spatial_dropout3d, {}, (2, 6, 2, 3, 2)),
    (dropkit.nn.TimestepDropout, {}, DF.timestep_dropout, {}, (3, 8, 4)),
    (dropkit.nn.TimestepDropout, {"mode": "vanilla"}, DF.timestep_dropout, {"mode": "vanilla"},
     (3, 8, 4)),
    (dropkit.nn.GaussianDropout, {}, DF.gaussian_dropout, {}, (4, 6, 5)),
    (dropkit.nn.AlphaDropout, {}, DF.alpha_dropout, {}, (4, 6, 5)),
]
IDS = [
    f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
    for cls, kw, *_ in CONFIGS
]
CLASSES = (
    dropkit.nn.Dropout,
    dropkit.nn.SpatialDropout1d,
    dropkit.nn.SpatialDropout2d,
    dropkit.nn.SpatialDropout3d,
    dropkit.nn.TimestepDropout,
    dropkit.nn.GaussianDropout,
    dropkit.nn.AlphaDropout,
)


# --------------------------------------------------------------------------------------------
# forward equals the function; train() / eval()
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs", "fn", "fn_kwargs", "shape"), CONFIGS, ids=IDS)
def test_forward_equals_the_function(cls, kwargs, fn, fn_kwargs, shape):
    module = cls(0.3, **kwargs)
    x = torch.randn(shape)
    y = module(x, seed=11)
    assert torch.equal(y, fn(x, 0.3, seed=11, **fn_kwargs))
    assert not torch.equal(y, x)
    # generator= draws the same seed as the function would.
    y_gen = module(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(y_gen, fn(x, 0.3, generator=torch.Generator().manual_seed(4), **fn_kwargs))
    # Without either, the global generator decides.
    torch.manual_seed(9)
    y_global = module(x)
    torch.manual_seed(9)
    assert torch.equal(y_global, fn(x, 0.3, **fn_kwargs))
    with pytest.raises(ValueError, match="pass either `seed` or `generator`, not both"):
        module(x, seed=1, generator=torch.Generator())


@pytest.mark.parametrize(("cls", "kwargs", "fn", "fn_kwargs", "shape"), CONFIGS, ids=IDS)
def test_train_eval_switching(cls, kwargs, fn, fn_kwargs, shape):
    module = cls(0.5, **kwargs)
    assert module.training
    x = torch.randn(shape)
    train_out = module(x, seed=2)
    assert not torch.equal(train_out, x)

    assert module.eval() is module and not module.training
    eval_out = module(x, seed=2)
    if fn_kwargs.get("mode") == "vanilla":
        assert torch.equal(eval_out, x * 0.5)
    else:
        assert eval_out is x
    assert torch.equal(eval_out, fn(x, 0.5, training=False, **fn_kwargs))

    module.train()
    assert torch.equal(module(x, seed=2), train_out)
    module.train(False)
    assert torch.equal(module(x, seed=2), eval_out)


def test_eval_propagates_through_a_container():
    model = nn.Sequential(nn.Identity(), dropkit.nn.Dropout(0.5), dropkit.nn.AlphaDropout(0.5))
    x = torch.randn(8, 8)
    assert not torch.equal(model(x), x)
    model.eval()
    assert all(not m.training for m in model)
    assert model(x) is x
    model.train()
    assert all(m.training for m in model)


@pytest.mark.parametrize("cls", CLASSES)
def test_p0_and_p1(cls):
    x = torch.randn(2, 3, 4, 4, 4)
    if cls is dropkit.nn.SpatialDropout1d or cls is dropkit.nn.TimestepDropout:
        x = x[:, :, 0, 0]
    elif cls is dropkit.nn.SpatialDropout2d:
        x = x[:, :, 0]
    assert cls(0.0)(x) is x
    assert torch.equal(cls(1.0)(x), torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# repr, settings, state
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "text"),
    [
        (dropkit.nn.Dropout(), "Dropout(p=0.5, inplace=False, mode='inverted')"),
        (
            dropkit.nn.Dropout(0.2, True, mode="vanilla"),
            "Dropout(p=0.2, inplace=True, mode='vanilla')",
        ),
        (
            dropkit.nn.Dropout(0.2, noise_shape=[None, 1, None]),
            "Dropout(p=0.2, inplace=False, mode='inverted', noise_shape=(None, 1, None))",
        ),
        (dropkit.nn.Dropout(1), "Dropout(p=1.0, inplace=False, mode='inverted')"),
        (
            dropkit.nn.SpatialDropout1d(0.3, data_format="channels_last"),
            "SpatialDropout1d(p=0.3, inplace=False, mode='inverted', "
            "data_format='channels_last')",
        ),
        (
            dropkit.nn.SpatialDropout2d(0.1),
            "SpatialDropout2d(p=0.1, inplace=False, mode='inverted', "
            "data_format='channels_first')",
        ),
        (
            dropkit.nn.SpatialDropout3d(0.25, inplace=True, mode="vanilla"),
            "SpatialDropout3d(p=0.25, inplace=True, mode='vanilla', "
            "data_format='channels_first')",
        ),
        (dropkit.nn.TimestepDropout(0.4), "TimestepDropout(p=0.4, inplace=False, mode='inverted')"),
        (dropkit.nn.GaussianDropout(0.1), "GaussianDropout(p=0.1, inplace=False)"),
        (dropkit.nn.AlphaDropout(0), "AlphaDropout(p=0.0, inplace=False)"),
    ],
)
def test_repr(module, text):
    assert repr(module) == text


def test_repr_inside_a_model():
    model = nn.Sequential(nn.Linear(2, 2), dropkit.nn.GaussianDropout(0.1))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=2, bias=True)\n"
        "  (1): GaussianDropout(p=0.1, inplace=False)\n"
        ")"
    )


def test_settings_are_stored_normalized():
    m = dropkit.nn.Dropout(1, noise_shape=[None, 1])
    assert m.p == 1.0 and isinstance(m.p, float)
    assert m.noise_shape == (None, 1) and isinstance(m.noise_shape, tuple)
    assert m.inplace is False and m.mode == "inverted"
    s = dropkit.nn.SpatialDropout2d(0.25, True, data_format="channels_last", mode="vanilla")
    assert (s.p, s.inplace, s.data_format, s.mode) == (0.25, True, "channels_last", "vanilla")


@pytest.mark.parametrize("cls", CLASSES)
def test_no_parameters_no_buffers_empty_state_dict(cls):
    module = cls(0.5)
    assert list(module.parameters()) == []
    assert list(module.buffers()) == []
    assert module.state_dict() == {}
    assert module.load_state_dict({}) is not None  # strict loading of an empty dict works
    model = nn.Sequential(nn.Linear(3, 3), module)
    assert set(model.state_dict()) == {"0.weight", "0.bias"}


@pytest.mark.parametrize("cls", CLASSES)
def test_construction_validates(cls):
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"^{name}: `p` must be in \[0, 1\], got 1\.5\.$"):
        cls(1.5)
    with pytest.raises(TypeError, match=rf"^{name}: `p` must be a real number in \[0, 1\]"):
        cls("0.5")
    with pytest.raises(TypeError, match=rf"^{name}: `inplace` must be a bool, got int 1\.$"):
        cls(0.5, 1)


def test_construction_validates_mode_data_format_noise_shape():
    with pytest.raises(ValueError, match=r"^TimestepDropout: `mode` must be 'inverted' or"):
        dropkit.nn.TimestepDropout(mode="original")
    with pytest.raises(ValueError, match=r"^SpatialDropout3d: `data_format` must be"):
        dropkit.nn.SpatialDropout3d(data_format="NDHWC")
    with pytest.raises(ValueError, match=r"^Dropout: `noise_shape\[1\]` must be a positive int"):
        dropkit.nn.Dropout(noise_shape=(None, 0))
    with pytest.raises(TypeError, match=r"^Dropout: `noise_shape` must be a sequence"):
        dropkit.nn.Dropout(noise_shape="NC")


# --------------------------------------------------------------------------------------------
# in place
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs", "fn", "fn_kwargs", "shape"), CONFIGS, ids=IDS)
def test_inplace_module(cls, kwargs, fn, fn_kwargs, shape):
    module = cls(0.4, inplace=True, **kwargs)
    x = torch.randn(shape)
    expected = fn(x.clone(), 0.4, seed=6, **fn_kwargs)
    y = module(x, seed=6)
    assert y is x
    assert torch.equal(x, expected)
    # Non-leaf requiring grad: same gradient as the out-of-place module.
    a = torch.randn(shape, requires_grad=True)
    b = a * 2.0
    out = module(b, seed=6)
    assert out is b
    out.sum().backward()
    a2 = a.detach().clone().requires_grad_()
    cls(0.4, **kwargs)(a2 * 2.0, seed=6).sum().backward()
    assert torch.equal(a.grad, a2.grad)


def test_inplace_vanilla_eval_module():
    module = dropkit.nn.Dropout(0.25, inplace=True, mode="vanilla").eval()
    x = torch.randn(10)
    before = x.clone()
    assert module(x) is x
    assert torch.equal(x, before * (1.0 - rng.effective_p(rng.threshold(0.25))))


# --------------------------------------------------------------------------------------------
# copy and pickle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs", "fn", "fn_kwargs", "shape"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_round_trip(cls, kwargs, fn, fn_kwargs, shape, how):
    module = cls(0.35, **kwargs).eval()
    clone = copy.deepcopy(module) if how == "deepcopy" else pickle.loads(pickle.dumps(module))
    assert clone is not module
    assert type(clone) is cls
    assert repr(clone) == repr(module)
    assert vars(clone).keys() == vars(module).keys()
    for key in ("p", "inplace", "mode", "noise_shape", "data_format"):
        assert getattr(clone, key, None) == getattr(module, key, None)
    assert not clone.training
    x = torch.randn(shape)
    assert torch.equal(clone(x), module(x))
    clone.train()
    module.train()
    assert torch.equal(clone(x, seed=12), module(x, seed=12))
    assert torch.equal(clone(x, seed=12), fn(x, 0.35, seed=12, **fn_kwargs))


def test_pickle_a_model():
    model = nn.Sequential(
        nn.Linear(4, 4), dropkit.nn.Dropout(0.5, noise_shape=(None, 1)), dropkit.nn.AlphaDropout()
    )
    clone = pickle.loads(pickle.dumps(model))
    assert repr(clone) == repr(model)
    x = torch.randn(3, 4)
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    b = clone(x)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def _model(last: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        dropkit.nn.SpatialDropout2d(0.25),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 16),
        dropkit.nn.Dropout(0.5),
        last,
    )


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "last",
    [dropkit.nn.AlphaDropout(0.2), dropkit.nn.GaussianDropout(0.2)],
    ids=["alpha", "gaussian"],
)
def test_compiled_model(last):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _model(last)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 5, 5)

    # Train mode: forward + backward run; the compiled graph draws the same keys as eager.
    model.train()
    torch.manual_seed(21)
    out = compiled(x)
    assert out.shape == (4, 16)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in compiled_grads)
    assert all(g.abs().sum() > 0 for g in compiled_grads)

    model.zero_grad()
    torch.manual_seed(21)
    eager = model(x)
    eager.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for g, p in zip(compiled_grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)

    # Another draw gives other masks; both differ from the deterministic eval output.
    torch.manual_seed(22)
    other = compiled(x).detach()
    assert not torch.equal(other, out.detach())

    # Eval mode: the compiled model matches eager, and dropout is off.
    model.eval()
    with torch.no_grad():
        eval_out = compiled(x)
        torch.testing.assert_close(eval_out, model(x))
        assert torch.equal(compiled(x), eval_out)
    assert not torch.equal(eval_out, other)
