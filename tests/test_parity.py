"""Parity with eager mode and with torch at the edges: compiled modules give the eager masks and
leave torch's generator in the eager state at every rate (0 and 1 included), a key is drawn iff
``0 < p < 1`` as torch draws random numbers, only ``p == 0`` (and eval) returns the input
itself, in-place calls raise what torch raises, copies own their rate, and a tensor ``p`` that
requires grad is refused."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import dropkit.functional as DF
import dropkit.nn as dn

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

TINY = 2.0**-18  # p_eff rounds to 0
NEAR_ONE = 1.0 - 2.0**-18  # p_eff rounds to 1
RATES = (0.0, TINY, 0.3, NEAR_ONE, 1.0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


# name -> (module factory taking p, input factory)
MODULES: dict[str, tuple[Callable[[float], nn.Module], Callable[[], torch.Tensor]]] = {
    "Dropout": (lambda p: dn.Dropout(p), lambda: _randn(4, 6)),
    "Dropout-vanilla": (lambda p: dn.Dropout(p, mode="vanilla"), lambda: _randn(4, 6)),
    "SpatialDropout1d": (lambda p: dn.SpatialDropout1d(p), lambda: _randn(2, 3, 5)),
    "SpatialDropout2d": (lambda p: dn.SpatialDropout2d(p), lambda: _randn(2, 3, 4, 4)),
    "SpatialDropout3d": (lambda p: dn.SpatialDropout3d(p), lambda: _randn(2, 3, 2, 3, 3)),
    "TimestepDropout": (lambda p: dn.TimestepDropout(p), lambda: _randn(2, 5, 4)),
    "GaussianDropout": (lambda p: dn.GaussianDropout(p), lambda: _randn(4, 6)),
    "AlphaDropout": (lambda p: dn.AlphaDropout(p), lambda: _randn(4, 6)),
    "DropPath": (lambda p: dn.DropPath(p), lambda: _randn(4, 6)),
    "DropBlock1d": (lambda p: dn.DropBlock1d(p, 3), lambda: _randn(2, 3, 8)),
    "DropBlock2d": (lambda p: dn.DropBlock2d(p, 3), lambda: _randn(2, 3, 8, 8)),
    "DropBlock3d": (lambda p: dn.DropBlock3d(p, 3), lambda: _randn(2, 3, 4, 4, 4)),
    "DropConnectLinear": (lambda p: dn.DropConnectLinear(6, 5, p=p), lambda: _randn(4, 6)),
    "DropConnectLinear-sample": (
        lambda p: dn.DropConnectLinear(6, 5, p=p, mask="sample"), lambda: _randn(4, 6)),
    "DropConnectConv1d": (lambda p: dn.DropConnectConv1d(3, 4, 3, p=p), lambda: _randn(2, 3, 8)),
    "DropConnectConv2d": (
        lambda p: dn.DropConnectConv2d(3, 4, 3, p=p), lambda: _randn(2, 3, 6, 6)),
    "DropConnectConv3d": (
        lambda p: dn.DropConnectConv3d(3, 4, 3, p=p), lambda: _randn(2, 3, 4, 4, 4)),
    "LockedDropout": (lambda p: dn.LockedDropout(p), lambda: _randn(5, 2, 4)),
    "EmbeddingDropout": (
        lambda p: dn.EmbeddingDropout(nn.Embedding(10, 4), p),
        lambda: torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0))),
    "WeightDrop": (lambda p: dn.WeightDrop(nn.Linear(6, 5), "weight", p=p), lambda: _randn(4, 6)),
}


class GraphBackend:
    """A torch.compile backend that keeps the graphs dynamo hands it and runs them as they are."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def targets(self) -> list[str]:
        return [str(n.target) for gm in self.graphs for n in gm.graph.nodes
                if n.op == "call_function"]


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run_both(module, compiled, x, seed):
    """(compiled output, its generator state, eager output, its generator state)."""
    torch.manual_seed(seed)
    out = compiled(x)
    out_state = torch.get_rng_state()
    torch.manual_seed(seed)
    ref = module(x)
    return out, out_state, ref, torch.get_rng_state()


def _assert_parity(module, compiled, x, seed):
    out, out_state, ref, ref_state = _run_both(module, compiled, x, seed)
    assert torch.equal(out, ref)
    assert torch.equal(out_state, ref_state)


# ---------------------------------------------------------------------------------------------
# Compiled == eager: masks and generator state


@pytest.mark.parametrize("name", list(MODULES))
def test_compiled_equals_eager_at_every_rate_without_recompiling(name):
    make, make_input = MODULES[name]
    module, x = make(0.5), make_input()
    backend = GraphBackend()
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    for seed, p in enumerate((*RATES, 0.6, 0.0, 1.0, 0.3)):
        module.p = p
        _assert_parity(module, compiled, x, seed)
    assert len(backend.graphs) == 1  # the rate is read at run time, 0 and 1 included
    assert "dropkit.draw_key.default" in backend.targets()


