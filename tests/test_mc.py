"""Tests of dropkit.mc: MC dropout mode switching and mc_predict statistics."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import dropkit
from dropkit.mc import MCPrediction, is_dropout_module, mc_dropout, mc_predict


def _mlp(dropout: nn.Module | None = None, n_in: int = 4, hidden: int = 16, n_out: int = 3):
    torch.manual_seed(0)
    drop = dropout if dropout is not None else dropkit.nn.Dropout(0.5)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), drop,
                         nn.Linear(hidden, n_out)).double()


def _with_bn_stats(model: nn.Module) -> nn.Module:
    bn = model[1]
    bn.running_mean.uniform_(-1.0, 1.0)
    bn.running_var.uniform_(0.5, 2.0)
    return model


class _Replay(nn.Module):
    """Returns the given outputs one after the other (a known 'stochastic' model)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)
        self.calls = 0

    def forward(self, x):
        out = self.outputs[self.calls]
        self.calls += 1
        return out


# --- is_dropout_module --------------------------------------------------------------------------


@pytest.mark.parametrize("module", [
    dropkit.nn.Dropout(0.1), dropkit.nn.SpatialDropout1d(0.1), dropkit.nn.SpatialDropout2d(0.1),
    dropkit.nn.SpatialDropout3d(0.1), dropkit.nn.TimestepDropout(0.1),
    dropkit.nn.GaussianDropout(0.1), dropkit.nn.AlphaDropout(0.1), dropkit.nn.DropPath(0.1),
    dropkit.nn.DropBlock2d(0.1, 3), nn.Dropout(), nn.Dropout1d(), nn.Dropout2d(), nn.Dropout3d(),
    nn.AlphaDropout(), nn.FeatureAlphaDropout(),
], ids=lambda m: type(m).__module__.split(".")[0] + "." + type(m).__name__)
def test_is_dropout_module_true(module):
    assert is_dropout_module(module)


@pytest.mark.parametrize("module", [
    nn.BatchNorm1d(3), nn.Linear(2, 2), nn.Sequential(nn.Dropout()), nn.LayerNorm(3), nn.ReLU(),
])
def test_is_dropout_module_false(module):
    assert not is_dropout_module(module)


# --- mc_dropout -----------------------------------------------------------------------------------


def test_mc_dropout_only_dropout_modules_train():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(),
                          nn.Sequential(dropkit.nn.Dropout(0.2), nn.BatchNorm1d(3)))
    model.train()
    with mc_dropout(model) as m:
        assert m is model
        assert [x.training for x in model.modules()] == [False, False, False, True, False, True,
                                                         False]
    assert all(x.training for x in model.modules())


def test_mc_dropout_restores_mixed_modes():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(), dropkit.nn.Dropout(),
                          nn.BatchNorm1d(3))
    flags = [True, False, True, False, True, False]  # arbitrary mixed state, model included
    for mod, flag in zip(model.modules(), flags, strict=True):
        mod.training = flag
    with mc_dropout(model):
        assert [x.training for x in model.modules()] == [False, False, False, True, True, False]
    assert [x.training for x in model.modules()] == flags


def test_mc_dropout_restores_on_exception():
    model = _mlp().eval()
    model[1].train()
    before = [x.training for x in model.modules()]
    with pytest.raises(RuntimeError, match="boom"), mc_dropout(model):
        assert model[3].training and not model[1].training
        raise RuntimeError("boom")
    assert [x.training for x in model.modules()] == before


def test_mc_dropout_nested():
    model = _mlp().train()
    with mc_dropout(model):
        mc_state = [x.training for x in model.modules()]
        with mc_dropout(model):
            assert [x.training for x in model.modules()] == mc_state
        assert [x.training for x in model.modules()] == mc_state
    assert all(x.training for x in model.modules())


DROPOUTS = [lambda: dropkit.nn.Dropout(0.5), lambda: nn.Dropout(0.5),
            lambda: dropkit.nn.SpatialDropout1d(0.5), lambda: nn.Dropout1d(0.5)]
DROPOUT_IDS = ["dropkit.Dropout", "torch.Dropout", "dropkit.SpatialDropout1d", "torch.Dropout1d"]


