"""WeightDrop: DropConnect on named parameters of RNNs and other modules."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from dropkit import rng
from dropkit.nn import RateModule
from dropkit.nn.weight_drop import WeightDrop
from dropkit.schedules import RateScheduler
from helpers import assert_keep_rate

RNNS = (nn.LSTM, nn.GRU, nn.RNN)


def _x(n=3, t=5, d=4):
    return torch.randn(n, t, d)


@pytest.mark.parametrize("cls", RNNS)
def test_train_calls_differ_eval_is_deterministic_and_equals_plain(cls):
    rnn = cls(4, 6, num_layers=2, batch_first=True)
    plain = copy.deepcopy(rnn)
    wd = WeightDrop(rnn, ("weight_hh_l0", "weight_hh_l1"), p=0.5)
    x = _x()
    a, b = wd(x)[0], wd(x)[0]
    assert not torch.equal(a, b)
    assert not torch.equal(a, plain(x)[0])
    wd.eval()
    assert not rnn.training  # eval() reaches the wrapped module
    e1, e2 = wd(x), wd(x)
    assert torch.equal(e1[0], e2[0])
    assert torch.equal(e1[0], plain(x)[0])
    assert torch.equal(e1[1][0] if cls is nn.LSTM else e1[1], (plain(x)[1][0] if cls is nn.LSTM
                                                                 else plain(x)[1]))


@pytest.mark.parametrize("cls", RNNS)
def test_seed_fixes_the_mask_and_forward_uses_dropped_weights(cls):
    rnn = cls(4, 6, batch_first=True)
    wd = WeightDrop(rnn, p=0.3)
    x = _x()
    assert torch.equal(wd(x, seed=5)[0], wd(x, seed=5)[0])
    assert not torch.equal(wd(x, seed=5)[0], wd(x, seed=6)[0])
    dropped = wd.dropped_weights(seed=5)
    expected = torch.func.functional_call(rnn, dropped, (x,))[0]
    assert torch.equal(wd(x, seed=5)[0], expected)
    # the real parameter is untouched and still the registered Parameter
    assert isinstance(rnn.weight_hh_l0, nn.Parameter)
    assert rnn.weight_hh_l0 is dict(wd.named_parameters())["module.weight_hh_l0"]


def test_generator_draws_the_mask():
    wd = WeightDrop(nn.LSTM(4, 6, batch_first=True), p=0.5)
    x = _x()
    a = wd(x, generator=torch.Generator().manual_seed(3))[0]
    b = wd(x, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_keep_rate_and_scaling_of_the_dropped_weight():
    lstm = nn.LSTM(32, 64)  # weight_hh_l0: (256, 64) = 16384 elements
    for p in (0.1, 0.5, 0.8):
        wd = WeightDrop(lstm, p=p)
        raw = lstm.weight_hh_l0.detach()
        assert (raw != 0).all()
        dropped = wd.dropped_weights(seed=11)["weight_hh_l0"].detach()
        kept = dropped != 0
        assert_keep_rate(int(kept.sum()), raw.numel(), p)
        scale = rng.inverted_scale(rng.threshold(p))
        assert torch.equal(dropped[kept], raw[kept] * torch.tensor(scale, dtype=torch.float32))
        # the decisions are the spec's Bernoulli field of the parameter's shape
        spec = rng.keep_field(tuple(raw.shape), p, 11)
        assert torch.equal(kept, torch.from_numpy(spec))


def test_several_names_share_one_field_over_their_concatenation():
    lstm = nn.LSTM(4, 6, num_layers=2)
    wd = WeightDrop(lstm, ("weight_hh_l0", "weight_ih_l1"), p=0.5)
    d = wd.dropped_weights(seed=2)
    k0 = d["weight_hh_l0"] != 0
    k1 = d["weight_ih_l1"] != 0
    field = rng.keep_field((k0.numel() + k1.numel(),), 0.5, 2)
    assert torch.equal(torch.cat([k0.reshape(-1), k1.reshape(-1)]), torch.from_numpy(field))


def test_p_zero_and_p_one():
    lstm = nn.LSTM(4, 6, batch_first=True)
    plain = copy.deepcopy(lstm)
    x = _x()
    assert torch.equal(WeightDrop(lstm, p=0.0)(x)[0], plain(x)[0])
    zero = WeightDrop(lstm, p=1.0).dropped_weights()["weight_hh_l0"]
    assert torch.equal(zero, torch.zeros_like(zero))


def test_optimizer_sees_the_parameters_and_a_step_changes_them():
    lstm = nn.LSTM(4, 6, batch_first=True)
    wd = WeightDrop(lstm, p=0.5)
    params = list(wd.parameters())
    assert {id(q) for q in params} == {id(q) for q in lstm.parameters()}
    opt = torch.optim.SGD(wd.parameters(), lr=0.1)
    before = {k: q.detach().clone() for k, q in wd.named_parameters()}
    out, _ = wd(_x(), seed=1)
    out.pow(2).sum().backward()
    grad = lstm.weight_hh_l0.grad
    assert grad is not None and grad.abs().sum() > 0
    # the gradient reaches the raw weight only through kept elements
    kept = wd.dropped_weights(seed=1)["weight_hh_l0"] != 0
    assert (grad[~kept] == 0).all()
    opt.step()
    for k, q in wd.named_parameters():
        assert not torch.equal(q, before[k]), k


def test_state_dict_keys_and_round_trips_with_a_plain_lstm():
    wd = WeightDrop(nn.LSTM(4, 6, batch_first=True), p=0.5)
    plain = nn.LSTM(4, 6, batch_first=True)
    assert set(wd.state_dict()) == {f"module.{k}" for k in plain.state_dict()}
    # plain -> WeightDrop (unprefixed keys)
    wd.load_state_dict(plain.state_dict())
    for k, q in plain.state_dict().items():
        assert torch.equal(wd.module.state_dict()[k], q)
    # also via the submodule
    other = nn.LSTM(4, 6, batch_first=True)
    wd.module.load_state_dict(other.state_dict())
    assert torch.equal(wd.module.weight_hh_l0, other.weight_hh_l0)
    # WeightDrop -> plain
    fresh = nn.LSTM(4, 6, batch_first=True)
    fresh.load_state_dict(wd.plain_state_dict())
    x = _x()
    assert torch.equal(fresh(x)[0], wd.eval()(x)[0])
    # prefixed keys still load strictly; a wrong key is still an error
    wd.load_state_dict(copy.deepcopy(wd.state_dict()))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        wd.load_state_dict({**plain.state_dict(), "bogus": torch.zeros(1)})


def test_plain_checkpoint_loads_into_a_model_that_wraps_its_lstm():
    class Model(nn.Module):
        def __init__(self, wrap):
            super().__init__()
            lstm = nn.LSTM(4, 6, batch_first=True)
            self.rnn = WeightDrop(lstm, p=0.5) if wrap else lstm
            self.head = nn.Linear(6, 2)

    plain, wrapped = Model(False), Model(True)
    wrapped.load_state_dict(plain.state_dict())
    assert torch.equal(wrapped.rnn.module.weight_hh_l0, plain.rnn.weight_hh_l0)
    assert torch.equal(wrapped.head.weight, plain.head.weight)


def test_linear_and_sequential_names():
    lin = nn.Linear(8, 5)
    wd = WeightDrop(lin, "weight", p=0.5)
    x = torch.randn(3, 8)
    d = wd.dropped_weights(seed=4)["weight"]
    assert torch.equal(wd(x, seed=4), torch.nn.functional.linear(x, d, lin.bias))
    seq = WeightDrop(nn.Sequential(nn.Linear(8, 5), nn.Tanh()), ["0.weight"], p=0.5)
    assert seq(x).shape == (3, 5)


def test_deepcopy_pickle_and_torch_save():
    wd = WeightDrop(nn.GRU(4, 6, batch_first=True), p=0.25)
    x = _x()
    for clone in (copy.deepcopy(wd), pickle.loads(pickle.dumps(wd))):
        assert clone.p == 0.25 and clone.names == wd.names
        assert torch.equal(clone(x, seed=3)[0], wd(x, seed=3)[0])
        assert clone.module.weight_hh_l0 is not wd.module.weight_hh_l0
        clone.load_state_dict(nn.GRU(4, 6, batch_first=True).state_dict())  # hook survives
    buf = io.BytesIO()
    torch.save(wd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x, seed=3)[0], wd(x, seed=3)[0])


def test_rate_module_scheduler_and_repr():
    wd = WeightDrop(nn.LSTM(4, 6), p=0.5)
    assert isinstance(wd, RateModule)
    assert "names=('weight_hh_l0',), p=0.5" in repr(wd)
    RateScheduler(wd, lambda step: 0.1 * step).step()
    assert wd.p == pytest.approx(0.1)
    wd.p = 0.3
    assert "p=0.3" in repr(wd)
    with pytest.raises(ValueError, match=r"WeightDrop: `p` must be in \[0, 1\], got 2"):
        wd.p = 2


def test_tensor_rate_path_matches_float():
    lstm = nn.LSTM(4, 6, batch_first=True)
    wd = WeightDrop(lstm, p=0.4)
    x = _x()
    expected = wd(x, seed=9)[0]
    wd._rate = lambda: wd._p_tensor  # what forward passes under torch.compile
    assert torch.equal(wd(x, seed=9)[0], expected)


def test_bad_arguments():
    lstm = nn.LSTM(4, 6)
    with pytest.raises(ValueError, match=r"WeightDrop: 'weight_hh' is not a parameter of LSTM; "
                                         r"available: weight_ih_l0, weight_hh_l0, bias_ih_l0"):
        WeightDrop(lstm, "weight_hh")
    with pytest.raises(ValueError, match=r"'weight_hh_l1' is not a parameter"):
        WeightDrop(lstm, ("weight_hh_l0", "weight_hh_l1"))
    with pytest.raises(ValueError, match="WeightDrop: `names` must name at least one"):
        WeightDrop(lstm, ())
    with pytest.raises(ValueError, match="WeightDrop: `names` must not repeat"):
        WeightDrop(lstm, ("weight_hh_l0", "weight_hh_l0"))
    with pytest.raises(TypeError, match="WeightDrop: `names` must be strings, got int 3"):
        WeightDrop(lstm, (3,))
    with pytest.raises(TypeError, match=r"WeightDrop: `module` must be a torch\.nn\.Module, got "
                                        r"function"):
        WeightDrop(lambda x: x)
    with pytest.raises(ValueError, match=r"WeightDrop: `p` must be in \[0, 1\], got 1.5"):
        WeightDrop(lstm, p=1.5)
    with pytest.raises(TypeError, match="WeightDrop: `p` must be a real number"):
        WeightDrop(lstm, p="0.5")
    wd = WeightDrop(lstm)
    with pytest.raises(ValueError, match=r"WeightDrop: `seed` must be an int in \[0, 2\*\*64\)"):
        wd(torch.randn(2, 1, 4), seed=-1)
    with pytest.raises(TypeError, match="WeightDrop: `seed` must be an int"):
        wd.eval()(torch.randn(2, 1, 4), seed=1.5)


def test_no_warnings_and_no_flattening_side_effects():
    # filterwarnings=error makes any warning (e.g. "RNN module weights are not part of single
    # contiguous chunk") fail this test; check it explicitly as well.
    import warnings

    for cls in RNNS:
        wd = WeightDrop(cls(4, 6, num_layers=2, bidirectional=True, batch_first=True),
                        ("weight_hh_l0", "weight_hh_l1_reverse"), p=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = wd(_x())[0]
            out.sum().backward()
            wd.eval()(_x())
        assert caught == []
        assert out.shape == (3, 5, 12)
