"""The Triton kernels give the same bits as the pure-PyTorch reference and the NumPy reference.

On a machine with CUDA they run compiled on the GPU; elsewhere in Triton's CPU interpreter
(``TRITON_INTERPRET=1``), which executes the same kernel code on CPU tensors. The interpreter
checks the kernels' logic (Philox, lane order, broadcast indexing, arithmetic and rounding), not
GPU code generation or speed: a GPU session still has to run this file on a GPU.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dropkit.numpy as dnp
from dropkit import rng
from dropkit.kernels import torch_ref
from helpers import BITS, ON_GPU, TRITON_DEVICE, same_bits

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
tl = importlib.import_module("triton.language")
triton_cuda = importlib.import_module("dropkit.kernels.triton_cuda")
DEVICE = TRITON_DEVICE
DTYPES = tuple(BITS)  # float64: the torch_ref fallback
KINDS = [("inverted", 0.1), ("inverted", 0.77), ("unscaled", 0.5), ("alpha", 0.3),
         ("eval", 0.2), ("inverted", 1.0)]
SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 6.0e4, -6.0e4, 1e-7]

# (x shape, noise shape): every broadcast pattern the library draws, plus awkward ones.
NOISE_CASES = [
    ((3, 4, 10), (3, 4, 1)),  # spatial 1d, channels first
    ((3, 10, 4), (3, 1, 4)),  # spatial 1d, channels last
    ((2, 3, 5, 7), (2, 3, 1, 1)),  # spatial 2d, channels first
    ((2, 5, 7, 3), (2, 1, 1, 3)),  # spatial 2d, channels last
    ((2, 3, 2, 3, 4), (2, 3, 1, 1, 1)),  # spatial 3d, channels first
    ((2, 2, 3, 4, 3), (2, 1, 1, 1, 3)),  # spatial 3d, channels last
    ((4, 6, 5), (4, 6, 1)),  # timestep
    ((4, 3, 5, 7), (4, 1, 1, 1)),  # DropPath
    ((4, 33), (4, 1)),  # DropPath on features
    ((2, 3, 4, 5), (2, 1, 4, 1)),  # Keras noise_shape: 4 alternating axes
    ((2, 3, 4, 5), (1, 3, 1, 5)),  # 4 alternating axes, broadcast first
    ((2, 3, 4, 5, 6), (1, 3, 4, 1, 6)),  # 5-d, 4 merged axes
    ((2, 3, 4, 5, 6), (2, 1, 4, 1, 6)),  # 5-d, 5 merged axes: the torch_ref fallback
    ((2, 3, 4, 5), (1, 1, 1, 1)),  # one decision for everything
    ((2, 1, 5, 7), (2, 1, 1, 1)),  # size-1 axes of x
    ((1, 3, 1, 7), (1, 3, 1, 1)),
    ((5, 60, 7), (5, 60, 1)),  # several row tiles
    ((2, 1500), (2, 1)),  # several column tiles, broadcast columns
    ((3, 1500), (1, 1500)),  # several column tiles, full columns
    ((0, 3, 4), (1, 3, 1)),  # empty
    ((7,), (1,)),
    ((), ()),  # a 0-d tensor
]


def _input(shape, dtype, seed=0) -> torch.Tensor:
    """Values of both signs, the first few special (signed zeros, infinities, NaN, values that
    overflow float16 when scaled, tiny ones)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).reshape(-1)
    k = min(len(SPECIALS), x.numel())
    x[:k] = torch.tensor(SPECIALS[:k], dtype=torch.float64)
    return x.reshape(shape).to(dtype).to(DEVICE)


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype, shape and bits; a kept NaN only has to be a NaN (``docs/rng.md`` section 4)."""
    assert same_bits(got, want, any_nan=True)


def _check_apply(x, key, kind, p, noise_shape) -> None:
    t, scale, shift, fill = rng.affine_params(kind, p)
    with np.errstate(over="ignore", invalid="ignore"):  # the interpreter warns on inf, NaN
        got = triton_cuda.apply(x, key, t, noise_shape, scale, shift, fill)
    _assert_same(got, torch_ref.apply(x, key, t, noise_shape, scale, shift, fill))


@triton.jit
def _philox_block_kernel(out_ptr, seed, first, STREAM: tl.constexpr):
    n = first + tl.arange(0, 16).to(tl.uint64)
    r0, r1, r2, r3 = triton_cuda.philox_block(seed, n, STREAM)
    offs = tl.arange(0, 16) * 4
    tl.store(out_ptr + offs, r0.to(tl.int64))
    tl.store(out_ptr + offs + 1, r1.to(tl.int64))
    tl.store(out_ptr + offs + 2, r2.to(tl.int64))
    tl.store(out_ptr + offs + 3, r3.to(tl.int64))


@pytest.mark.parametrize("stream", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 5 | 1 << 32, 2**63 + 12345, 2**64 - 1])
def test_philox_block_matches_the_spec(seed, stream):
    key = rng.seed_to_key(seed)
    for first in (0, 2**32 - 5):  # blocks whose index crosses into the high counter word
        out = torch.empty(64, dtype=torch.int64, device=DEVICE)
        _philox_block_kernel[(1,)](out, seed, first, STREAM=stream, enable_fp_fusion=False)
        want = torch_ref.block_words(key, torch.arange(first, first + 16), stream)
        assert torch.equal(out.cpu(), want.reshape(-1))


def test_philox_block_known_answer():
    out = torch.empty(64, dtype=torch.int64, device=DEVICE)
    _philox_block_kernel[(1,)](out, 0, 0, STREAM=0, enable_fp_fusion=False)
    assert out[:4].tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]  # rng.md 1


@triton.jit
def _philox_block_int32_kernel(out_ptr, seed, STREAM: tl.constexpr):
    r0, r1, r2, r3 = triton_cuda.philox_block(seed, tl.arange(0, 16), STREAM)  # int32 n
    tl.store(out_ptr + tl.arange(0, 16), (r0 ^ r1 ^ r2 ^ r3).to(tl.int64))


def test_philox_block_of_32_bit_block_indices():
    out = torch.empty(16, dtype=torch.int64, device=DEVICE)
    _philox_block_int32_kernel[(1,)](out, 2**64 - 3, STREAM=2, enable_fp_fusion=False)
    words = torch_ref.block_words(rng.seed_to_key(2**64 - 3), torch.arange(16), 2)
    assert torch.equal(out.cpu(), words[:, 0] ^ words[:, 1] ^ words[:, 2] ^ words[:, 3])


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1023, 1024, 1025, 3001])
def test_keep_field_matches_the_spec(count):
    key = rng.seed_to_key(2**40 + 12345)
    got = triton_cuda.keep_field(key, 30000, count, device=DEVICE).cpu()
    assert torch.equal(got, torch.from_numpy(rng.uniform16(2**40 + 12345, 0, count) >= 30000))


@pytest.mark.parametrize("d", [1, 2, 3, 7, 49, 64, 1000, 3136, 2**20 + 1, 3**19, 2**31 - 1])
def test_magic_division(d):
    m, s = triton_cuda._magic(d)
    assert 0 < m < 2**32
    n = np.concatenate([np.random.default_rng(d).integers(0, 2**31, 10_000),
                        [0, 1, d - 1, d, d + 1, 2**31 - 1, (2**31 - 1) // d * d - 1]])
    n = n[(n >= 0) & (n < 2**31)].astype(np.uint64)
    q = (((n * np.uint64(m)) >> np.uint64(32)) + n) >> np.uint64(s)  # the kernel's uint32 ops
    assert (q < 2**31).all() and np.array_equal(q, n // np.uint64(d))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("kind", "p"), KINDS)
def test_full_field_matches_torch_ref(dtype, kind, p):
    x = _input((3, 1001), dtype)
    _check_apply(x, rng.seed_to_key(987654321), kind, p, tuple(x.shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "noise_shape"), NOISE_CASES, ids=str)
def test_broadcast_field_matches_torch_ref(shape, noise_shape, dtype):
    x = _input(shape, dtype)
    key = rng.seed_to_key(2**63 + 987654321)
    for kind, p in KINDS:
        _check_apply(x, key, kind, p, noise_shape)


def test_broadcast_with_64_bit_row_indices(monkeypatch):
    monkeypatch.setattr(triton_cuda, "_INT32_MAX", 0)  # take the int64 path on small inputs
    x = _input((2, 3, 4, 5), torch.float32)
    for noise_shape in [(2, 1, 4, 1), (1, 3, 1, 5), (2, 3, 1, 1)]:
        _check_apply(x, (7, 8), "alpha", 0.4, noise_shape)


@st.composite
def shapes_and_noise(draw):
    """A small shape of rank 1 to 5 and a noise shape: each axis shared (1) or full."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=5)))
    noise = tuple(draw(st.sampled_from([1, s])) for s in shape)
    return shape, noise


