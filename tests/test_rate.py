"""Drop rates given as 0-dim tensors, and modules whose ``p`` changes without recompiling."""

from __future__ import annotations

import pytest
import torch

import dropkit
import dropkit.functional as DF
from helpers import FUNCS

SHAPES = {
    "dropout": (4, 7, 5),
    "spatial_dropout1d": (2, 3, 4),
    "spatial_dropout2d": (2, 3, 4, 4),
    "spatial_dropout3d": (2, 3, 2, 2, 2),
    "timestep_dropout": (2, 5, 3),
    "gaussian_dropout": (4, 7, 5),
    "alpha_dropout": (4, 7, 5),
    "drop_path": (8, 3),
}
ALL = {**FUNCS, "drop_path": DF.drop_path}


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("p", [0.0, 0.3, 2.0**-20, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_tensor_rate_equals_float_rate(name, p, training):
    fn = ALL[name]
    x = torch.randn(SHAPES[name], dtype=torch.float64, requires_grad=True)
    x_t = x.detach().clone().requires_grad_()
    y = fn(x, p, training, seed=7)
    y_t = fn(x_t, torch.tensor(p, dtype=torch.float64), training, seed=7)  # exact p
    assert torch.equal(y, y_t)
    g = torch.randn_like(y)
    y.backward(g)
    y_t.backward(g)
    assert torch.equal(x.grad, x_t.grad)


@pytest.mark.parametrize("mode", ["inverted", "vanilla"])
def test_tensor_rate_modes(mode):
    x = torch.randn(50, 4)
    for training in (True, False):
        expected = DF.dropout(x, 0.25, training, mode=mode, seed=3)
        assert torch.equal(DF.dropout(x, torch.tensor(0.25), training, mode=mode, seed=3), expected)


def test_tensor_rate_inplace():
    x = torch.randn(30, 3)
    expected = DF.dropout(x, 0.4, seed=1)
    out = DF.dropout(x, torch.tensor(0.4), inplace=True, seed=1)
    assert out is x and torch.equal(x, expected)


def test_tensor_rate_gradcheck():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    p = torch.tensor(0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: DF.dropout(t, p, seed=2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: DF.alpha_dropout(t, p, seed=2), (x,))


def test_module_p_setter_validates_and_mirrors_the_tensor():
    m = dropkit.nn.Dropout(0.1)
    m.p = 0.3
    assert m.p == 0.3 and float(m._p_tensor) == 0.3
    with pytest.raises(ValueError, match=r"^Dropout: `p` must be in \[0, 1\], got 1\.5\.$"):
        m.p = 1.5
    assert m.p == 0.3
    assert dict(m.state_dict()) == {} and list(m.buffers()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_changing_p_does_not_recompile_and_train_eval_compiles_once_each():
    from torch._dynamo.utils import counters

    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8),
        dropkit.nn.Dropout(0.1),
        dropkit.nn.SpatialDropout1d(0.1),
        dropkit.nn.AlphaDropout(0.1),
        dropkit.nn.GaussianDropout(0.1),
        dropkit.nn.DropPath(0.1),
    )
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(16, 4, 8)
    torch._dynamo.reset()
    counters.clear()
    for step in range(6):
        for module in model[1:]:
            module.p = 0.05 * step
        torch.manual_seed(step)
        out = compiled(x)
        torch.manual_seed(step)
        assert torch.equal(out, model(x))  # the compiled graph sees the new p
        out.sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    for _ in range(2):
        model.eval()
        compiled(x)
        model.train()
        compiled(x)
    assert counters["stats"]["unique_graphs"] == 2
