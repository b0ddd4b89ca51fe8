"""``torch.compile(fullgraph=True)`` of every dropkit module: compiled equals eager (eval exactly;
train with the same masks after the same ``torch.manual_seed``), and neither a new drop rate nor
switching train/eval back and forth recompiles. Graph compilations are counted with a backend
that counts the graphs it is handed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import dropkit.nn as dn
from dropkit.schedules import Linear, RateScheduler

# Inductor's first compile imports code that uses the deprecated torch.jit.script_method; the
# suite turns warnings into errors, so that one warning (torch's, not dropkit's) is let through.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


# name -> (module factory, input factory). Every class of dropkit.nn.__all__ but RateModule.
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "Dropout": (lambda: dn.Dropout(0.3), lambda: _randn(4, 6)),
    "Dropout-vanilla": (lambda: dn.Dropout(0.3, mode="vanilla"), lambda: _randn(4, 6)),
    "SpatialDropout1d": (lambda: dn.SpatialDropout1d(0.3), lambda: _randn(2, 3, 5)),
    "SpatialDropout2d": (lambda: dn.SpatialDropout2d(0.3), lambda: _randn(2, 3, 4, 4)),
    "SpatialDropout3d-vanilla": (
        lambda: dn.SpatialDropout3d(0.3, mode="vanilla"), lambda: _randn(2, 3, 2, 3, 3)),
    "TimestepDropout": (lambda: dn.TimestepDropout(0.3), lambda: _randn(2, 5, 4)),
    "GaussianDropout": (lambda: dn.GaussianDropout(0.3), lambda: _randn(4, 6)),
    "AlphaDropout": (lambda: dn.AlphaDropout(0.3), lambda: _randn(4, 6)),
    "DropPath": (lambda: dn.DropPath(0.3), lambda: _randn(4, 6)),
    "DropHead": (lambda: dn.DropHead(0.3), lambda: _randn(2, 4, 3, 5)),
    "DropBlock1d": (lambda: dn.DropBlock1d(0.3, 3), lambda: _randn(2, 3, 8)),
    "DropBlock2d": (lambda: dn.DropBlock2d(0.3, 3), lambda: _randn(2, 3, 8, 8)),
    "DropBlock3d": (lambda: dn.DropBlock3d(0.3, 3), lambda: _randn(2, 3, 4, 4, 4)),
    "DropConnectLinear": (lambda: dn.DropConnectLinear(6, 5, p=0.3), lambda: _randn(4, 6)),
    "DropConnectConv1d": (lambda: dn.DropConnectConv1d(3, 4, 3, p=0.3), lambda: _randn(2, 3, 8)),
    "DropConnectConv2d": (
        lambda: dn.DropConnectConv2d(3, 4, 3, p=0.3), lambda: _randn(2, 3, 6, 6)),
    "DropConnectConv3d": (
        lambda: dn.DropConnectConv3d(3, 4, 3, p=0.3), lambda: _randn(2, 3, 4, 4, 4)),
    "LockedDropout": (lambda: dn.LockedDropout(0.3), lambda: _randn(5, 2, 4)),
    "EmbeddingDropout": (
        lambda: dn.EmbeddingDropout(nn.Embedding(10, 4), 0.3),
        lambda: torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0))),
    # Dynamo refuses nn.LSTM unless torch._dynamo.config.allow_rnn (experimental) is set: the
    # LSTM case has its own test below.
    "WeightDrop": (lambda: dn.WeightDrop(nn.Linear(6, 5), "weight", p=0.3), lambda: _randn(4, 6)),
}


def test_cases_cover_every_module():
    covered = {type(make()).__name__ for make, _ in CASES.values()}
    # GaussianNoise has a stddev, not a rate p: its compile test is in test_gaussian_noise.py;
    # MultiheadAttention (torch's, a float `dropout`) is compiled in test_attention_convert.py
    assert covered == set(dn.__all__) - {"RateModule", "GaussianNoise", "MultiheadAttention"}


class CountingBackend:
    """A torch.compile backend that counts the graphs dynamo hands it and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _same(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb, strict=True))


