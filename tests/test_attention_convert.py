"""dropkit.convert for attention layers: torch's nn.MultiheadAttention and timm's Attention.

timm is not installed here: ``TimmAttention`` below is a look-alike whose ``__module__`` and
``__qualname__`` are timm's (``timm.layers.attention.Attention``) and whose ``__init__`` and
``forward`` are copied from timm 1.0.31 (``timm/layers/attention.py``; ``use_fused_attn()``
replaced by an argument, ``resolve_self_attn_mask``/``maybe_add_mask`` inlined for the
``attn_mask=None, is_causal=False`` case).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
import dropkit.functional as DF
import dropkit.nn as dnn
from dropkit.schedules import Linear, RateScheduler


@pytest.fixture
def dropkit_weight_dropout(monkeypatch):
    """torch's own multi_head_attention_forward, its weight dropout dropkit's: the reference
    (``torch.nn.functional.dropout`` is looked up at call time in that module)."""
    monkeypatch.setattr(F, "dropout", lambda x, p=0.5, training=True, inplace=False:
                        DF.dropout(x, p, training, inplace))


def _inputs(batch_first: bool, kdim: int | None = None, vdim: int | None = None):
    g = torch.Generator().manual_seed(1)
    n, length, s, e = 3, 5, 7, 8
    shape = (lambda t, d: (n, t, d)) if batch_first else (lambda t, d: (t, n, d))
    q = torch.randn(shape(length, e), generator=g)
    k = torch.randn(shape(s, kdim or e), generator=g)
    v = torch.randn(shape(s, vdim or e), generator=g)
    return q, k, v


CONFIGS = [
    {},
    {"batch_first": True},
    {"kdim": 6, "vdim": 5},
    {"add_bias_kv": True},
    {"add_zero_attn": True, "batch_first": True},
    {"add_bias_kv": True, "add_zero_attn": True, "bias": False},
]


def _pair(config: dict, dropout: float = 0.25):
    torch.manual_seed(0)
    ours = dnn.MultiheadAttention(8, 2, dropout=dropout, **config)
    ref = nn.MultiheadAttention(8, 2, dropout=dropout, **config)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("config", CONFIGS)
def test_mha_eval_is_torchs_bit_for_bit(config):
    ours, ref = _pair(config)
    q, k, v = _inputs(config.get("batch_first", False), config.get("kdim"), config.get("vdim"))
    ours.eval(), ref.eval()
    for kwargs in ({}, {"need_weights": False}, {"average_attn_weights": False}):
        a, b = ours(q, k, v, **kwargs), ref(q, k, v, **kwargs)
        assert torch.equal(a[0], b[0])
        assert (a[1] is None and b[1] is None) or torch.equal(a[1], b[1])
    ours.train(), ref.train()
    ours.dropout = ref.dropout = 0.0  # dropout 0 in training: torch's forward too
    assert torch.equal(ours(q, k, v)[0], ref(q, k, v)[0])


def _masks(batch_first: bool, q, k):
    n = q.shape[0] if batch_first else q.shape[1]
    length, s = (q.shape[1], k.shape[1]) if batch_first else (q.shape[0], k.shape[0])
    padding = torch.zeros(n, s, dtype=torch.bool)
    padding[0, -2:] = True
    causal = torch.zeros(length, s).masked_fill(  # the mask is_causal stands for (top-left)
        torch.ones(length, s, dtype=torch.bool).triu(1), float("-inf"))
    return [{}, {"key_padding_mask": padding},
            {"attn_mask": torch.rand(length, s) > 0.2},
            {"attn_mask": torch.randn(n * 2, length, s),
             "key_padding_mask": torch.zeros(n, s).masked_fill(padding, float("-inf"))},
            {"attn_mask": causal, "is_causal": True}]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_training_drops_dropkits_mask_of_the_weights(config, need_weights,
                                                         dropkit_weight_dropout):
    """Same outputs as torch's forward with dropkit's dropout of the (N * H, L, S) weights, the
    same dropped positions in the returned weights."""
    ours, ref = _pair(config)
    bf = config.get("batch_first", False)
    q, k, v = _inputs(bf, config.get("kdim"), config.get("vdim"))
    for masks in _masks(bf, q, k):
        if masks.get("is_causal") and (config.get("add_bias_kv") or config.get("add_zero_attn")):
            continue  # the added key column makes the hint false (torch's SDPA path ignores it)
        for avg in (True, False):
            torch.manual_seed(5)
            out, w = ours(q, k, v, need_weights=need_weights, average_attn_weights=avg, **masks)
            torch.manual_seed(5)
            ref_out, ref_w = nn.MultiheadAttention.forward(
                ref, q, k, v, need_weights=True, average_attn_weights=avg, **masks)
            torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5, msg=str(masks))
            if need_weights:
                assert torch.equal(w == 0, ref_w == 0)
                torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
            else:
                assert w is None


def test_mha_training_is_not_torchs_mask_and_backward_runs():
    ours, ref = _pair({"batch_first": True}, dropout=0.5)
    q, _, _ = _inputs(True)
    q.requires_grad_(True)
    torch.manual_seed(5)
    out = ours(q, q, q, need_weights=False)[0]
    torch.manual_seed(5)
    assert not torch.allclose(out, ref(q, q, q, need_weights=False)[0])  # torch's own mask
    out.sum().backward()
    assert ours.in_proj_weight.grad is not None and torch.isfinite(q.grad).all()


def test_mha_unbatched_and_errors():
    ours, _ = _pair({})
    x = torch.randn(5, 8)
    torch.manual_seed(2)
    out, w = ours(x, x, x)
    assert out.shape == (5, 8) and w.shape == (5, 5)
    with pytest.raises(RuntimeError, match="is_causal=True"):
        ours(x, x, x, is_causal=True)
    with pytest.raises(RuntimeError, match="attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(4, 5))


def test_convert_swaps_mha_keeping_parameters_state_dict_and_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, dropout=0.1))
    params = dict(model.named_parameters())
    state = copy.deepcopy(model.state_dict())
    calls = []
    model[1].register_forward_hook(lambda *a: calls.append(1))
    report = dropkit.convert(model)
    assert type(model[1]) is dnn.MultiheadAttention
    [record] = report.converted
    assert (record.name, record.source, record.target) == (
        "1", "torch.nn.MultiheadAttention", "dropkit.nn.MultiheadAttention")
    assert record.source_settings["dropout"] == 0.1 and record.notes
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in
                                                                params.items()}
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())
    x = torch.randn(4, 2, 8)
    model[1](x, x, x)
    assert calls == [1]
    assert len(dropkit.convert(model)) == 0 and not dropkit.convert(model).skipped  # once only

    class Mine(nn.MultiheadAttention):
        pass

    [skip] = dropkit.convert(nn.Sequential(Mine(8, 2))).skipped
    assert "subclass of torch.nn.MultiheadAttention" in skip.reason


def test_converted_transformer_encoder_layer_eval_equal_and_trains():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
    ref = copy.deepcopy(layer)
    report = dropkit.convert(layer)
    assert {r.target for r in report.converted} == {"dropkit.nn.MultiheadAttention",
                                                     "dropkit.nn.Dropout"}
    x = torch.randn(2, 6, 16)
    with torch.no_grad():  # eval: torch's forward (and its fast path), bit for bit
        assert torch.equal(layer.eval()(x), ref.eval()(x))
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.self_attn.in_proj_weight.detach().clone()
    loss = layer(x, src_key_padding_mask=torch.zeros(2, 6, dtype=torch.bool)).square().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, layer.self_attn.in_proj_weight)


def _graph_ops(model, *args):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    torch._dynamo.reset()
    out = torch.compile(model, backend=backend, fullgraph=True)(*args)
    return out, graphs


def test_mha_compiles_fullgraph_with_dropkits_attention():
    ours, _ = _pair({"batch_first": True})
    q, k, v = _inputs(True)
    out, graphs = _graph_ops(lambda q, k, v: ours(q, k, v, need_weights=False)[0], q, k, v)
    assert out.shape == q.shape and len(graphs) == 1 and "dropkit.attention" in graphs[0]


# ---------------------------------------------------------------------------------------------
# timm look-alike (timm 1.0.31, timm/layers/attention.py)


@pytest.fixture
def timm_cls():
    class Attention(nn.Module):
        def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0,
                     fused_attn=True):
            super().__init__()
            head_dim = dim // num_heads
            self.num_heads = num_heads
            self.head_dim = head_dim
            self.attn_dim = num_heads * head_dim
            self.scale = head_dim ** -0.5
            self.fused_attn = fused_attn
            self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()
            self.attn_drop = nn.Dropout(attn_drop)
            self.norm = nn.Identity()
            self.gate = None
            self.proj = nn.Linear(self.attn_dim, dim)
            self.proj_drop = nn.Dropout(proj_drop)

        def forward(self, x, attn_mask=None, is_causal=False):
            B, N, _C = x.shape
            gate = self.gate(x).sigmoid() if self.gate is not None else None
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(
                2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            if self.fused_attn:
                x = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask,
                    dropout_p=self.attn_drop.p if self.training else 0., is_causal=is_causal)
            else:
                q = q * self.scale
                attn = q @ k.transpose(-2, -1)
                attn = attn.softmax(dim=-1)
                attn = self.attn_drop(attn)
                x = attn @ v
            x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
            x = self.norm(x)
            if gate is not None:
                x = x * gate
            x = self.proj(x)
            x = self.proj_drop(x)
            return x

    Attention.__module__, Attention.__qualname__ = "timm.layers.attention", "Attention"
    return Attention


@pytest.mark.parametrize("fused", [True, False])
def test_timm_attention_converted_uses_dropkits_weight_dropout(timm_cls, fused):
    torch.manual_seed(0)
    block = nn.Sequential(timm_cls(16, 4, qkv_bias=True, attn_drop=0.3, fused_attn=fused))
    ref = copy.deepcopy(block)
    report = dropkit.convert(block)
    attn = block[0]
    assert type(attn).__name__ == "TimmAttention" and isinstance(attn, timm_cls)
    rec = {r.name: r for r in report.converted}
    assert rec["0"].source == "timm.layers.attention.Attention"
    assert rec["0"].target == "dropkit.nn.TimmAttention"
    assert rec["0"].source_settings["attn_drop"] == 0.3
    assert type(attn.attn_drop) is dnn.Dropout
    assert list(block.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 6, 16)
    assert torch.equal(block.eval()(x), ref.eval()(x))  # eval: timm's forward
    # Reference: timm's written-out path with dropkit's dropout of the (B, H, N, N) weights.
    ref[0].fused_attn = False
    ref[0].attn_drop = dnn.Dropout(0.3)
    block.train(), ref.train()
    torch.manual_seed(3)
    out = block(x)
    torch.manual_seed(3)
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    # Deep copies and pickles keep the class (unpickling finds it in dropkit.nn.attention).
    assert type(copy.deepcopy(block)[0]) is type(attn)
    assert type(pickle.loads(pickle.dumps(block))[0]) is type(attn)


def test_timm_attention_skips_unknown_shapes(timm_cls):
    m = timm_cls(16, 4)
    del m.qkv
    [skip] = dropkit.convert(nn.Sequential(m)).skipped
    assert "qkv" in skip.reason


def _unique_graphs(model, steps=3):
    from torch._dynamo.utils import counters

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    sched = RateScheduler(model, Linear(0.1, 0.5, steps=steps))
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 6, 16)
    for _ in range(steps):
        compiled(x).sum().backward()
        sched.step()
    return counters["stats"]["unique_graphs"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_timm_attention_rate_schedule_does_not_recompile(timm_cls):
    torch.manual_seed(0)
    model = nn.Sequential(timm_cls(16, 4, attn_drop=0.1), nn.Linear(16, 16))
    plain = copy.deepcopy(model)
    dropkit.convert(plain, exclude="0")  # attn_drop a dropkit Dropout, timm's forward reads p
    assert type(plain[0].attn_drop) is dnn.Dropout
    assert _unique_graphs(plain.train()) > 1  # the problem: the float p recompiles
    dropkit.convert(model)
    assert _unique_graphs(model.train()) == 1


# ---------------------------------------------------------------------------------------------
# A 0-dim tensor dropout_p (what the converted timm Attention passes while compiling)


def _permuted(shape):  # q, k, v as timm makes them: views of one (B, N, 3, H, E) projection
    b, h, n, e = shape
    qkv = torch.randn(b, n, 3, h, e, dtype=torch.float64).permute(2, 0, 3, 1, 4)
    return [t.requires_grad_(True) for t in (x.detach() for x in qkv.unbind(0))]


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_attention_rate_opcheck_with_permuted_inputs(mode):
    from dropkit import _attention, rng

    q, k, v = _permuted((2, 2, 5, 4))
    key = torch.tensor(rng.seed_to_key(3), dtype=torch.int64)
    p = torch.tensor(0.3, dtype=torch.float64)
    args = (q, k, v, None, key, p, 0.5, False, mode)
    torch.library.opcheck(torch.ops.dropkit.attention_rate.default, args)
    out, lse = _attention.attention_rate(*args)
    back = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), None, out.detach(), lse,
            key, p, 0.5, False, mode, False)
    for op in (torch.ops.dropkit.attention_rate_backward.default,
               torch.ops.dropkit.attention_backward.default):
        if op is torch.ops.dropkit.attention_backward.default:
            t, keep_scale, _, _ = rng.affine_params("inverted", 0.3)
            back = (*back[:8], t, keep_scale, *back[9:])
        torch.library.opcheck(op, back, test_utils=("test_schema", "test_faketensor"))
        # the fake's strides are the real ones (inductor asserts them)
        with torch._subclasses.FakeTensorMode() as mode_:
            fake = op(*(mode_.from_tensor(a) if isinstance(a, torch.Tensor) else a
                        for a in back))
        real = op(*back)
        assert [f.stride() for f in fake] == [r.stride() for r in real]


def test_tensor_dropout_p_eager_equals_float_and_compiled_follows_it():
    from torch._dynamo.testing import CompileCounter

    q, k, v = _permuted((2, 3, 5, 4))
    p = torch.tensor(0.3, dtype=torch.float64)
    same = DF.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1)
    assert torch.equal(same, DF.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=1))
    with pytest.raises(ValueError, match="scaled_dot_product_attention: `p` must be in"):
        DF.scaled_dot_product_attention(q, k, v, dropout_p=torch.tensor(1.5), seed=1)
    with pytest.raises(TypeError, match="scaled_dot_product_attention: `dropout_p` must be"):
        DF.scaled_dot_product_attention(q, k, v, dropout_p=torch.tensor([0.1]), seed=1)
    torch._dynamo.reset()
    counter = CompileCounter()
    f = torch.compile(lambda q, k, v, p: DF.scaled_dot_product_attention(
        q, k, v, dropout_p=p, seed=1), backend=counter, fullgraph=True)
    for rate in (0.3, 0.6, 0.0, 1.0):
        p.fill_(rate)
        out = f(q, k, v, p)
        ref = DF.scaled_dot_product_attention(q, k, v, dropout_p=rate, seed=1)
        assert torch.equal(out == 0, ref == 0)
        torch.testing.assert_close(out, ref)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        torch.testing.assert_close(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)))
    assert counter.frame_count == 1
