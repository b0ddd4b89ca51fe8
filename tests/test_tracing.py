"""``torch.fx``, ``torch.jit.script`` and ``torch.jit.trace`` of every dropkit module, and
errors from ``forward`` that name the module (``docs/export.md``).

* fx: plain ``symbolic_trace`` records each dropkit module as one ``call_module`` node, as it
  records ``torch.nn.Dropout``; the ``GraphModule`` gives the module's results in train mode
  (same masks after the same ``torch.manual_seed``) and after ``.eval()``.
* TorchScript: scripted and traced modules equal eager in eval, and in train draw the same masks
  after the same ``torch.manual_seed`` (through ``torch.ops.dropkit.*``), a new one per call.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import dropkit.nn as dn
from test_compile import CASES, _randn, _same

# torch 2.13 deprecates torch.jit.script / trace (its warning, not dropkit's).
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.(script|trace|trace_method|script_method|save|load)` is deprecated"
    ":DeprecationWarning"
)

# What TorchScript cannot run (the module raises a RuntimeError that says so when called).
NOT_SCRIPTED_TRAIN = {"EmbeddingDropout"}
NOT_SCRIPTED = {"WeightDrop"}  # forward(*args, **kwargs)


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _train_equal(fn, ref, x, seed: int = 3) -> None:
    torch.manual_seed(seed)
    out = fn(x)
    torch.manual_seed(seed)
    assert _same(out, ref(x))
    assert not _same(fn(x), out)  # a fresh mask per call


def _call_modules(gm: torch.fx.GraphModule) -> list[str]:
    return [n.target for n in gm.graph.nodes if n.op == "call_module"]


def test_fx_records_torch_dropout_as_call_module():
    """The reference behaviour: torch's own dropout module is one call_module node."""
    gm = torch.fx.symbolic_trace(Wrapper(nn.Dropout(0.3)))
    assert _call_modules(gm) == ["inner"]


@pytest.mark.parametrize("name", list(CASES))
def test_fx_symbolic_trace_gives_one_call_module_node_and_the_modules_results(name):
    make, make_input = CASES[name]
    model, x = Wrapper(make()), make_input()
    gm = torch.fx.symbolic_trace(model)
    assert _call_modules(gm) == ["inner"]
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    _train_equal(gm, model, x)
    assert _same(gm.eval()(x), model.eval()(x))


def test_fx_node_keeps_seed_and_generator_arguments():
    class Seeded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = dn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x, seed=7)

    gm = torch.fx.symbolic_trace(Seeded())
    (node,) = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert node.kwargs == {"seed": 7}
    x = _randn(4, 6)
    assert torch.equal(gm(x), dn.Dropout(0.5)(x, seed=7))


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("drop", [lambda: nn.Dropout(0.3), lambda: dn.Dropout(0.3),
                                  lambda: dn.DropBlock2d(0.3, 3)])