@given(case=shapes_and_noise(), dtype=st.sampled_from(DTYPES),
       kind=st.sampled_from(["inverted", "unscaled", "alpha", "eval"]),
       p=st.floats(0.0, 1.0), seed=st.integers(0, 2**64 - 1))
def test_apply_matches_torch_ref_hypothesis(case, dtype, kind, p, seed):
    shape, noise_shape = case
    _check_apply(_input(shape, dtype, seed % 1000), rng.seed_to_key(seed), kind, p, noise_shape)


@pytest.mark.parametrize("noise_shape", [(2, 3, 5, 7), (2, 3, 1, 1), (2, 1, 5, 1)], ids=str)
def test_apply_into_out_and_non_contiguous_input(noise_shape):
    x = torch.randn(2, 5, 7, 3).to(DEVICE).permute(0, 3, 1, 2)  # channels-last layout
    key = rng.seed_to_key(3)
    t, scale, shift, fill = rng.affine_params("alpha", 0.4)
    want = torch_ref.apply(x, key, t, noise_shape, scale, shift, fill)
    _assert_same(triton_cuda.apply(x, key, t, noise_shape, scale, shift, fill), want)
    for out in [torch.empty(2, 3, 5, 7, device=DEVICE),
                torch.empty(2, 5, 7, 3, device=DEVICE).permute(0, 3, 1, 2)]:
        assert triton_cuda.apply(x, key, t, noise_shape, scale, shift, fill, out=out) is out
        _assert_same(out, want)
    y = x.contiguous()  # in place
    assert triton_cuda.apply(y, key, t, noise_shape, scale, shift, fill, out=y) is y
    _assert_same(y, want)


