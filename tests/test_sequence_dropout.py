"""LockedDropout (variational dropout) and EmbeddingDropout (word-type dropout)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import dropkit.functional as DF
from dropkit import rng
from dropkit.nn import RateModule, SpatialDropout1d, TimestepDropout
from dropkit.nn.sequence import EmbeddingDropout, LockedDropout
from dropkit.schedules import RateScheduler
from helpers import assert_keep_rate

# ---------------------------------------------------------------- LockedDropout


@given(n=st.integers(1, 4), t=st.integers(1, 6), feats=st.lists(st.integers(1, 4), min_size=1,
                                                                  max_size=2),
       batch_first=st.booleans(), p=st.floats(0.05, 0.95), seed=st.integers(0, 2**64 - 1))
def test_locked_mask_is_shared_over_time_and_matches_noise_shape(n, t, feats, batch_first, p,
                                                                 seed):
    shape = (n, t, *feats) if batch_first else (t, n, *feats)
    x = torch.rand(shape) + 0.5
    y = LockedDropout(p, batch_first=batch_first)(x, seed=seed)
    time_axis = 1 if batch_first else 0
    noise = list(shape)
    noise[time_axis] = 1
    assert torch.equal(y, DF.dropout(x, p, noise_shape=noise, seed=seed))
    keep = y != 0
    first = keep.narrow(time_axis, 0, 1)
    assert torch.equal(keep, first.expand_as(keep))


def test_locked_keep_rate_and_scale():
    p = 0.3
    x = torch.ones(64, 7, 128)
    y = LockedDropout(p)(x, seed=1)
    kept = y[:, 0] != 0
    assert_keep_rate(int(kept.sum()), kept.numel(), p)
    scale = torch.tensor(rng.inverted_scale(rng.threshold(p)), dtype=torch.float32)
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], scale))


def test_locked_equals_spatial_channels_last_and_differs_from_timestep():
    x = torch.ones(4, 9, 6)
    locked = LockedDropout(0.5)(x, seed=8)
    spatial = SpatialDropout1d(0.5, data_format="channels_last")(x, seed=8)
    assert torch.equal(locked, spatial)
    timestep = TimestepDropout(0.5)(x, seed=8)
    tk = timestep != 0
    assert torch.equal(tk, tk[..., :1].expand_as(tk))  # whole timesteps
    assert not torch.equal(tk, tk[:, :1].expand_as(tk))


def test_locked_eval_p0_grad_and_generator():
    m = LockedDropout(0.5)
    x = torch.randn(2, 3, 4, requires_grad=True)
    y = m(x, seed=3)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2)
    a = m(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, m(x, generator=torch.Generator().manual_seed(1)))
    assert m.eval()(x) is x
    assert LockedDropout(0.0)(x) is x


def test_locked_rank_error_repr_and_rate():
    with pytest.raises(ValueError, match=r"LockedDropout: expected an input \(N, T, \*features\) "
                                         r"of at least 3 dimensions \(batch_first=True\), got a "
                                         r"2D tensor of shape \(3, 4\)"):
        LockedDropout()(torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"expected an input \(T, N, \*features\)"):
        LockedDropout(batch_first=False)(torch.ones(4))
    with pytest.raises(TypeError, match="LockedDropout: `batch_first` must be a bool, got int 1"):
        LockedDropout(batch_first=1)
    with pytest.raises(ValueError, match=r"LockedDropout: `p` must be in \[0, 1\], got -0.1"):
        LockedDropout(-0.1)
    m = LockedDropout(0.25, batch_first=False)
    assert repr(m) == "LockedDropout(p=0.25, batch_first=False)"
    assert isinstance(m, RateModule)
    RateScheduler(m, lambda step: 0.5).step()
    assert m.p == 0.5
    x = torch.rand(5, 3, 4) + 1
    expected = m(x, seed=4)
    m._rate = lambda: m._p_tensor  # the path torch.compile takes
    assert torch.equal(m(x, seed=4), expected)


# ---------------------------------------------------------------- EmbeddingDropout


def _emb(v=50, d=4, **kwargs):
    emb = nn.Embedding(v, d, **kwargs)
    with torch.no_grad():
        emb.weight.add_(torch.sign(emb.weight) * 0.1)  # no (near-)zero entries
        if emb.padding_idx is not None:
            emb.weight[emb.padding_idx] = 0
    return emb


def test_same_token_same_sequence_same_decision():
    emb = _emb(v=20)
    m = EmbeddingDropout(emb, p=0.5)
    idx = torch.randint(0, 20, (16, 40))
    y = m(idx, seed=3)
    keep = (y != 0).all(-1)
    assert torch.equal(keep, (y != 0).any(-1))  # whole rows kept or dropped
    for n in range(idx.shape[0]):
        for tok in idx[n].unique():
            decisions = keep[n][idx[n] == tok]
            assert decisions.all() or not decisions.any()
    assert torch.equal(keep, m.keep(idx, seed=3))


def test_decisions_are_the_spec_field_over_sequences_and_vocabulary():
    v, n = 37, 5
    m = EmbeddingDropout(_emb(v=v), p=0.4)
    idx = torch.randint(0, v, (n, 23))
    field = torch.from_numpy(rng.keep_field((n, v), 0.4, 12345))
    assert torch.equal(m.keep(idx, seed=12345), field.gather(1, idx))
    # a 1-D input is one sequence
    assert torch.equal(m.keep(idx[0], seed=12345), field[0][idx[0]])


def test_same_token_in_different_sequences_is_independent_with_the_keep_rate():
    p, n = 0.3, 4000
    m = EmbeddingDropout(_emb(v=10), p=p)
    idx = torch.full((n, 3), 7)
    keep = m.keep(idx, seed=99)[:, 0]
    assert_keep_rate(int(keep.sum()), n, p)
    # word types of one sequence: independent decisions, same rate
    ids = torch.arange(10).repeat(n // 10, 1)
    keep2 = m.keep(ids, seed=5)
    assert_keep_rate(int(keep2.sum()), keep2.numel(), p)
    # adjacent sequences do not share a pattern
    assert not torch.equal(keep2[0], keep2[1]) or not torch.equal(keep2[1], keep2[2])


def test_scaling_eval_and_p_edges():
    emb = _emb()
    m = EmbeddingDropout(emb, p=0.25)
    idx = torch.randint(0, 50, (3, 8))
    plain = emb(idx)
    y = m(idx, seed=1)
    keep = m.keep(idx, seed=1)
    scale = torch.tensor(rng.inverted_scale(rng.threshold(0.25)), dtype=torch.float32)
    assert torch.equal(y[keep], plain[keep] * scale)
    assert (y[~keep] == 0).all()
    assert torch.equal(m.eval()(idx), plain)
    assert torch.equal(EmbeddingDropout(emb, p=0.0)(idx), plain)
    zero = EmbeddingDropout(emb, p=1.0)(idx)
    assert torch.equal(zero, torch.zeros_like(zero))


def test_gradient_reaches_only_kept_rows():
    emb = _emb(v=30)
    m = EmbeddingDropout(emb, p=0.5)
    idx = torch.tensor([[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]])
    keep = m.keep(idx, seed=21)
    m(idx, seed=21).sum().backward()
    scale = rng.inverted_scale(rng.threshold(0.5))
    for tok in range(30):
        occ = idx == tok
        expected = float((occ & keep).sum()) * scale
        assert torch.equal(emb.weight.grad[tok], torch.full((4,), expected)), tok


def test_padding_idx_max_norm_and_sparse_keep_working():
    emb = _emb(v=12, padding_idx=0)
    m = EmbeddingDropout(emb, p=0.5)
    idx = torch.tensor([[0, 3, 4, 0], [5, 0, 6, 7]])
    m(idx, seed=2).sum().backward()
    assert (m(idx, seed=2)[idx == 0] == 0).all()
    assert (emb.weight.grad[0] == 0).all()
    sparse = EmbeddingDropout(nn.Embedding(12, 3, sparse=True), p=0.5)
    sparse(idx, seed=2).sum().backward()
    assert sparse.embedding.weight.grad.is_sparse
    renorm = EmbeddingDropout(nn.Embedding(12, 3, max_norm=1.0), p=0.5)
    y = renorm.eval()(idx)
    assert (y.norm(dim=-1) <= 1.0 + 1e-6).all()


def test_embedding_dropout_state_copy_pickle_repr_and_rate():
    m = EmbeddingDropout(_emb(v=8, d=2), p=0.2)
    assert set(m.state_dict()) == {"embedding.weight"}
    assert list(m.parameters()) == [m.embedding.weight]
    assert repr(m) == "EmbeddingDropout(\n  p=0.2\n  (embedding): Embedding(8, 2)\n)"
    assert isinstance(m, RateModule)
    idx = torch.randint(0, 8, (3, 5))
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(clone(idx, seed=6), m(idx, seed=6))
    RateScheduler(m, lambda step: 0.6).step()
    assert m.p == 0.6
    expected = m(idx, seed=6)
    m._rate = lambda: m._p_tensor  # the path torch.compile takes
    assert torch.equal(m(idx, seed=6), expected)
    a = m(idx, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, m(idx, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0,), (0, 2, 3), (0, 0)])
def test_embedding_dropout_empty_input_matches_the_embedding(shape):
    m = EmbeddingDropout(nn.Embedding(10, 3), p=0.5)
    idx = torch.zeros(shape, dtype=torch.int64)
    expected = m.embedding(idx)
    for training in (True, False):
        m.train(training)
        y = m(idx, seed=1)
        assert y.shape == expected.shape == (*shape, 3)
        y.sum().backward()  # an empty gradient, no error
        assert m.keep(idx, seed=1).shape == shape
    m._rate = lambda: m._p_tensor  # the tensor-rate path torch.compile takes
    assert m.train()(idx, seed=1).shape == expected.shape


def test_embedding_dropout_errors():
    with pytest.raises(TypeError, match=r"EmbeddingDropout: `embedding` must be a "
                                        r"torch\.nn\.Embedding, got Linear"):
        EmbeddingDropout(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"EmbeddingDropout: `p` must be in \[0, 1\], got 3"):
        EmbeddingDropout(nn.Embedding(3, 2), p=3)
    m = EmbeddingDropout(nn.Embedding(3, 2))
    with pytest.raises(TypeError, match=r"EmbeddingDropout: `input` must be an integer tensor of "
                                        r"token ids, got torch\.float32"):
        m(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="EmbeddingDropout: expected token ids"):
        m(torch.tensor(1))
    with pytest.raises(ValueError, match=r"EmbeddingDropout: `seed` must be an int in"):
        m(torch.zeros(2, 2, dtype=torch.int64), seed=-1)
    with pytest.raises(ValueError, match=r"EmbeddingDropout: `seed` must be an int in"):
        m.eval()(torch.zeros(2, 2, dtype=torch.int64), seed=2**64)
    with pytest.raises(ValueError, match="EmbeddingDropout: pass either `seed` or `generator`"):
        m.keep(torch.zeros(2, 2, dtype=torch.int64), seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"EmbeddingDropout: `generator` must be a "
                                        r"torch\.Generator or None, got int"):
        m(torch.zeros(2, 2, dtype=torch.int64), generator=3)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_modules_match_eager_and_changing_p_does_not_recompile():
    from torch._dynamo.utils import counters

    from dropkit.nn.weight_drop import WeightDrop

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = EmbeddingDropout(nn.Embedding(20, 8), p=0.1)
            self.locked = LockedDropout(0.2)
            self.proj = WeightDrop(nn.Linear(8, 8), "weight", p=0.3)

        def forward(self, idx):
            return self.proj(self.locked(self.emb(idx)))

    model = Model()
    compiled = torch.compile(model, fullgraph=True)
    idx = torch.randint(0, 20, (3, 7))
    torch._dynamo.reset()
    counters.clear()
    for step in range(4):
        for module in (model.emb, model.locked, model.proj):
            module.p = 0.1 * step + 0.05
        torch.manual_seed(step)
        out = compiled(idx)
        torch.manual_seed(step)
        assert torch.equal(out, model(idx))
        out.sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
