"""dropkit.functional.scaled_dot_product_attention: torch's semantics, the written-out formula
with dropkit's dropout of the weights (mask bit-exact), DropKey, gradients, memory, compile,
export and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dropkit
import dropkit.functional as DF
from dropkit import _attention, rng

SDPA = DF.scaled_dot_product_attention


def _inputs(shape_q, s, ev=None, dtype=torch.float32, heads_kv=None, requires_grad=False):
    *batch, length, e = shape_q
    kv_batch = list(batch)
    if heads_kv is not None:
        kv_batch[-1] = heads_kv
    q = torch.randn(*batch, length, e, dtype=dtype)
    k = torch.randn(*kv_batch, s, e, dtype=dtype)
    v = torch.randn(*kv_batch, s, ev or e, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _logits(q, k, mask=None, causal=False, scale=None, gqa=False):
    if gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(-2, -1) * scale
    length, s = logits.shape[-2:]
    if causal:
        tril = torch.ones(length, s, dtype=torch.bool).tril()
        logits = logits.masked_fill(~tril, float("-inf"))
    if mask is not None and mask.dtype == torch.bool:
        logits = torch.where(mask, logits, float("-inf"))
    elif mask is not None:
        logits = logits + mask
    return logits


def written_out(q, k, v, mask=None, p=0.0, causal=False, scale=None, gqa=False, mode="probs",
                seed=None):
    """The formula of the issue: dropkit's dropout of softmax(logits) (probs), or the numpy
    reference keep field applied to the logits (key); empty rows give zeros."""
    logits = _logits(q, k, mask, causal, scale, gqa)
    if mode == "key" and p > 0:
        keep = torch.from_numpy(rng.keep_field(tuple(logits.shape), p, seed))
        logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)
    if mode == "probs" and p > 0:
        weights = DF.dropout(weights, p, seed=seed)
    if gqa:
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    return weights @ v


def _masks(b, h, length, s, dtype=torch.float32):
    bool_full = torch.rand(b, h, length, s) > 0.3
    bool_full[..., 0] = True
    padding = torch.ones(b, 1, 1, s, dtype=torch.bool)
    padding[0, ..., s // 2:] = False
    return {
        "none": (None, False),
        "bool": (bool_full, False),
        "bool-padding": (padding, False),
        "bool-2d": (torch.rand(length, s) > 0.2, False),
        "float": (torch.randn(b, h, length, s, dtype=dtype), False),
        "float-broadcast": (torch.randn(1, h, 1, s, dtype=dtype), False),
        "causal": (None, True),
    }


MASK_KINDS = list(_masks(1, 1, 2, 2))


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probs_mask_is_dropouts_mask_of_the_weights_bit_for_bit(backend, dtype):
    dropkit.set_backend(backend)
    q, k, _ = _inputs((2, 3, 7, 8), 11, dtype=dtype)
    eye = torch.eye(11, dtype=dtype).expand(2, 3, 11, 11)  # output = the dropped weights
    got = SDPA(q, k, eye, dropout_p=0.3, seed=42)
    ref = DF.dropout(torch.softmax(_logits(q, k), -1), 0.3, seed=42)
    assert torch.equal(got == 0, ref == 0)
    keep = torch.from_numpy(rng.keep_field((2, 3, 7, 11), 0.3, seed=42))
    assert torch.equal(got != 0, keep)  # the NumPy reference field of shape (..., L, S)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_same_mask_output_dtype(dtype):
    q, k, _ = _inputs((2, 2, 5, 8), 9, dtype=dtype)
    eye = torch.eye(9, dtype=dtype).expand(2, 2, 9, 9)
    got = SDPA(q, k, eye, dropout_p=0.25, seed=7)
    assert got.dtype == dtype
    assert torch.equal(got != 0, torch.from_numpy(rng.keep_field((2, 2, 5, 9), 0.25, seed=7)))
    ref = written_out(q.float(), k.float(), eye.float(), p=0.25, seed=7)
    torch.testing.assert_close(got.float(), ref, atol=1e-2, rtol=1e-2)
    bias = torch.randn(5, 9)  # a float32 mask with 16-bit inputs, as torch accepts
    got = SDPA(q, k, eye, bias, 0.25, seed=7)
    ref = written_out(q.float(), k.float(), eye.float(), bias, p=0.25, seed=7)
    torch.testing.assert_close(got.float(), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("mode", ["probs", "key"])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_matches_the_written_out_formula_for_every_mask(kind, mode):
    q, k, v = _inputs((2, 3, 6, 8), 10, ev=5)
    mask, causal = _masks(2, 3, 6, 10)[kind]
    got = SDPA(q, k, v, mask, 0.2, causal, dropout_mode=mode, seed=9)
    ref = written_out(q, k, v, mask, 0.2, causal, mode=mode, seed=9)
    torch.testing.assert_close(got, ref)


def test_causal_with_more_queries_than_keys_and_scale():
    q, k, v = _inputs((2, 9, 4), 5)
    got = SDPA(q, k, v, dropout_p=0.4, is_causal=True, scale=0.3, seed=1)
    torch.testing.assert_close(got, written_out(q, k, v, None, 0.4, True, 0.3, seed=1))


def test_key_mode_drops_logits_and_renormalises():
    q, k, _ = _inputs((2, 4, 6, 8), 4)
    eye = torch.eye(4).expand(2, 4, 4, 4)
    got = SDPA(q, k, eye, dropout_p=0.5, dropout_mode="key", seed=3)
    keep = torch.from_numpy(rng.keep_field((2, 4, 6, 4), 0.5, seed=3))
    assert torch.equal(got != 0, keep)
    alive = keep.any(-1)
    assert not alive.all()  # some row lost every key: zeros, not NaN
    torch.testing.assert_close(got.sum(-1)[alive], torch.ones(int(alive.sum())))
    assert torch.equal(got[~alive], torch.zeros_like(got[~alive]))


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_fully_masked_rows_and_p_one_give_zeros_with_zero_gradients(mode):
    q, k, v = _inputs((1, 2, 4, 8), 6, requires_grad=True)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False
    out = SDPA(q, k, v, mask, 0.3, dropout_mode=mode, seed=0)
    assert torch.equal(out[..., 2, :], torch.zeros(1, 2, 8))
    assert not out.isnan().any()
    torch.testing.assert_close(out, written_out(q, k, v, mask, 0.3, mode=mode, seed=0))
    out.sum().backward()
    assert torch.equal(q.grad[..., 2, :], torch.zeros(1, 2, 8))
    q.grad = None
    zero = SDPA(q, k, v, None, 1.0, dropout_mode=mode)
    assert torch.equal(zero, torch.zeros_like(zero))
    zero.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_grouped_query_attention(mode):
    q, k, v = _inputs((2, 6, 5, 8), 7, heads_kv=2)
    mask = torch.rand(2, 6, 5, 7) > 0.3
    got = SDPA(q, k, v, mask, 0.3, enable_gqa=True, dropout_mode=mode, seed=5)
    ref = written_out(q, k, v, mask, 0.3, gqa=True, mode=mode, seed=5)
    torch.testing.assert_close(got, ref)
    eye = torch.eye(7).expand(2, 2, 7, 7)
    weights = SDPA(q, k, eye, None, 0.3, enable_gqa=True, seed=5)  # field (2, 6, 5, 7)
    assert torch.equal(weights != 0, torch.from_numpy(rng.keep_field((2, 6, 5, 7), 0.3, 5)))
    torch.testing.assert_close(SDPA(q, k, v, enable_gqa=True),
                               F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


def test_batch_dimensions_broadcast_and_the_field_is_the_broadcast_weights():
    q = torch.randn(2, 3, 4, 8)
    k, v = torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)
    got = SDPA(q, k, v, dropout_p=0.3, seed=2)
    assert got.shape == (2, 3, 4, 8)
    torch.testing.assert_close(got, written_out(q, k, v, p=0.3, seed=2))


def test_memory_layout_does_not_change_the_result():
    q, k, v = (torch.randn(2, 9, 3, 8).transpose(1, 2) for _ in range(3))  # (B, L, H, E) views
    assert not q.is_contiguous()
    got = SDPA(q, k, v, dropout_p=0.3, seed=11)
    assert torch.equal(got, SDPA(q.contiguous(), k.contiguous(), v.contiguous(),
                                 dropout_p=0.3, seed=11))


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_backends_give_the_same_bits(mode):
    q, k, v = _inputs((2, 3, 9, 8), 13)
    mask = torch.rand(2, 1, 9, 13) > 0.2
    dropkit.set_backend("numba")
    a = SDPA(q, k, v, mask, 0.3, dropout_mode=mode, seed=8)
    dropkit.set_backend("torch")
    b = SDPA(q, k, v, mask, 0.3, dropout_mode=mode, seed=8)
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_blocks_of_query_rows_do_not_change_forward_or_backward(mode, monkeypatch):
    q, k, v = _inputs((2, 2, 13, 8), 11, requires_grad=True)
    mask = torch.randn(2, 1, 13, 11, requires_grad=True)

    def run():
        out = SDPA(q, k, v, mask, 0.3, dropout_mode=mode, seed=4)
        grads = torch.autograd.grad((out * torch.arange(8.0)).sum(), (q, k, v, mask))
        return out, grads

    whole = run()
    monkeypatch.setattr(_attention, "_BLOCK_ELEMENTS", 2 * 2 * 11 * 3)  # blocks of 3 rows
    blocked = run()
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-6)
    assert torch.equal(blocked[0] == 0, whole[0] == 0)


def test_zero_rate_is_torchs_sdpa_and_the_kernel_matches_it_within_tolerance():
    q, k, v = _inputs((2, 3, 6, 8), 10, ev=5)
    for kind, (mask, causal) in _masks(2, 3, 6, 10).items():
        expected = F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
        assert torch.equal(SDPA(q, k, v, mask, 0.0, causal), expected), kind
        key = torch.zeros(2, dtype=torch.int64)
        kernel, _ = _attention.attention(q, k, v, mask, key, 0, 1.0, 8**-0.5, causal, "probs")
        torch.testing.assert_close(kernel, expected, msg=kind)


@pytest.mark.parametrize("mode", ["probs", "key"])
@pytest.mark.parametrize("case", ["plain", "float-mask", "causal", "gqa", "bool-mask"])
def test_gradcheck_float64(case, mode):
    q, k, v = _inputs((1, 2, 4, 3), 5, ev=2, dtype=torch.float64, requires_grad=True,
                      heads_kv=1 if case == "gqa" else None)
    mask = None
    if case == "float-mask":
        mask = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    if case == "bool-mask":
        mask = torch.rand(1, 2, 4, 5) > 0.3
        mask[..., 0] = True

    def fn(q, k, v, *m):
        return SDPA(q, k, v, m[0] if m else mask, 0.3, case == "causal",
                    enable_gqa=case == "gqa", dropout_mode=mode, seed=6)

    args = (q, k, v) + ((mask,) if case == "float-mask" else ())
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


def _saved_bytes(fn, *args) -> tuple[int, int]:
    """(total bytes, largest tensor's numel) that autograd keeps for the call."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1],
                                                  lambda t: t):
        fn(*args)
    return sum(t.nbytes for t in saved), max(t.numel() for t in saved)