def test_prepare_fx_keeps_the_module_as_a_call_module_node(drop):
    """FX quantization preparation traces a model with a dropkit module as it traces one with
    ``torch.nn.Dropout``: the module stays one call_module node, the prepared and the
    converted model run, and the prepared model computes the float model's output."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = nn.Sequential(nn.Conv2d(3, 3, 1), drop(), nn.Conv2d(3, 2, 1)).eval()
    x = _randn(2, 3, 8, 8)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
    assert "1" in _call_modules(prepared)
    assert torch.allclose(prepared(x), model(x))
    converted = convert_fx(prepared)
    assert converted(x).shape == model(x).shape


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_matches_eager_in_eval_and_train(name, how):
    make, make_input = CASES[name]
    module, x = make(), make_input()
    if how == "script" and name in NOT_SCRIPTED:
        with pytest.raises(torch.jit.frontend.NotSupportedError):
            torch.jit.script(module)
        return

    def jit(m):
        if how == "script":
            return torch.jit.script(m)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no TracerWarning either
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.trace(m, (x,), check_trace=False)

    state = torch.get_rng_state()
    assert _same(jit(module.eval())(x), module(x))
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    if how == "script" and name in NOT_SCRIPTED_TRAIN:
        with pytest.raises(torch.jit.Error, match=r"does not run under torch\.jit\.script"):
            jit(module.train())(x)
        return
    _train_equal(jit(module.train()), module, x)


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", ["Dropout", "GaussianDropout", "AlphaDropout", "DropBlock2d",
                                  "LockedDropout", "DropPath"])
def test_torchscript_train_gradients_match_eager(name, how):
    make, make_input = CASES[name]
    module, x = make().train(), make_input()
    jit = torch.jit.script(module) if how == "script" else torch.jit.trace(
        module, (x,), check_trace=False)
    grads = []
    for fn in (jit, module):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(11)
        fn(leaf).mul(torch.arange(leaf.numel()).reshape(leaf.shape)).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_scripted_seed_argument_fixes_the_mask():
    scripted = torch.jit.script(dn.Dropout(0.5))
    x = _randn(4, 6)
    assert torch.equal(scripted(x, 123), dn.Dropout(0.5)(x, seed=123))
    assert torch.equal(scripted(x, seed=2**40 + 5), dn.Dropout(0.5)(x, seed=2**40 + 5))


@pytest.mark.parametrize("name", ["Dropout", "SpatialDropout2d", "DropBlock2d",
                                  "DropConnectLinear"])
def test_scripted_module_saves_and_loads(name):
    make, make_input = CASES[name]
    module, x = make(), make_input()
    for mode in ("eval", "train"):
        getattr(module, mode)()
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(module), buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        if mode == "eval":
            assert _same(loaded(x), module(x))
        else:
            _train_equal(loaded, module, x)


@pytest.mark.parametrize("make, x, message", [
    (lambda: dn.DropConnectConv2d(3, 4, 3, p=0.3, mask="sample").train(), (2, 3, 6, 6),
     "mask='sample' does not run under torch.jit.script"),
    (lambda: dn.DropConnectLinear(6, 5, p=0.3, inference="gaussian", activation=nn.ReLU()).eval(),
     (4, 6), "inference='gaussian' does not run under torch.jit.script"),
])
def test_script_says_what_it_cannot_run_and_trace_runs_it(make, x, message):
    module, x = make(), _randn(*x)
    with pytest.raises(torch.jit.Error, match=message):
        torch.jit.script(module)(x)
    traced = torch.jit.trace(module, (x,), check_trace=False)
    torch.manual_seed(2)
    out = traced(x)
    torch.manual_seed(2)
    assert torch.equal(out, module(x))


def test_drop_connect_sample_masks_script_and_trace():
    module, x = dn.DropConnectLinear(6, 5, p=0.3, mask="sample"), _randn(2, 4, 6)
    _train_equal(torch.jit.script(module), module, x)
    _train_equal(torch.jit.trace(module, (x,), check_trace=False), module, x)


def test_weight_drop_lstm_traces():
    module, x = dn.WeightDrop(nn.LSTM(4, 5, batch_first=True), p=0.3), _randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # torch's, about the LSTM
        traced = torch.jit.trace(module, (x,), check_trace=False)
    _train_equal(traced, module, x)


# --- errors from forward name the module ---

_INT = torch.ones(2, 3, 4, 4, dtype=torch.int64)


@pytest.mark.parametrize("make, arg, error, message", [
    (lambda: dn.Dropout(), _INT, TypeError, "`input` must have dtype"),
    (lambda: dn.Dropout(noise_shape=(1, 2)), torch.ones(3, 3), ValueError, "`noise_shape"),
    (lambda: dn.AlphaDropout(), _INT, TypeError, "`input` must have dtype"),
    (lambda: dn.GaussianDropout(), _INT, TypeError, "`input` must have dtype"),
    (lambda: dn.SpatialDropout1d(), _INT.float(), ValueError, "expected a 3D input"),
    (lambda: dn.SpatialDropout2d(), torch.ones(3, 3), ValueError, "expected a 4D input"),
    (lambda: dn.SpatialDropout3d(), torch.ones(3, 3), ValueError, "expected a 5D input"),
    (lambda: dn.TimestepDropout(), torch.ones(3, 3), ValueError, "at least 3 dimensions"),
    (lambda: dn.DropPath(0.1), _INT, TypeError, "`input` must have dtype"),
    (lambda: dn.DropHead(0.1), torch.ones(3, 3), ValueError, "a 4D input"),
    (lambda: dn.DropBlock1d(), _INT.float(), ValueError, "3D input"),
    (lambda: dn.DropBlock2d(), _INT, TypeError, "`input` must have dtype"),
    (lambda: dn.DropBlock3d(), torch.ones(3, 3), ValueError, "5D input"),
    (lambda: dn.LockedDropout(), _INT, TypeError, "`input` must have dtype"),
    (lambda: dn.EmbeddingDropout(nn.Embedding(4, 2)), torch.ones(2, 3), TypeError,
     "integer tensor"),
    (lambda: dn.DropConnectLinear(4, 2), torch.ones(3, 4), ValueError, "`seed`"),
    (lambda: dn.DropConnectConv2d(2, 2, 1), torch.ones(1, 2, 3, 3), ValueError, "`seed`"),
    (lambda: dn.WeightDrop(nn.Linear(4, 2), "weight"), torch.ones(3, 4), ValueError, "`seed`"),
])
def test_forward_errors_name_the_module(make, arg, error, message):
    module = make()
    seed = -1 if message == "`seed`" else None
    with pytest.raises(error, match=rf"^{type(module).__name__}: .*{message}"):
        module(arg, seed=seed)