def _samples(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` draws masks: two calls on the same input differ."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


@pytest.mark.parametrize("make", DROPOUTS, ids=DROPOUT_IDS)
def test_mc_dropout_keeps_sampling_through_eval_and_train_calls(make):
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), make(), nn.Linear(16, 2)).eval()
    bn = model[1]
    x = torch.randn(8, 4)
    assert not _samples(model, x)
    with mc_dropout(model):
        assert _samples(model, x)
        model.eval()  # baal's MCDropoutModule keeps sampling through eval() too
        assert _samples(model, x) and not bn.training
        model[2].train(False)
        assert _samples(model, x)
        model[2].training = False
        assert _samples(model, x)
        model.train()  # an explicit train() reaches the other modules as usual
        assert bn.training
        model.eval()
    assert [m.training for m in model.modules()] == [False] * 5
    assert not _samples(model, x)  # the hooks are gone
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_mc_dropout_keeps_sampling_after_eval_with_exception_and_nesting():
    model = _mlp().train()
    x = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="boom"), mc_dropout(model):
        model.eval()
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())
    with mc_dropout(model):
        with mc_dropout(model):
            model.eval()
            assert _samples(model, x)
        assert model[3].training and not model[1].training  # the MC state is back
        model.eval()
        assert _samples(model, x)  # the outer block still samples
    assert all(m.training for m in model.modules())
    model.eval()
    assert not _samples(model, x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_mc_dropout_keeps_sampling_in_a_compiled_model_after_eval():
    model = nn.Sequential(nn.Linear(4, 16), dropkit.nn.Dropout(0.5), nn.Dropout(0.5),
                          nn.Linear(16, 2)).eval()
    compiled = torch.compile(model)
    x = torch.randn(8, 4)
    assert not _samples(compiled, x)
    with mc_dropout(model):
        model.eval()
        assert _samples(compiled, x)
    assert not _samples(compiled, x)


def test_copies_and_pickles_made_inside_mc_dropout_behave_normally():
    model = nn.Sequential(nn.Linear(4, 16), dropkit.nn.Dropout(0.5), nn.Dropout(0.5),
                          nn.Linear(16, 2)).eval()
    x = torch.randn(8, 4)
    with mc_dropout(model):
        copied = copy.deepcopy(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        assert _samples(model.eval(), x)
        assert not _samples(copied.eval(), x)  # a copy is not inside the block
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (copied, loaded):
        assert not _samples(other.eval(), x)
        assert _samples(other.train(), x)
    assert all("train" not in vars(m) for m in model.modules())


def test_mc_predict_samples_when_the_model_calls_eval_in_forward():
    class SelfEval(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), dropkit.nn.Dropout(0.5), nn.Linear(8, 3))

        def forward(self, x):
            self.eval()
            return self.net(x)

    pred = mc_predict(SelfEval(), torch.randn(5, 4), 8, seed=0)
    assert bool((pred.variance > 0).all())


def test_mc_dropout_rejects_non_module():
    with pytest.raises(TypeError, match=r"^mc_dropout: `model` must be a torch\.nn\.Module, "
                                        r"got int 3\.$"), mc_dropout(3):
        pass


def test_batchnorm_stays_in_eval_while_dropout_active():
    model = _with_bn_stats(_mlp()).train()
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(8, 4, dtype=torch.float64)
    pred = mc_predict(model, x, 6, seed=3, return_samples=True)
    # running statistics unchanged
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    # the BN output used the running statistics: recompute sample 0's dropout input by hand
    with torch.no_grad():
        h_eval = model[2](nn.functional.batch_norm(model[0](x), stats[0], stats[1], bn.weight,
                                                   bn.bias, training=False, eps=bn.eps))
        h_batch = model[2](nn.functional.batch_norm(model[0](x), None, None, bn.weight, bn.bias,
                                                    training=True, eps=bn.eps))
    # Dropout masks are unknown here, but a p=0 twin of the model is deterministic:
    twin = _with_bn_stats(_mlp(dropkit.nn.Dropout(0.0)))
    twin[1].load_state_dict(bn.state_dict())
    twin.train()
    det = mc_predict(twin, x, 2, seed=3, task="regression")
    with torch.no_grad():
        expected = model[4](h_eval)
        assert not torch.allclose(model[4](h_batch), expected)  # the two BN modes differ here
    torch.testing.assert_close(det.mean, expected, rtol=0, atol=1e-12)
    assert pred.samples is not None and pred.samples.shape == (6, 8, 3)
    assert model.training and bn.training  # modes restored


# --- statistics against known formulas ----------------------------------------------------------


def test_classification_statistics_known_values():
    p1, p2 = torch.tensor([[0.9, 0.1], [0.5, 0.5]]), torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    model = _Replay([p1.log(), p2.log()]).double()
    pred = mc_predict(model, torch.zeros(2, 1), 2, seed=0, return_samples=True)
    assert isinstance(pred, MCPrediction)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    torch.testing.assert_close(pred.mean, torch.full((2, 2), 0.5))
    torch.testing.assert_close(pred.variance, torch.tensor([[0.16, 0.16], [0.0, 0.0]]))
    torch.testing.assert_close(pred.entropy, torch.tensor([math.log(2), math.log(2)]))
    torch.testing.assert_close(pred.expected_entropy, torch.tensor([h, math.log(2)]))
    torch.testing.assert_close(pred.mutual_information, torch.tensor([math.log(2) - h, 0.0]))
    torch.testing.assert_close(pred.samples, torch.stack([p1, p2]))


def test_zero_probabilities_give_finite_entropy():
    logits = torch.tensor([[0.0, -math.inf, -math.inf], [0.0, 0.0, -math.inf]])
    pred = mc_predict(_Replay([logits, logits]), torch.zeros(2, 1), 2, seed=0)
    torch.testing.assert_close(pred.entropy, torch.tensor([0.0, math.log(2)]))
    torch.testing.assert_close(pred.mutual_information, torch.zeros(2))
    assert torch.isfinite(pred.expected_entropy).all()


def test_statistics_match_direct_computation_on_samples():
    model = _with_bn_stats(_mlp(n_out=5))
    x = torch.randn(7, 4, dtype=torch.float64)
    pred = mc_predict(model, x, 30, seed=11, return_samples=True)
    probs = pred.samples.numpy()  # (S, N, C), softmax probabilities
    mean = probs.mean(0)
    ent = -(mean * np.log(mean)).sum(-1)
    exp_ent = (-(probs * np.log(probs)).sum(-1)).mean(0)
    np.testing.assert_allclose(pred.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(pred.variance.numpy(), probs.var(0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(pred.entropy.numpy(), ent, rtol=1e-12)
    np.testing.assert_allclose(pred.expected_entropy.numpy(), exp_ent, rtol=1e-12)
    np.testing.assert_allclose(pred.mutual_information.numpy(), ent - exp_ent, atol=1e-12)
    assert (pred.mutual_information >= 0).all()
    assert (pred.mutual_information > 1e-4).any()  # dropout really made the samples differ
    assert (pred.entropy <= math.log(5) + 1e-12).all()
    # the samples are the softmax of the model's stochastic outputs
    torch.testing.assert_close(pred.samples.sum(-1), torch.ones(30, 7, dtype=torch.float64))


def test_regression_statistics():
    outs = [torch.tensor([[v], [4.0]]) for v in (1.0, 3.0, 5.0)]
    pred = mc_predict(_Replay(outs), torch.zeros(2, 1), 3, task="regression", seed=0)
    torch.testing.assert_close(pred.mean, torch.tensor([[3.0], [4.0]]))
    torch.testing.assert_close(pred.variance, torch.tensor([[8.0 / 3.0], [0.0]]))
    assert pred.entropy is None and pred.mutual_information is None
    assert pred.expected_entropy is None and pred.samples is None


def test_deterministic_model_has_zero_variance_and_bald():
    model = _with_bn_stats(_mlp(nn.Identity()))
    x = torch.randn(5, 4, dtype=torch.float64)
    pred = mc_predict(model, x, 8, seed=0)
    torch.testing.assert_close(pred.variance, torch.zeros(5, 3, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(pred.mutual_information, torch.zeros(5, dtype=torch.float64),
                               rtol=0, atol=1e-14)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), -1)
    torch.testing.assert_close(pred.mean, expected, rtol=0, atol=1e-14)


def test_single_sample_has_zero_variance():
    pred = mc_predict(_mlp(), torch.randn(3, 4, dtype=torch.float64), 1, seed=0)
    assert torch.equal(pred.variance, torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(pred.mutual_information, torch.zeros(3, dtype=torch.float64))


def test_class_dim():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 1), dropkit.nn.SpatialDropout1d(0.3))  # (N, C=4, L)
    x = torch.randn(3, 2, 5)
    pred = mc_predict(model, x, 5, class_dim=1, seed=0)
    assert pred.mean.shape == (3, 4, 5) and pred.entropy.shape == (3, 5)
    torch.testing.assert_close(pred.mean.sum(1), torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"^mc_predict: `class_dim` must index a non-batch axis "
                                         r"of the model output \(shape \(3, 4, 5\)\), got 0\.$"):
        mc_predict(model, x, 2, class_dim=0, seed=0)
    with pytest.raises(ValueError, match=r"got 3\.$"):
        mc_predict(model, x, 2, class_dim=3, seed=0)


# --- randomness: seeds, batching, consistent masks ----------------------------------------------


@pytest.mark.parametrize("drop", [dropkit.nn.Dropout(0.5), nn.Dropout(0.5)],
                         ids=["dropkit", "torch"])
def test_seed_reproducible_and_global_rng_untouched(drop):
    model = _mlp(drop)
    x = torch.randn(6, 4, dtype=torch.float64)
    state = torch.get_rng_state()
    a = mc_predict(model, x, 5, seed=42, return_samples=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = mc_predict(model, x, 5, seed=42, return_samples=True)
    c = mc_predict(model, x, 5, seed=43, return_samples=True)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.mean, b.mean)
    assert not torch.equal(a.samples, c.samples)
    assert not torch.equal(a.samples[0], a.samples[1])  # the passes differ from each other
    assert torch.equal(torch.get_rng_state(), state)


def test_generator_draws_the_base_seed():
    model, x = _mlp(), torch.randn(4, 4, dtype=torch.float64)
    state = torch.get_rng_state()
    a = mc_predict(model, x, 3, generator=torch.Generator().manual_seed(5), return_samples=True)
    b = mc_predict(model, x, 3, generator=torch.Generator().manual_seed(5), return_samples=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.samples, b.samples)
    # without seed or generator the base seed is one draw of the global generator
    torch.manual_seed(9)
    c = mc_predict(model, x, 3, return_samples=True)
    torch.manual_seed(9)
    d = mc_predict(model, x, 3, return_samples=True)
    assert torch.equal(c.samples, d.samples)
    assert not torch.equal(a.samples, c.samples)


def test_batching_reproducible_for_fixed_batch_size():
    model, x = _mlp(), torch.randn(7, 4, dtype=torch.float64)
    a = mc_predict(model, x, 4, batch_size=3, seed=1, return_samples=True)
    b = mc_predict(model, x, 4, batch_size=3, seed=1, return_samples=True)
    assert torch.equal(a.samples, b.samples)
    # a deterministic model gives the same result whatever the chunking
    det = _with_bn_stats(_mlp(nn.Identity()))
    ref = mc_predict(det, x, 2, seed=1).mean
    for bs in (1, 2, 3, 7, 100):
        torch.testing.assert_close(mc_predict(det, x, 2, batch_size=bs, seed=1).mean, ref,
                                   rtol=0, atol=1e-14)


@pytest.mark.parametrize("drop", [dropkit.nn.Dropout(0.5), nn.Dropout(0.5),
                                  dropkit.nn.GaussianDropout(0.5)],
                         ids=["dropkit", "torch", "gauss"])
def test_consistent_same_masks_for_every_input(drop):
    # the model is the dropout alone: output / input is the mask of each row
    x = torch.arange(1.0, 4.0, dtype=torch.float64)[:, None].expand(3, 50).contiguous()
    pred = mc_predict(nn.Sequential(drop), x, 4, task="regression", consistent=True, seed=7,
                      return_samples=True)
    masks = pred.samples / x
    for i in (1, 2):
        torch.testing.assert_close(masks[:, i], masks[:, 0], rtol=1e-15, atol=0)
    assert not torch.equal(masks[0, 0], masks[1, 0])  # but they change from pass to pass
    # without consistent, the rows get different masks
    plain = mc_predict(nn.Sequential(drop), x, 4, task="regression", seed=7, return_samples=True)
    assert not torch.allclose(plain.samples[:, 1] / x[1], plain.samples[:, 0] / x[0])


def test_consistent_identical_inputs_identical_samples_and_batch_invariant():
    model = _with_bn_stats(_mlp())
    row = torch.randn(1, 4, dtype=torch.float64)
    x = torch.cat([row, torch.randn(2, 4, dtype=torch.float64), row, row])
    ref = mc_predict(model, x, 6, consistent=True, seed=3, return_samples=True)
    for i in (3, 4):
        assert torch.equal(ref.samples[:, i], ref.samples[:, 0])
    for bs in (1, 2, 4, 100):
        other = mc_predict(model, x, 6, consistent=True, batch_size=bs, seed=3,
                           return_samples=True)
        assert torch.equal(other.samples, ref.samples)
    plain = mc_predict(model, x, 6, seed=3, return_samples=True)
    assert not torch.equal(plain.samples[:, 3], plain.samples[:, 0])


# --- errors ---------------------------------------------------------------------------------------


def test_errors():
    model, x = _mlp(), torch.randn(2, 4, dtype=torch.float64)
    cases = [
        (ValueError, r"^mc_predict: `n_samples` must be a positive int, got 0\.$",
         dict(n_samples=0)),
        (TypeError, r"^mc_predict: `n_samples` must be a positive int, got float 2\.0\.$",
         dict(n_samples=2.0)),
        (TypeError, r"^mc_predict: `n_samples` must be a positive int, got bool True\.$",
         dict(n_samples=True)),
        (ValueError, r"^mc_predict: `batch_size` must be a positive int, got -1\.$",
         dict(batch_size=-1)),
        (TypeError, r"^mc_predict: `batch_size` must be a positive int, got str '2'\.$",
         dict(batch_size="2")),
        (ValueError, r"^mc_predict: `task` must be .*, got 'segmentation'\.$",
         dict(task="segmentation")),
        (TypeError, r"^mc_predict: `consistent` must be a bool, got int 1\.$",
         dict(consistent=1)),
        (TypeError, r"^mc_predict: `return_samples` must be a bool, got NoneType None\.$",
         dict(return_samples=None)),
        (ValueError, r"^mc_predict: pass either `seed` or `generator`, not both\.$",
         dict(seed=1, generator=torch.Generator())),
        (ValueError, r"^mc_predict: `seed` must be an int in \[0, 2\*\*64\), got -1\.$",
         dict(seed=-1)),
        (TypeError, r"^mc_predict: `generator` must be a torch\.Generator, got int\.$",
         dict(generator=3)),
    ]
    for exc, msg, kwargs in cases:
        kwargs = {"n_samples": 2, **kwargs}
        with pytest.raises(exc, match=msg):
            mc_predict(model, x, **kwargs)
    with pytest.raises(TypeError, match=r"^mc_predict: `model` must be a torch\.nn\.Module, "
                                        r"got str 'm'\.$"):
        mc_predict("m", x, 2)
    with pytest.raises(TypeError, match=r"^mc_predict: `x` must be a Tensor, got list\.$"):
        mc_predict(model, [1.0], 2)
    with pytest.raises(ValueError, match=r"^mc_predict: `x` must have a non-empty batch axis "
                                         r"\(dim 0\), got shape \(\)\.$"):
        mc_predict(model, torch.tensor(1.0), 2)
    with pytest.raises(ValueError, match=r"got shape \(0, 4\)\.$"):
        mc_predict(model, torch.zeros(0, 4), 2)


def test_bad_model_output_raises_and_restores_modes():
    model = nn.Sequential(nn.Flatten(0), nn.Dropout()).train()
    with pytest.raises(ValueError, match=r"^mc_predict: the model must return a Tensor with dim 0 "
                                         r"of size 2 \(one row per input\), got \(6,\)\.$"):
        mc_predict(model, torch.ones(2, 3), 2, seed=0)
    assert all(m.training for m in model.modules())

    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("inside")

    bad = nn.Sequential(nn.BatchNorm1d(3), Raises()).train()
    with pytest.raises(RuntimeError, match="inside"):
        mc_predict(bad, torch.ones(2, 3), 2, seed=0)
    assert all(m.training for m in bad.modules())
