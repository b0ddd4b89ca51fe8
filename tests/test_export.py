"""Exporting dropkit modules (``docs/export.md``): in eval mode every module exports with
``torch.export`` and to ONNX as an identity, a scale (vanilla mode) or its plain layer, with no
random op in the graph; train-mode export behaves as the document says."""

from __future__ import annotations

import subprocess
import sys
import warnings

import onnx
import pytest
import torch
from torch import nn

import dropkit.nn as dn
from test_compile import CASES, _randn, _same

# Eval-mode cases: the compile cases, with WeightDrop around an LSTM (export handles it).
EXPORT_CASES = {name: case for name, case in CASES.items() if name != "WeightDrop"}
EXPORT_CASES["WeightDrop-LSTM"] = (
    lambda: dn.WeightDrop(nn.LSTM(4, 5, batch_first=True), "weight_hh_l0", p=0.3),
    lambda: _randn(2, 5, 4),
)

RANDOM_ATEN = {"bernoulli", "rand", "rand_like", "randn", "randn_like", "randint",
               "randint_like", "randperm", "native_dropout", "dropout", "feature_dropout",
               "alpha_dropout", "feature_alpha_dropout", "normal", "uniform", "multinomial",
               "exponential", "geometric", "cauchy", "log_normal", "poisson"}
RANDOM_ONNX = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike",
               "Bernoulli", "Multinomial", "Dropout"}

# torch's ONNX exporter uses a pytree API that torch itself deprecated (not dropkit's warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"
)

# torch's own warning when nn.LSTM is exported (it reassigns its _flat_weights).
lstm_warning = pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights")

# torch.onnx.export's own warning for a module in training mode (part of what is documented).
train_onnx_warning = pytest.mark.filterwarnings(
    "ignore:Exporting a model while it is in training mode:UserWarning"
)


def _targets(ep: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


def _random_targets(ep: torch.export.ExportedProgram) -> list[str]:
    """Random aten ops and dropkit custom ops in an exported graph."""
    bad = []
    for target in _targets(ep):
        namespace, _, rest = target.partition(".")
        if namespace == "dropkit" or (namespace == "aten" and rest.split(".")[0] in RANDOM_ATEN):
            bad.append(target)
    return bad


def _onnx_ops(model: nn.Module | torch.export.ExportedProgram, args: tuple) -> set[str]:
    program = torch.onnx.export(model, args, dynamo=True)
    proto = onnx.load_from_string(program.model_proto.SerializeToString())
    return {node.op_type for node in proto.graph.node}


def test_random_op_detector_sees_random_ops():
    class Noisy(nn.Module):
        def forward(self, x):
            return nn.functional.dropout(x, 0.5, True) + torch.rand_like(x)

    ep = torch.export.export(Noisy(), (torch.ones(3),))
    assert _random_targets(ep)


@lstm_warning
@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_eval_export_has_no_random_op_and_matches_eager(name):
    make, make_input = EXPORT_CASES[name]
    module, x = make().eval(), make_input()
    state = torch.get_rng_state()
    ep = torch.export.export(module, (x,))
    assert _random_targets(ep) == []
    assert _same(ep.module()(x), module(x))
    strict = torch.export.export(module, (x,), strict=True)
    assert _random_targets(strict) == []
    assert _same(strict.module()(x), module(x))
    assert torch.equal(torch.get_rng_state(), state)  # eval draws no seed
    ops = _onnx_ops(ep, (x,))  # the module itself is exported in the test below
    assert not ops & RANDOM_ONNX, ops


def test_eval_export_computes_identity_scale_or_plain_layer():
    x = _randn(4, 6)
    assert torch.equal(torch.export.export(dn.Dropout(0.25).eval(), (x,)).module()(x), x)
    vanilla = torch.export.export(dn.Dropout(0.25, mode="vanilla").eval(), (x,)).module()
    assert torch.equal(vanilla(x), x * 0.75)
    layer = dn.DropConnectLinear(6, 5, p=0.3).eval()
    assert torch.equal(torch.export.export(layer, (x,)).module()(x),
                       nn.functional.linear(x, layer.weight, layer.bias))
    assert _onnx_ops(dn.Dropout(0.25).eval(), (x,)) == {"Identity"}
    assert _onnx_ops(dn.Dropout(0.25, mode="vanilla").eval(), (x,)) <= {"Mul", "Where"}


@pytest.mark.parametrize("name", ["Dropout", "GaussianDropout", "DropBlock2d",
                                  "EmbeddingDropout", "DropConnectLinear"])
def test_train_export_keeps_the_seed_draw_and_reproduces_eager(name):
    make, make_input = EXPORT_CASES[name]
    module, x = make().train(), make_input()
    ep = torch.export.export(module, (x,))
    targets = _targets(ep)
    assert targets == _targets(torch.export.export(module, (x,), strict=True))
    # The 64-bit seed, drawn at run time (iff 0 < p < 1, as in eager mode).
    assert "dropkit.draw_key.default" in targets
    if name != "EmbeddingDropout":  # EmbeddingDropout is plain torch ops after the draw
        assert any(t.startswith("dropkit.") and t != "dropkit.draw_key.default" for t in targets)
    torch.manual_seed(5)
    first = ep.module()(x)
    torch.manual_seed(5)
    assert _same(first, module(x))
    assert not _same(ep.module()(x), first)  # a fresh seed per call


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["batch_first", "time_major", "EmbeddingDropout"])
def test_sequence_modules_export_with_a_dynamic_batch_and_match_eager(name, training):
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    if name == "EmbeddingDropout":
        module = dn.EmbeddingDropout(nn.Embedding(10, 3), p=0.5)
        x, dims, batch_dim = torch.randint(0, 10, (4, 6)), {0: batch, 1: time}, 0
    else:
        module = dn.LockedDropout(0.5, batch_first=name == "batch_first")
        batch_dim = 0 if name == "batch_first" else 1
        x, dims = _randn(*((4, 6, 3) if batch_dim == 0 else (6, 4, 3))), {batch_dim: batch}
    module.train(training)
    ep = torch.export.export(module, (x,), dynamic_shapes=(dims,))
    for n in (1, 3):  # other batch sizes than the traced one
        xn = torch.cat([x] * n, batch_dim)
        torch.manual_seed(7)
        out = ep.module()(xn)
        torch.manual_seed(7)
        assert _same(out, module(xn))
        assert (out == 0).any() == training