@pytest.mark.parametrize("p", [0.0, 1.0])
@pytest.mark.parametrize("name", list(MODULES))
def test_a_rate_fixed_at_construction_compiles_to_the_eager_short_cut(name, p):
    make, make_input = MODULES[name]
    module, x = make(p), make_input()
    backend = GraphBackend()
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    _assert_parity(module, compiled, x, seed=3)
    targets = backend.targets()
    assert not any("randint" in t or "draw_key" in t for t in targets)  # no seed drawn
    if p == 0.0:  # the layer is gone: no dropkit op at all
        assert not any("dropkit" in t for t in targets)
    # Assigning p switches the module to the run-time rate: one more graph, once.
    for seed, rate in enumerate((0.3, p, 0.7)):
        module.p = rate
        _assert_parity(module, compiled, x, seed)
    assert len(backend.graphs) == 2


def test_inductor_keeps_the_eager_draws_of_many_layers_with_backward():
    model = nn.Sequential(dn.Dropout(0.3), dn.DropPath(0.2), dn.GaussianDropout(0.1),
                          dn.DropBlock1d(0.2, 3), dn.AlphaDropout(0.1))
    compiled = torch.compile(model, fullgraph=True)
    x = _randn(2, 3, 16).requires_grad_()
    for step, p in enumerate((0.3, 0.0, 1.0, TINY, 0.5)):
        for layer in model:
            layer.p = p
        torch.manual_seed(step)
        out = compiled(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        state = torch.get_rng_state()
        torch.manual_seed(step)
        ref = model(x)
        (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
        assert torch.equal(out, ref) and torch.equal(grad, ref_grad)
        assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------------------------------------
# A key is drawn iff 0 < p < 1, as torch draws random numbers


def _bias_dropout_add(x, p, **kw):
    return DF.bias_dropout_add(x, torch.ones(x.shape[-1]), torch.ones_like(x), p, **kw)


def _drop_path_add(x, p, **kw):
    return DF.drop_path_add(x, torch.ones_like(x), p, **kw)


FUNCTIONS: dict[str, tuple[Callable, tuple[int, ...]]] = {
    "dropout": (DF.dropout, (3, 4, 5)),
    "spatial_dropout1d": (DF.spatial_dropout1d, (2, 3, 5)),
    "spatial_dropout2d": (DF.spatial_dropout2d, (2, 3, 4, 4)),
    "spatial_dropout3d": (DF.spatial_dropout3d, (2, 3, 2, 3, 3)),
    "timestep_dropout": (DF.timestep_dropout, (2, 5, 4)),
    "gaussian_dropout": (DF.gaussian_dropout, (3, 4, 5)),
    "alpha_dropout": (DF.alpha_dropout, (3, 4, 5)),
    "drop_path": (DF.drop_path, (4, 6)),
    "drop_block2d": (DF.drop_block2d, (2, 3, 8, 8)),
    "drop_connect": (DF.drop_connect, (5, 6)),
    "bias_dropout_add": (_bias_dropout_add, (4, 6)),
    "drop_path_add": (_drop_path_add, (4, 6)),
}
INPLACE = ("dropout", "spatial_dropout1d", "spatial_dropout2d", "spatial_dropout3d",
           "timestep_dropout", "gaussian_dropout", "alpha_dropout", "drop_block2d")


def _draws(f: Callable[[], object]) -> bool:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    f()
    return not torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("p", RATES)
def test_torch_draws_iff_p_is_strictly_between_0_and_1(p):
    """The reference the rule follows (ATen's dropout: p == 0 returns the input, p == 1
    multiplies by zeros, anything else samples)."""
    x = _randn(3, 4, 5)
    for f in (TF.dropout, TF.dropout1d, TF.alpha_dropout, TF.feature_alpha_dropout):
        assert _draws(lambda f=f: f(x, p, training=True)) == (0.0 < p < 1.0)


@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_a_key_is_drawn_iff_p_is_strictly_between_0_and_1(name, p):
    f, shape = FUNCTIONS[name]
    x = _randn(*shape)
    assert _draws(lambda: f(x, p)) == (0.0 < p < 1.0)
    # A 0-dim tensor rate, read when the call runs, follows the same rule with the same draws.
    rate = torch.tensor(p, dtype=torch.float64)
    assert _draws(lambda: f(x, rate)) == (0.0 < p < 1.0)
    torch.manual_seed(1)
    with_float = f(x, p)
    torch.manual_seed(1)
    assert torch.equal(f(x, rate), with_float)
    assert not _draws(lambda: f(x, p, training=False))


# ---------------------------------------------------------------------------------------------
# Only p == 0 (and eval) returns the input object


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_only_p0_returns_the_input_itself(name):
    f, shape = FUNCTIONS[name]
    x = _randn(*shape)
    before = x.clone()
    for p in (TINY, 2.0**-30, 1e-300):
        y = f(x, p)
        assert y is not x and y.data_ptr() != x.data_ptr()
        if name not in ("bias_dropout_add", "drop_path_add", "gaussian_dropout"):
            assert torch.equal(y, x)  # nothing dropped (Gaussian noise has no rounding)
        y.add_(1.0)  # writing into the output leaves the input alone
        assert torch.equal(x, before)
    if name not in ("bias_dropout_add", "drop_path_add"):
        assert f(x, 0.0) is x
        assert f(x, 0.5, training=False) is x
    if name in INPLACE:
        z = x.clone()
        assert f(z, TINY, inplace=True, seed=5) is z and torch.equal(z, f(x, TINY, seed=5))


@pytest.mark.parametrize("name", ["dropout", "spatial_dropout2d", "timestep_dropout"])
def test_vanilla_eval_at_a_tiny_rate_returns_a_new_tensor(name):
    f, shape = FUNCTIONS[name]
    x = _randn(*shape)
    y = f(x, TINY, training=False, mode="vanilla")
    assert y is not x and torch.equal(y, x)
    assert f(x, 0.0, training=False, mode="vanilla") is x


# ---------------------------------------------------------------------------------------------
# In-place semantics: what torch's in-place dropout raises


def _outcome(f: Callable[[], object]) -> str:
    try:
        f()
    except RuntimeError as error:
        return str(error).split(".")[0]
    return "ok"


def _inference_tensor(shape) -> torch.Tensor:
    with torch.inference_mode():
        return torch.ones(shape)


def _expanded(shape) -> torch.Tensor:
    return torch.ones(*shape[:-1], 1).expand(shape)


# dropkit function -> torch's in-place counterpart with the same decision structure
TORCH_TWINS = {
    "dropout": TF.dropout,
    "spatial_dropout1d": TF.dropout1d,
    "spatial_dropout2d": TF.dropout2d,
    "spatial_dropout3d": TF.dropout3d,
    "alpha_dropout": TF.alpha_dropout,
    "timestep_dropout": TF.dropout,  # no torch twin: plain dropout's rule
    "gaussian_dropout": TF.dropout,
    "drop_block2d": TF.dropout,
}


@pytest.mark.parametrize("make", [_inference_tensor, _expanded], ids=["inference", "expanded"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("name", INPLACE)
def test_inplace_raises_what_torch_raises(name, p, training, make):
    f, shape = FUNCTIONS[name]
    twin = TORCH_TWINS[name]
    expected = _outcome(lambda: twin(make(shape), p, training=training, inplace=True))
    assert _outcome(lambda: f(make(shape), p, training=training, inplace=True)) == expected
    if training and 0.0 < p:
        assert expected != "ok"  # the check can fail: torch refuses these writes


def test_inplace_on_an_inference_tensor_inside_inference_mode_works_as_in_torch():
    with torch.inference_mode():
        x = torch.ones(4, 6)
        y = torch.ones(4, 6)
        assert DF.dropout(x, 1.0, inplace=True) is x and torch.equal(x, torch.zeros(4, 6))
        assert TF.dropout(y, 1.0, inplace=True) is y and torch.equal(y, torch.zeros(4, 6))


# ---------------------------------------------------------------------------------------------
# Copies own their rate tensor


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))],
    ids=["copy", "deepcopy", "pickle"],
)
@pytest.mark.parametrize("name", ["Dropout", "DropBlock2d", "DropConnectLinear", "WeightDrop"])
def test_a_copy_has_its_own_rate(name, duplicate):
    make, make_input = MODULES[name]
    module, x = make(0.3), make_input()
    compiled = torch.compile(module, backend=GraphBackend(), fullgraph=True)
    _assert_parity(module, compiled, x, seed=0)
    twin = duplicate(module)
    assert twin.p == 0.3 and twin._p_tensor is not module._p_tensor
    twin.p = 0.9
    assert module.p == 0.3 and float(module._p_tensor) == 0.3
    out, _, ref, _ = _run_both(module, compiled, x, seed=0)
    assert torch.equal(out, ref)  # the compiled original still drops at 0.3
    torch.manual_seed(0)
    at_09 = twin(x)
    torch.manual_seed(0)
    assert not torch.equal(at_09, module(x))


# ---------------------------------------------------------------------------------------------
# A tensor rate that requires grad


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_a_rate_tensor_that_requires_grad_is_refused(name):
    f, shape = FUNCTIONS[name]
    rate = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=rf"^{name}: `p` must not require grad"):
        f(_randn(*shape), rate)
    assert f(_randn(*shape), rate.detach(), seed=1).shape == shape


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("name", ["Dropout", "GaussianDropout", "AlphaDropout", "DropPath"])
def test_torchscript_draws_what_eager_draws(name, p):
    make, make_input = MODULES[name]
    module, x = make(p), make_input()
    scripted = torch.jit.script(module)
    out, out_state, ref, ref_state = _run_both(module, scripted, x, seed=4)
    assert torch.equal(out, ref) and torch.equal(out_state, ref_state)
    assert (out is x) == (ref is x) == (p == 0.0)