def test_autograd_keeps_no_l_by_s_tensor_and_less_than_torch():
    sizes = {}
    for length in (128, 256):
        q, k, v = _inputs((1, 2, length, 16), length, requires_grad=True)
        ours, largest = _saved_bytes(lambda *a: SDPA(*a, dropout_p=0.1, seed=0), q, k, v)
        theirs, _ = _saved_bytes(lambda *a: F.scaled_dot_product_attention(*a, dropout_p=0.1),
                                 q, k, v)
        assert largest < length * length  # no weights, no mask
        assert ours < theirs / 4
        sizes[length] = ours
    assert sizes[256] <= 2 * sizes[128] + 64  # O(L), not O(L * S)


def test_realised_rate_within_four_sigma():
    p = 0.15
    q, k, _ = _inputs((4, 4, 64, 8), 64)
    eye = torch.eye(64).expand(4, 4, 64, 64)
    dropped = (SDPA(q, k, eye, dropout_p=p) == 0).double().mean().item()
    n = 4 * 4 * 64 * 64
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_seed_generator_and_global_rng():
    q, k, v = _inputs((2, 4, 8), 8)
    torch.manual_seed(0)
    a = SDPA(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    assert torch.equal(a, SDPA(q, k, v, dropout_p=0.5))
    assert not torch.equal(a, SDPA(q, k, v, dropout_p=0.5))
    g = torch.Generator().manual_seed(3)
    b = SDPA(q, k, v, dropout_p=0.5, generator=g)
    assert torch.equal(b, SDPA(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_compile_fullgraph_matches_eager_forward_and_backward(mode):
    torch._dynamo.reset()
    q, k, v = _inputs((2, 2, 6, 8), 6, requires_grad=True)
    mask = torch.rand(2, 1, 6, 6) > 0.2

    def fn(q, k, v, mask):
        return SDPA(q, k, v, mask, 0.3, dropout_mode=mode, seed=12)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, mask)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    eager = fn(q, k, v, mask)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grads, torch.autograd.grad(eager.sum(), (q, k, v)))


class _Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return SDPA(q, k, v, dropout_p=0.1 if self.training else 0.0, is_causal=True)


def test_export_in_eval_has_no_random_op_and_matches_torch():
    q, k, v = _inputs((1, 2, 5, 8), 5)
    program = torch.export.export(_Attention().eval(), (q, k, v))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("dropkit" in t or "rand" in t or "dropout" in t for t in targets), targets
    torch.testing.assert_close(program.module()(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_train_export_keeps_the_dropkit_op():
    q, k, v = _inputs((1, 2, 5, 8), 5)
    program = torch.export.export(_Attention().train(), (q, k, v))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "dropkit.attention.default" in targets


_Q, _K, _V = torch.zeros(2, 3, 4, 8), torch.zeros(2, 3, 5, 8), torch.zeros(2, 3, 5, 6)
ERRORS = [
    ((_Q.numpy(), _K, _V), {}, TypeError, "`query` must be a torch.Tensor"),
    ((_Q.long(), _K, _V), {}, TypeError, "`query` must have dtype"),
    ((_Q, _K.double(), _V), {}, TypeError, "`key` must have the query's dtype"),
    ((_Q[0, 0, 0], _K, _V), {}, ValueError, "`query` must have at least 2 dimensions"),
    ((_Q, _K[..., :4], _V), {}, ValueError, "`key` must have the query's last dimension"),
    ((_Q, _K, _V[..., :4, :]), {}, ValueError, "`value` must have as many rows S"),
    ((_Q, _K[:, :2], _V[:, :2]), {}, ValueError, "do not broadcast"),
    ((_Q, _K, _V), {"attn_mask": torch.ones(4, 5, dtype=torch.int64)}, TypeError,
     "`attn_mask` must have dtype torch.bool, torch.float32 or the query's dtype"),
    ((_Q.double(), _K.double(), _V.double()), {"attn_mask": torch.ones(4, 5).half()}, TypeError,
     "`attn_mask` must have dtype"),
    ((_Q, _K, _V), {"attn_mask": torch.ones(4, 4)}, ValueError,
     "`attn_mask` must broadcast to the weights' shape"),
    ((_Q, _K, _V), {"attn_mask": torch.ones(3, 3, 4, 5)}, ValueError,
     "`attn_mask` must broadcast"),
    ((_Q, _K, _V), {"attn_mask": [1.0]}, TypeError, "`attn_mask` must be a torch.Tensor"),
    ((_Q, _K, _V), {"dropout_p": 1.5}, ValueError, "`dropout_p` must be in"),
    ((_Q, _K, _V), {"dropout_p": "0.1"}, TypeError, "`dropout_p` must be a real number"),
    ((_Q, _K, _V), {"dropout_mode": "weights"}, ValueError, "`dropout_mode` must be"),
    ((_Q, _K, _V), {"is_causal": 1}, TypeError, "`is_causal` must be a bool"),
    ((_Q, _K, _V), {"is_causal": True, "attn_mask": torch.ones(4, 5)}, ValueError,
     "not both"),
    ((_Q, _K, _V), {"scale": "big"}, TypeError, "`scale` must be a finite real number"),
    ((_Q, _K[:, :2], _V[:, :2]), {"enable_gqa": True}, ValueError, "multiple of the key's"),
    ((_Q, _K, _V), {"seed": -1}, ValueError, "seed"),
    ((_Q, _K, _V), {"generator": 3}, TypeError, "`generator` must be a torch.Generator"),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), ERRORS)
def test_errors_name_the_argument(args, kwargs, error, message):
    with pytest.raises(error, match=f"scaled_dot_product_attention: .*{message}"):
        SDPA(*args, **kwargs)


@pytest.mark.parametrize("mode", ["probs", "key"])
def test_opcheck(mode):
    q, k, v = _inputs((2, 2, 5, 4), 6, requires_grad=True)
    mask = torch.randn(2, 1, 5, 6, requires_grad=True)
    key = torch.tensor(rng.seed_to_key(3), dtype=torch.int64)
    t, keep_scale, _, _ = rng.affine_params("inverted", 0.3)
    args = (q, k, v, mask, key, t, keep_scale, 0.5, False, mode)
    torch.library.opcheck(torch.ops.dropkit.attention.default, args)
    out, lse = _attention.attention(*args)
    grad = torch.randn_like(out)
    back = (grad, q.detach(), k.detach(), v.detach(), mask.detach(), out.detach(), lse, key,
            t, keep_scale, 0.5, False, mode, True)
    torch.library.opcheck(torch.ops.dropkit.attention_backward.default, back,
                          test_utils=("test_schema", "test_faketensor"))