@train_onnx_warning
def test_train_export_to_onnx_fails_on_the_seed_draw():
    module, x = dn.Dropout(0.3).train(), _randn(4, 6)
    with pytest.raises(torch.onnx.errors.OnnxExporterError,
                       match=r"No ONNX function found for <OpOverload\(op='dropkit\.draw_key', "
                             r"overload='default'\)>"):
        torch.onnx.export(module, (x,), dynamo=True)


@train_onnx_warning
def test_train_export_to_onnx_with_a_fixed_seed_fails_on_the_custom_op():
    class Seeded(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, seed=3)

    for inner, op in [(dn.Dropout(0.3), "dropkit.rate_op"),
                      (dn.DropBlock2d(0.3, 3), "dropkit.drop_block")]:
        module, x = Seeded(inner).train(), _randn(2, 3, 6, 6)
        assert "aten.randint.low_generator" not in _targets(torch.export.export(module, (x,)))
        with pytest.raises(torch.onnx.errors.OnnxExporterError,
                           match=rf"No ONNX function found for <OpOverload\(op='{op}', "):
            torch.onnx.export(module, (x,), dynamo=True)


def test_legacy_torchscript_exporter():
    """``dynamo=False``: the module exports directly in eval mode (``forward``'s ``seed`` and
    ``generator`` are optional positional arguments, which the legacy exporter passes as
    ``None``), with no random node and no ``TracerWarning`` (``forward`` takes its TorchScript
    path under the tracer). It used to fail with ``forward() takes 2 positional arguments but 4
    were given``."""
    import io

    module, x = dn.Dropout(0.3).eval(), _randn(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deprecated
        f = io.BytesIO()
        torch.onnx.export(module, (x,), f, dynamo=False)
    ops = {node.op_type for node in onnx.load_from_string(f.getvalue()).graph.node}
    assert not ops & RANDOM_ONNX, ops


@train_onnx_warning
def test_drop_connect_gaussian_inference_samples_in_eval():
    """``inference="gaussian"`` draws Gaussian samples at eval time: the one eval-mode graph with
    a random op (documented), which ONNX cannot translate."""
    layer = dn.DropConnectLinear(6, 5, p=0.3, inference="gaussian", activation=torch.tanh).eval()
    x = _randn(4, 6)
    assert "aten.randn.generator" in _targets(torch.export.export(layer, (x,)))
    with pytest.raises(torch.onnx.errors.OnnxExporterError,
                       match=r"No ONNX function found for <OpOverload\(op='aten\.randn', "):
        torch.onnx.export(layer, (x,), dynamo=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_vanilla_eval_with_a_tensor_rate_is_the_float_rate_scale(dtype):
    """The tensor-rate path (what modules use under compile and export) of vanilla eval is a
    plain multiplication with the same result as the float path, exact zeros at p = 1."""
    import dropkit.functional as DF

    x = _randn(64).to(dtype)
    x[0] = float("inf")
    for p in (0.0, 0.3, 2.0**-20, 0.99999, 1.0):
        rate = torch.tensor(p, dtype=torch.float64)
        expected = DF.dropout(x, p, False, mode="vanilla")
        assert torch.equal(DF.dropout(x, rate, False, mode="vanilla"), expected)
        y = x.clone()
        assert DF.dropout(y, rate, False, True, mode="vanilla") is y
        assert torch.equal(y, expected)
    leaf = _randn(5).double().requires_grad_()
    rate = torch.tensor(0.25, dtype=torch.float64)
    DF.dropout(leaf, rate, False, mode="vanilla").sum().backward()
    assert torch.equal(leaf.grad, torch.full((5,), 0.75, dtype=torch.float64))


def test_saved_programs_need_dropkit_only_in_train_mode(tmp_path):
    """A saved eval-mode program loads without dropkit; a train-mode one names the custom op."""
    x = _randn(4, 6)
    torch.export.save(torch.export.export(dn.Dropout(0.3).eval(), (x,)), tmp_path / "eval.pt2")
    torch.export.save(torch.export.export(dn.Dropout(0.3).train(), (x,)), tmp_path / "train.pt2")
    script = (
        "import sys, torch\n"
        "ep = torch.export.load(sys.argv[1])\n"
        "x = torch.randn(4, 6)\n"
        "assert torch.equal(ep.module()(x), x)\n"
        "assert 'dropkit' not in sys.modules\n"
        "try:\n"
        "    torch.export.load(sys.argv[2])\n"
        "except Exception:\n"
        "    print('train program: load failed')\n"
        "import dropkit\n"
        "torch.export.load(sys.argv[2])\n"
        "print('train program: loaded with dropkit')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, str(tmp_path / "eval.pt2"),
         str(tmp_path / "train.pt2")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["train program: load failed",
                                        "train program: loaded with dropkit"]
    assert "failed to resolve torch.ops.dropkit.draw_key.default" in done.stderr