def _train_matches_eager(module, compiled, x, seed: int):
    torch.manual_seed(seed)
    out = compiled(x)
    torch.manual_seed(seed)
    ref = module(x)
    assert _same(out, ref)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_matches_eager_and_compiles_once_per_mode(name):
    make, make_input = CASES[name]
    module, x = make(), make_input()
    backend = CountingBackend()
    compiled = torch.compile(module, backend=backend, fullgraph=True)

    # Train: the same torch.manual_seed gives the same masks as eager; a new p does not
    # recompile and the compiled graph reads the new value.
    first = _train_matches_eager(module, compiled, x, seed=1)
    assert backend.graphs == 1
    module.p = 0.6
    second = _train_matches_eager(module, compiled, x, seed=1)
    assert not _same(first, second)  # the new rate reached the graph
    module.p = 0.0
    _train_matches_eager(module, compiled, x, seed=2)
    assert backend.graphs == 1

    # Eval: exactly eager, and it draws nothing from torch's RNG.
    module.eval()
    state = torch.get_rng_state()
    assert _same(compiled(x), module(x))
    assert torch.equal(torch.get_rng_state(), state)
    assert backend.graphs == 2

    # Back and forth: no more compiles.
    for p in (0.2, 0.4):
        module.p = p
        module.train()
        _train_matches_eager(module, compiled, x, seed=3)
        module.eval()
        assert _same(compiled(x), module(x))
    assert backend.graphs == 2


def test_eval_is_identity_or_scale_or_plain_layer():
    """What the compiled eval graphs compute, not only that they match eager."""
    backend = CountingBackend()
    x = _randn(4, 6)
    for module, expected in [
        (dn.Dropout(0.25), x),
        (dn.Dropout(0.25, mode="vanilla"), x * 0.75),
        (dn.GaussianDropout(0.25), x),
        (dn.AlphaDropout(0.25), x),
        (dn.DropPath(0.25), x),
    ]:
        out = torch.compile(module.eval(), backend=backend, fullgraph=True)(x)
        assert torch.equal(out, expected), module
    layer = dn.DropConnectLinear(6, 5, p=0.3).eval()
    out = torch.compile(layer, backend=backend, fullgraph=True)(x)
    assert torch.equal(out, nn.functional.linear(x, layer.weight, layer.bias))


def test_rate_scheduler_steps_do_not_recompile():
    model = nn.Sequential(
        dn.Dropout(0.1), dn.SpatialDropout1d(0.1), dn.GaussianDropout(0.1), dn.AlphaDropout(0.1),
        dn.DropPath(0.1), dn.DropBlock1d(0.1, 3), dn.LockedDropout(0.1),
    )
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    scheduler = RateScheduler(model, Linear(0.0, 0.5, steps=4))
    x = _randn(2, 3, 8)
    seen = set()
    for step in range(6):
        torch.manual_seed(step)
        out = compiled(x)
        torch.manual_seed(step)
        assert torch.equal(out, model(x))
        seen.add(model[0].p)
        scheduler.step()
    assert len(seen) == 5  # 0, 0.125, ..., 0.5: the rate really changed
    assert backend.graphs == 1


@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: dn.Dropout(0.3), (8, 16)), (lambda: dn.DropBlock2d(0.3, 3), (2, 3, 8, 8))],
    ids=["Dropout", "DropBlock2d"],
)
def test_inductor_matches_eager_with_backward_and_does_not_recompile(make, shape):
    from torch._dynamo.utils import counters

    module = make()
    compiled = torch.compile(module, fullgraph=True)  # the default backend: inductor
    x = _randn(*shape).requires_grad_()
    counters.clear()
    for step, p in enumerate((0.3, 0.5)):
        module.p = p
        torch.manual_seed(step)
        out = compiled(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        torch.manual_seed(step)
        ref = module(x)
        (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
        assert torch.equal(out, ref)
        torch.testing.assert_close(grad, ref_grad)
    module.eval()
    assert torch.equal(compiled(x), x)
    module.train()
    compiled(x)
    assert counters["stats"]["unique_graphs"] == 2


# torch's own warning, raised while dynamo's experimental RNN support traces nn.LSTM.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_weight_drop_lstm_needs_allow_rnn_and_then_matches_eager():
    module = dn.WeightDrop(nn.LSTM(4, 5, batch_first=True), "weight_hh_l0", p=0.3)
    x = _randn(2, 5, 4)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(module, backend=CountingBackend(), fullgraph=True)(x)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(module, backend=CountingBackend(), fullgraph=True)
        for p in (0.3, 0.6):
            module.p = p
            module.train()
            _train_matches_eager(module, compiled, x, seed=4)
            module.eval()
            assert _same(compiled(x), module(x))


def test_bitmask_mode_compiles_fullgraph_and_matches_eager():
    import dropkit.functional as DF

    x = torch.randn(64, 8, requires_grad=True)
    compiled = torch.compile(lambda t: DF.dropout(t, 0.3, seed=2, save="bitmask"), fullgraph=True)
    y = compiled(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    want = DF.dropout(x, 0.3, seed=2)
    assert torch.equal(y, want)
    assert torch.equal(grad, torch.autograd.grad(want.sum(), x)[0])
