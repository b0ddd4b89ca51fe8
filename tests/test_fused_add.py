"""The fused residual adds equal the unfused dropkit expressions bit for bit.

``bias_dropout_add(x, b, r, p, seed=s)`` is defined as ``r + dropout(x + b, p, seed=s)`` and
``drop_path_add(x, r, p, seed=s)`` as ``r + drop_path(x, p, seed=s)``: outputs and gradients are
compared with those expressions (and their autograd) bit for bit, on the CPU composition and on
the Triton kernels (compiled on a GPU, else in Triton's CPU interpreter on CPU tensors).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import dropkit.functional as DF
import dropkit.numpy as dnp
from dropkit import _fused_add, _ops, rng
from helpers import TRITON_DEVICE, same_bits

DEVICE = TRITON_DEVICE
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SHAPE = (3, 4, 16)
BIAS_SHAPES = [None, (16,), (4, 16), (3, 1, 1), SHAPE]


def _data(shape, dtype, seed=0, device="cpu", special=True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 4).to(dtype)
    if special and x.numel() >= 5:
        flat = x.view(-1)
        flat[:5] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    return x.to(device)


def _operands(dtype, bias_shape, device="cpu", special=True):
    x = _data(SHAPE, dtype, 1, device, special)
    r = _data(SHAPE, dtype, 2, device, special)
    b = None if bias_shape is None else _data(bias_shape, dtype, 3, device, special=False)
    return x, b, r


def _unfused_bda(x, b, r, p, training=True, **kw):
    return r + DF.dropout(x if b is None else x + b, p, training, **kw)


def _unfused_dpa(x, r, p, training=True, **kw):
    return r + DF.drop_path(x, p, training, **kw)


def _rates(p):
    return [p, torch.tensor(p, dtype=torch.float64)]


# --- forward: bit identity with the unfused expression (CPU composition) ------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_shape", BIAS_SHAPES, ids=str)
def test_bias_dropout_add_equals_unfused(dtype, bias_shape):
    x, b, r = _operands(dtype, bias_shape)
    for p in [*_rates(0.3), *_rates(0.0), *_rates(1.0), torch.tensor(0.7, dtype=torch.float32)]:
        for training in (True, False):
            got = DF.bias_dropout_add(x, b, r, p, training, seed=99)
            want = _unfused_bda(x, b, r, p, training, seed=99)
            assert same_bits(got, want), (p, training)
    # p = 1: residual + 0, whatever x holds (x has inf and NaN)
    assert same_bits(DF.bias_dropout_add(x, b, r, 1.0), r + torch.zeros_like(r))


def test_bias_dropout_add_draws_the_same_seed_as_dropout():
    x, b, r = _operands(torch.float32, (16,))
    for p in (0.4, torch.tensor(0.4), torch.tensor(0.0)):
        torch.manual_seed(5)
        got = DF.bias_dropout_add(x, b, r, p)
        after = torch.get_rng_state()
        torch.manual_seed(5)
        want = _unfused_bda(x, b, r, p)
        assert same_bits(got, want)
        assert torch.equal(after, torch.get_rng_state())  # the same draws
        gen_a, gen_b = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
        assert same_bits(DF.bias_dropout_add(x, b, r, p, generator=gen_a),
                          _unfused_bda(x, b, r, p, generator=gen_b))
    for p in (0.0, 1.0):  # a float p_eff of 0 or 1 draws nothing, as dropout
        state = torch.get_rng_state()
        DF.bias_dropout_add(x, b, r, p)
        assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_add_equals_unfused(dtype, mode, scale_by_keep):
    x, _, r = _operands(dtype, None)
    kw = dict(mode=mode, scale_by_keep=scale_by_keep)
    for p in [*_rates(0.5), *_rates(0.0), *_rates(1.0)]:
        for training in (True, False):
            for seed in range(3):  # "batch" mode: kept and dropped batches
                got = DF.drop_path_add(x, r, p, training, seed=seed, **kw)
                want = _unfused_dpa(x, r, p, training, seed=seed, **kw)
                assert same_bits(got, want), (p, training, seed)
    torch.manual_seed(3)
    got = DF.drop_path_add(x, r, 0.5, **kw)
    torch.manual_seed(3)
    assert same_bits(got, _unfused_dpa(x, r, 0.5, **kw))


def test_empty_and_non_contiguous_inputs():
    x, b, r = (torch.empty(0, 16), torch.ones(16), torch.empty(0, 16))
    assert DF.bias_dropout_add(x, b, r, 0.5).shape == (0, 16)
    assert DF.drop_path_add(x, r, 0.5).shape == (0, 16)
    x = _data((16, 6), torch.float32, 1).t()
    r = _data((16, 6), torch.float32, 2).t()
    b = _data((16,), torch.float32, 3)
    assert same_bits(DF.bias_dropout_add(x, b, r, 0.3, seed=4), _unfused_bda(x, b, r, 0.3, seed=4))
    assert same_bits(DF.drop_path_add(x, r, 0.3, seed=4), _unfused_dpa(x, r, 0.3, seed=4))


# --- gradients ----------------------------------------------------------------------------------


def _grads(fn, tensors, grad_out):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    wanted = [t for t in leaves if t is not None]
    return out, torch.autograd.grad(out, wanted, grad_out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_shape", BIAS_SHAPES, ids=str)
def test_bias_dropout_add_gradients_equal_unfused(dtype, bias_shape):
    x, b, r = _operands(dtype, bias_shape, special=False)
    grad_out = _data(SHAPE, dtype, 4, special=False)
    for p in [*_rates(0.3), 1.0]:
        operands = (x, b, r)
        out, got = _grads(lambda x, b, r, p=p: DF.bias_dropout_add(x, b, r, p, seed=7), operands,
                          grad_out)
        ref, want = _grads(lambda x, b, r, p=p: _unfused_bda(x, b, r, p, seed=7), operands,
                           grad_out)
        assert same_bits(out, ref)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert same_bits(g, w), p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_drop_path_add_gradients_equal_unfused(dtype, mode):
    x, _, r = _operands(dtype, None, special=False)
    grad_out = _data(SHAPE, dtype, 4, special=False)
    for p, scale_by_keep in [(0.5, True), (torch.tensor(0.5), False), (1.0, True)]:
        kw = dict(mode=mode, scale_by_keep=scale_by_keep, seed=1)
        out, got = _grads(lambda x, r, p=p, kw=kw: DF.drop_path_add(x, r, p, **kw), (x, r),
                          grad_out)
        ref, want = _grads(lambda x, r, p=p, kw=kw: _unfused_dpa(x, r, p, **kw), (x, r),
                           grad_out)
        assert same_bits(out, ref)
        for g, w in zip(got, want, strict=True):
            assert same_bits(g, w)


def test_gradcheck_float64():
    x, b, r = (_data(s, torch.float64, i, special=False).requires_grad_()
               for i, s in enumerate([(4, 8), (8,), (4, 8)]))
    for p in (0.4, torch.tensor(0.4, dtype=torch.float64)):

        def bda(x, b, r, p=p):
            return DF.bias_dropout_add(x, b, r, p, seed=3)

        def dpa(x, r, p=p):
            return DF.drop_path_add(x, r, p, seed=3)

        assert torch.autograd.gradcheck(bda, (x, b, r))
        assert torch.autograd.gradgradcheck(bda, (x, b, r))
        assert torch.autograd.gradcheck(lambda x, r, p=p: bda(x, None, r, p), (x, r))
        assert torch.autograd.gradcheck(dpa, (x, r))
        assert torch.autograd.gradgradcheck(dpa, (x, r))


def test_only_the_key_is_saved_for_backward():
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    x, b, r = (_data(s, torch.float32, i, special=False).requires_grad_()
               for i, s in enumerate([(64, 32), (32,), (64, 32)]))
    calls = [lambda: DF.bias_dropout_add(x, b, r, 0.3, seed=1),
             lambda: DF.bias_dropout_add(x, None, r, 0.3, seed=1),
             lambda: DF.drop_path_add(x, r, 0.3, seed=1)]
    for call in calls:
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            call().sum().backward()
        assert saved == [16], saved  # the 2-word int64 key, no mask, nothing input-sized
    # with a tensor rate, the 0-dim rate too (as dropout's rate op)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        DF.bias_dropout_add(x, b, r, torch.tensor(0.3), seed=1).sum().backward()
    assert sorted(saved) == [4, 16], saved


# --- torch.compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    x, b, r = _operands(torch.float32, (16,), special=False)

    def block(x, b, r, p):
        h = DF.bias_dropout_add(x, b, r, p, seed=11)
        return DF.drop_path_add(h, r, p, seed=12)

    compiled = torch.compile(block, backend=backend, fullgraph=True)
    for p in (0.3, torch.tensor(0.3), torch.tensor(0.6)):
        leaves = [t.detach().requires_grad_() for t in (x, b, r)]
        out = compiled(*leaves, p)
        got = torch.autograd.grad(out.square().sum(), leaves)
        ref_leaves = [t.detach().requires_grad_() for t in (x, b, r)]
        ref = block(*ref_leaves, p)
        want = torch.autograd.grad(ref.square().sum(), ref_leaves)
        assert torch.equal(out, ref)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    # without a seed: the same torch.manual_seed gives the same masks as eager
    drawn = torch.compile(lambda x, b, r: DF.drop_path_add(DF.bias_dropout_add(x, b, r, 0.5), r,
                                                            0.5), backend=backend, fullgraph=True)
    torch.manual_seed(3)
    out = drawn(x, b, r)
    torch.manual_seed(3)
    assert torch.equal(out, DF.drop_path_add(DF.bias_dropout_add(x, b, r, 0.5), r, 0.5))
    torch._dynamo.reset()


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda x, b, r: DF.bias_dropout_add(x, b, r[:2], 0.1), ValueError,
     r"bias_dropout_add: `residual` must have the shape of `x` \(3, 4, 16\), got \(2, 4, 16\)"),
    (lambda x, b, r: DF.bias_dropout_add(x, torch.ones(8), r, 0.1), ValueError,
     r"bias_dropout_add: `bias` of shape \(8,\) does not broadcast to the shape of `x`"),
    (lambda x, b, r: DF.bias_dropout_add(x, torch.ones(1, 3, 4, 16), r, 0.1), ValueError,
     r"`bias` of shape \(1, 3, 4, 16\) does not broadcast"),
    (lambda x, b, r: DF.bias_dropout_add(x, b.double(), r, 0.1), TypeError,
     r"bias_dropout_add: `bias` must have the dtype of `x` \(torch.float32\), got torch.float64"),
    (lambda x, b, r: DF.bias_dropout_add(x, b, r.half(), 0.1), TypeError,
     r"`residual` must have the dtype of `x` \(torch.float32\), got torch.float16"),
    (lambda x, b, r: DF.bias_dropout_add(x, [1.0], r, 0.1), TypeError,
     r"bias_dropout_add: `bias` must be a torch.Tensor, got list"),
    (lambda x, b, r: DF.bias_dropout_add(x, b, r.to("meta"), 0.1), ValueError,
     r"`residual` must be on the device of `x` \(cpu\), got meta"),
    (lambda x, b, r: DF.bias_dropout_add(x.numpy(), b, r, 0.1), TypeError,
     r"bias_dropout_add: `x` must be a torch.Tensor, got ndarray"),
    (lambda x, b, r: DF.bias_dropout_add(x, b, r, 1.5), ValueError,
     r"bias_dropout_add: `p` must be in \[0, 1\]"),
    (lambda x, b, r: DF.drop_path_add(x, r.transpose(0, 2), 0.1), ValueError,
     r"drop_path_add: `residual` must have the shape of `x` \(3, 4, 16\), got \(16, 4, 3\)"),
    (lambda x, b, r: DF.drop_path_add(x, r.double(), 0.1), TypeError,
     r"drop_path_add: `residual` must have the dtype of `x`"),
    (lambda x, b, r: DF.drop_path_add(x, r, 0.1, mode="col"), ValueError,
     r"drop_path_add: `mode` must be 'row' or 'batch'"),
    (lambda x, b, r: DF.drop_path_add(x, r, 0.1, scale_by_keep=1), TypeError,
     r"drop_path_add: `scale_by_keep` must be a bool"),
    (lambda x, b, r: DF.drop_path_add(x[0, 0, 0], r[0, 0, 0], 0.1), ValueError,
     r"drop_path_add: expected an `x` \(N, \*\) with a batch dimension"),
])
def test_validation_messages(call, error, message):
    x, b, r = _operands(torch.float32, (16,))
    with pytest.raises(error, match=message):
        call(x, b, r)


def test_numpy_validation_messages():
    x, r = np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"`residual` must have the shape of `x` \(2, 3\)"):
        dnp.bias_dropout_add(x, None, r[:1], 0.1)
    with pytest.raises(ValueError, match=r"`bias` of shape \(2,\) does not broadcast"):
        dnp.bias_dropout_add(x, np.ones(2, np.float32), r, 0.1)
    with pytest.raises(TypeError, match=r"`bias` must have the dtype of `x` \(float32\)"):
        dnp.bias_dropout_add(x, np.ones(3), r, 0.1)
    with pytest.raises(TypeError, match=r"`residual` must be a numpy.ndarray, got Tensor"):
        dnp.drop_path_add(x, torch.ones(2, 3), 0.1)


# --- the NumPy mirror ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_numpy_mirror_equals_torch(dtype):
    for bias_shape in BIAS_SHAPES:
        x, b, r = _operands(dtype, bias_shape)
        nb = None if b is None else b.numpy()
        for p, training in [(0.3, True), (0.0, True), (1.0, True), (0.3, False)]:
            got = dnp.bias_dropout_add(x.numpy(), nb, r.numpy(), p, training, seed=21)
            want = DF.bias_dropout_add(x, b, r, p, training, seed=21)
            assert same_bits(torch.from_numpy(got), want), (bias_shape, p, training)
    x, _, r = _operands(dtype, None)
    for mode in ("row", "batch"):
        for scale_by_keep in (True, False):
            for p, training in [(0.5, True), (1.0, True), (0.5, False)]:
                kw = dict(mode=mode, scale_by_keep=scale_by_keep, seed=2)
                got = dnp.drop_path_add(x.numpy(), r.numpy(), p, training, **kw)
                want = DF.drop_path_add(x, r, p, training, **kw)
                assert same_bits(torch.from_numpy(got), want)


# --- Triton kernels (GPU, or the interpreter on CPU tensors) ------------------------------------


@pytest.fixture(scope="module")
def triton_add():
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    return importlib.import_module("dropkit.kernels.triton_fused_add")


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(params=[False, True], ids=["int32-index", "int64-index"])
def wide(request, triton_add, monkeypatch):
    """Also run the kernels' 64-bit index path (used beyond 2**31 elements) on small tensors."""
    if request.param:
        monkeypatch.setattr(triton_add, "_INT32_MAX", 0)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_triton_bias_dropout_add_matches_composition(triton_add, dtype, wide):
    for bias_shape in BIAS_SHAPES:
        x, b, r = _operands(dtype, bias_shape, DEVICE)
        for p in (0.3, 1.0):
            t, scale, _, _ = rng.affine_params("inverted", p)
            got = triton_add.bias_dropout_add(x, b, r, rng.seed_to_key(99), t, scale)
            want = _unfused_bda(x.cpu(), None if b is None else b.cpu(), r.cpu(), p, seed=99)
            assert same_bits(got.cpu(), want, any_nan=True), (bias_shape, p)
    assert triton_add.bias_dropout_add(x.double(), None, r.double(), (1, 2), 0, 1.0) is None


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("programs", [1, 2, 64])
def test_triton_bias_gradient_matches_composition(triton_add, dtype, programs, monkeypatch):
    monkeypatch.setattr(triton_add, "_MAX_ROW_PROGRAMS", programs)  # 1, 2: loops over tiles
    shape = (70, 3, 24)  # 210 rows: 7 row tiles; 3 * 24 = 72 columns: 2 column tiles
    grad = _data(shape, dtype, 5, DEVICE, special=False)
    key = rng.seed_to_key(123)
    t, scale, _, _ = rng.affine_params("inverted", 0.4)
    for bias_shape in [(24,), (3, 24), (1, 3, 24)]:
        got_x, got_b = triton_add.bias_dropout_add_backward(grad, key, t, scale, bias_shape)
        want_x = _ops.masked_affine(grad.cpu(), torch.tensor(key), t, list(shape), scale, 0, 0)
        assert same_bits(got_x.cpu(), want_x)
        assert got_b.shape == bias_shape and got_b.dtype == dtype
        # d bias: float32 partial sums in another order than torch's sum; compare to float64
        exact = want_x.double().sum_to_size(bias_shape)
        tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(got_b.cpu().double(), exact, rtol=tol, atol=tol)
    backward = triton_add.bias_dropout_add_backward
    assert backward(grad[..., :5].contiguous(), key, t, scale, (5,)) is None  # width % 8 != 0
    assert backward(grad, key, t, scale, shape) is None  # a full-shape bias: d bias is d x
    assert backward(grad, key, t, scale, (70, 1, 1)) is None  # not a suffix of the shape
    assert backward(grad.double(), key, t, scale, (24,)) is None


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_triton_drop_path_add_matches_composition(triton_add, dtype, wide):
    x, _, r = _operands(dtype, None, DEVICE)
    for noise_shape, mode in [((3, 1, 1), "row"), ((1, 1, 1), "batch")]:
        for p, seed in [(0.5, 0), (0.5, 1), (0.5, 2), (1.0, 0)]:
            t, scale, _, _ = rng.affine_params("inverted", p)
            got = triton_add.drop_path_add(x, r, rng.seed_to_key(seed), t, scale, noise_shape)
            want = _unfused_dpa(x.cpu(), r.cpu(), p, mode=mode, seed=seed)
            assert same_bits(got.cpu(), want, any_nan=True), (mode, p, seed)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_ops_through_triton_match_unfused_with_gradients(triton_add, dtype, monkeypatch):
    """The custom ops with the Triton path forced (CPU tensors in the interpreter)."""
    monkeypatch.setattr(_fused_add, "_triton", lambda x: triton_add)
    x, b, r = _operands(dtype, (16,), DEVICE, special=False)
    grad_out = _data(SHAPE, dtype, 4, DEVICE, special=False)
    out, (gx, gb, gr) = _grads(lambda x, b, r: DF.bias_dropout_add(x, b, r, 0.3, seed=8),
                               (x, b, r), grad_out)
    ref, (wx, wb, wr) = _grads(lambda x, b, r: _unfused_bda(x, b, r, 0.3, seed=8), (x, b, r),
                               grad_out)
    assert same_bits(out, ref) and same_bits(gx, wx) and same_bits(gr, wr)
    torch.testing.assert_close(gb.double(), wb.double(), rtol=1e-2, atol=1e-2)
    out, (gx, gr) = _grads(lambda x, r: DF.drop_path_add(x, r, torch.tensor(0.5), seed=8),
                           (x, r), grad_out)
    ref, (wx, wr) = _grads(lambda x, r: _unfused_dpa(x, r, torch.tensor(0.5), seed=8), (x, r),
                           grad_out)
    assert same_bits(out, ref) and same_bits(gx, wx) and same_bits(gr, wr)