def test_nan_stays_nan_in_bfloat16():
    x = torch.full((16,), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    t, scale, shift, fill = rng.affine_params("inverted", 0.0)
    for noise_shape in [(16,), (1,)]:
        assert torch.isnan(triton_cuda.apply(x, (1, 2), t, noise_shape, scale, shift, fill)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("mode", ["inverted", "vanilla"])
def test_spatial_dropout_matches_numpy_reference(dtype, data_format, mode):
    seed, p = 2**64 - 12345, 0.3
    x = (np.random.default_rng(0).standard_normal((3, 4, 5, 6)) * 3).astype(dtype)
    want = dnp.spatial_dropout2d(x, p, data_format=data_format, mode=mode, seed=seed)
    noise_shape = (3, 4, 1, 1) if data_format == "channels_first" else (3, 1, 1, 6)
    t, scale, shift, fill = rng.affine_params("inverted" if mode == "inverted" else "unscaled", p)
    got = triton_cuda.apply(torch.from_numpy(x).to(DEVICE), rng.seed_to_key(seed), t,
                            noise_shape, scale, shift, fill)
    _assert_same(got, torch.from_numpy(want))


@pytest.mark.skipif(not ON_GPU, reason="the dispatcher sends only CUDA tensors to Triton")
def test_dispatcher_default_on_cuda_is_triton_and_matches_torch():
    import dropkit
    import dropkit.functional as DF
    from dropkit import kernels

    assert kernels.uses_triton(torch.device("cuda"))
    x = torch.randn(8, 16, 9, 9, device="cuda")
    calls = [lambda: DF.dropout(x, 0.3, seed=5), lambda: DF.spatial_dropout2d(x, 0.3, seed=5),
             lambda: DF.alpha_dropout(x, 0.3, seed=5)]
    default = [call() for call in calls]
    dropkit.set_backend("torch")
    for call, got in zip(calls, default, strict=True):
        _assert_same(got, call())
