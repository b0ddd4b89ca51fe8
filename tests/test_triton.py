"""The Triton kernels give the same bits as the pure-PyTorch reference.

On a machine with CUDA they run compiled on the GPU; elsewhere in Triton's CPU interpreter
(``TRITON_INTERPRET=1``), which executes the same kernel code on CPU tensors. The interpreter
checks the kernels' logic (Philox, lane order, arithmetic and rounding), not GPU code generation
or speed: a GPU session still has to run this file on a GPU.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from dropkit import rng
from dropkit.kernels import torch_ref

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # read by triton at import: before the import below
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
triton_cuda = importlib.import_module("dropkit.kernels.triton_cuda")
DEVICE = "cuda" if ON_GPU else "cpu"
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float64: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1023, 1024, 1025, 3001])
def test_keep_field_matches_the_spec(count):
    key = rng.seed_to_key(2**40 + 12345)
    got = triton_cuda.keep_field(key, 30000, count, device=DEVICE).cpu()
    assert torch.equal(got, torch.from_numpy(rng.uniform16(2**40 + 12345, 0, count) >= 30000))


@pytest.mark.parametrize("dtype", list(BITS))
@pytest.mark.parametrize(("kind", "p"), [("inverted", 0.1), ("inverted", 0.77),
                                         ("unscaled", 0.5), ("alpha", 0.3), ("eval", 0.2)])
def test_apply_matches_torch_ref(dtype, kind, p):
    torch.manual_seed(0)
    x = (torch.randn(3, 1001) * 3).to(dtype).to(DEVICE)
    x[0, :4] = torch.tensor([0.0, -0.0, float("inf"), -float("inf")], dtype=dtype)
    key = rng.seed_to_key(987654321)
    t, scale, shift, fill = rng.affine_params(kind, p)
    for noise_shape in [tuple(x.shape), (3, 1), (1, 1001)]:
        got = triton_cuda.apply(x, key, t, noise_shape, scale, shift, fill)
        want = torch_ref.apply(x, key, t, noise_shape, scale, shift, fill)
        assert _same_bits(got, want), noise_shape


def test_apply_into_out_and_non_contiguous_input():
    x = torch.randn(40, 30).to(DEVICE).t()  # non-contiguous
    key = rng.seed_to_key(3)
    t, scale, shift, fill = rng.affine_params("inverted", 0.4)
    want = torch_ref.apply(x, key, t, tuple(x.shape), scale, shift, fill)
    assert torch.equal(triton_cuda.apply(x, key, t, tuple(x.shape), scale, shift, fill), want)
    out = torch.empty(30, 40, device=DEVICE)
    assert triton_cuda.apply(x, key, t, tuple(x.shape), scale, shift, fill, out=out) is out
    assert torch.equal(out, want)


def test_nan_stays_nan_in_bfloat16():
    x = torch.full((16,), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    t, scale, shift, fill = rng.affine_params("inverted", 0.0)
    assert torch.isnan(triton_cuda.apply(x, (1, 2), t, (16,), scale, shift, fill)).all()


@pytest.mark.skipif(not ON_GPU, reason="the dispatcher sends only CUDA tensors to Triton")
def test_dispatcher_uses_triton_for_cuda_when_asked():
    import dropkit
    import dropkit.functional as DF

    x = torch.randn(4096, device="cuda")
    reference = DF.dropout(x, 0.3, seed=5)
    dropkit.set_backend("triton")
    try:
        assert torch.equal(DF.dropout(x, 0.3, seed=5), reference)
    finally:
        dropkit.set_backend("auto")
