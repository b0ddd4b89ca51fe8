"""The Triton Gaussian-noise kernels give the spec's bits (``docs/rng.md`` section 5).

On a machine with CUDA they run compiled on the GPU; elsewhere in Triton's CPU interpreter
(``TRITON_INTERPRET=1``). The interpreter checks the kernels' logic (Philox stream 1, the order
of every float64 operation, the roundings), not GPU code generation: only a GPU run of this file
shows that the compiled kernels fuse no multiply-add (they are launched with
``enable_fp_fusion=False`` for that).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from dropkit import rng
from dropkit.kernels import torch_ref
from helpers import BITS, ON_GPU, TRITON_DEVICE, same_bits

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
triton_cuda = importlib.import_module("dropkit.kernels.triton_cuda")
DEVICE = TRITON_DEVICE
SEEDS = [0, 1, 2**32 - 1, 2**40 + 12345, 2**64 - 1]
# Words at the edges of Box-Muller: 0 and 0xFFFFFFFF (u1 = 1, so ln u1 = 0 and radius 0), the
# quadrant boundaries of u2 (multiples of 2**30) and their neighbours.
EDGE_WORDS = [0, 1, 2, 0x1FFFFFFF, 0x20000000, 0x3FFFFFFF, 0x40000000, 0x7FFFFFFF,
              0x80000000, 0xBFFFFFFF, 0xC0000000, 0xFFFFFFFE, 0xFFFFFFFF]


def _u64(a) -> np.ndarray:
    """The raw bits of float64 values (so -0.0 != 0.0)."""
    return np.asarray(a, dtype=np.float64).view(np.uint64)


def _reference(x: torch.Tensor, key: tuple[int, int], std: float) -> torch.Tensor:
    """``dropkit::gaussian_mul``'s fallback expression on the pure-PyTorch noise."""
    z = torch_ref.normal_field(key, x.numel(), device=x.device).reshape(x.shape)
    ct = torch_ref.compute_dtype(x.dtype)
    return (x.to(ct) * (1.0 + std * z).to(ct)).to(x.dtype).contiguous()


@pytest.mark.parametrize("count", [1, 3, 4, 5, 1000, 4099])
def test_normal_field_matches_the_spec(count):
    for seed in SEEDS:
        got = triton_cuda.normal_field(rng.seed_to_key(seed), count, device=DEVICE)
        assert got.dtype == torch.float64 and got.shape == (count,)
        want = rng.normal_field((count,), seed)
        assert np.array_equal(_u64(got.cpu().numpy()), _u64(want)), seed


def test_normal_field_of_nothing():
    assert triton_cuda.normal_field((1, 2), 0, device=DEVICE).shape == (0,)


def test_box_muller_on_chosen_and_random_words():
    """The kernels' Box-Muller equals ``rng.box_muller`` on every pair of edge words, in both
    positions, and on random pairs, bit for bit."""
    edge = np.array(EDGE_WORDS, dtype=np.int64)
    ra, rb = (w.ravel() for w in np.meshgrid(edge, edge))
    words = np.random.default_rng(5).integers(0, 2**32, size=(2, 3000), dtype=np.int64)
    ra, rb = np.concatenate([ra, words[0]]), np.concatenate([rb, words[1]])
    got = triton_cuda.box_muller_words(torch.from_numpy(ra).to(DEVICE),
                                       torch.from_numpy(rb).to(DEVICE))
    want = rng.box_muller(ra.astype(np.float64), rb.astype(np.float64))
    for g, w in zip(got, want, strict=True):
        g = g.cpu().numpy()
        assert np.array_equal(_u64(g), _u64(w)), int((_u64(g) != _u64(w)).sum())
    last = len(EDGE_WORDS) - 1  # ra = 0xFFFFFFFF, rb = 0: u1 = 1, so the radius is exactly 0
    assert ra[last] == 0xFFFFFFFF and got[0][last].item() == 0.0 and got[1][last].item() == 0.0
    assert np.isfinite(got[0].cpu().numpy()).all() and np.isfinite(got[1].cpu().numpy()).all()


# 65504 * (1 + std * z) overflows float16 to inf: the interpreter's NumPy cast warns about it.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", list(BITS), ids=str)
@pytest.mark.parametrize("std", [0.1, 1.0, 3.0])
def test_gaussian_equals_the_fallback_expression(dtype, std):
    x = (torch.randn(3, 701) * 3).to(dtype)
    x[0, :8] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-30, -1e30,
                             65504.0]).to(dtype)
    x = x.to(DEVICE)
    for seed in (0, 2**40 + 12345, 2**64 - 1):
        key = rng.seed_to_key(seed)
        got = triton_cuda.gaussian(x, key, std)
        assert got.is_contiguous() and got.device == x.device
        assert same_bits(got, _reference(x, key, std), any_nan=True), (dtype, std, seed)


def test_gaussian_std_is_used_in_float64():
    """A std with more digits than float32 holds gives the float64 expression's bits (a kernel
    that took std as float32 would differ in float64 outputs)."""
    x = torch.randn(4099, dtype=torch.float64).to(DEVICE)
    std = 0.1234567890123456
    got = triton_cuda.gaussian(x, (7, 9), std)
    assert same_bits(got, _reference(x, (7, 9), std), any_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gaussian_reads_a_non_contiguous_input_in_logical_order(dtype):
    x = torch.randn(40, 30).to(dtype).to(DEVICE).t()
    assert not x.is_contiguous()
    got = triton_cuda.gaussian(x, (3, 4), 0.5)
    assert got.shape == (30, 40)
    assert same_bits(got, _reference(x.contiguous(), (3, 4), 0.5), any_nan=True)


def test_gaussian_declines_other_dtypes_and_handles_empty_and_0d_input():
    assert triton_cuda.gaussian(torch.ones(4, dtype=torch.int32, device=DEVICE), (0, 0), 1.0) \
        is None
    empty = torch.empty(0, 3, device=DEVICE)
    assert triton_cuda.gaussian(empty, (0, 0), 1.0).shape == (0, 3)
    scalar = torch.tensor(2.5, device=DEVICE)
    assert same_bits(triton_cuda.gaussian(scalar, (1, 2), 0.3),
                     _reference(scalar, (1, 2), 0.3), any_nan=True)


@pytest.mark.skipif(not ON_GPU, reason="the dispatcher sends only CUDA tensors to Triton")
def test_gaussian_mul_op_on_the_triton_backend():
    """``dropkit::gaussian_mul`` with the Triton backend: forward and backward give the fallback
    expression's bits (the backward is the same op on the gradient)."""
    import dropkit
    from dropkit import _ops

    dropkit.set_backend("triton")
    x = torch.randn(5, 9, device=DEVICE, requires_grad=True)
    out = _ops.gaussian_mul(x, torch.tensor([11, 12]), 0.7)
    assert same_bits(out.detach(), _reference(x.detach(), (11, 12), 0.7), any_nan=True)
    grad = torch.randn_like(x)
    out.backward(grad)
    assert same_bits(x.grad, _reference(grad, (11, 12), 0.7), any_nan=True)
