"""DropBlock's Triton kernels give the same bits as the torch path and the NumPy reference.

On a machine with CUDA they run compiled on the GPU; elsewhere in Triton's CPU interpreter
(``TRITON_INTERPRET=1``) on CPU tensors, which checks the kernels' logic (seed field, tiling
and halos, dilation, counting, arithmetic and rounding), not GPU code generation or speed.
Shapes are small because the interpreter is slow; the tile constants are shrunk in some tests
so that small maps still exercise split axes, halos and several tiles per axis.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dropkit import _drop_block as DB
from dropkit import _drop_block_numpy as R
from dropkit import rng
from helpers import ON_GPU, TRITON_DEVICE, same_bits

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
TDB = importlib.import_module("dropkit.kernels.triton_drop_block")
DEVICE = TRITON_DEVICE
SCALES = ("batch", "expected", "none")
NP_FUNCS = {1: R.drop_block1d, 2: R.drop_block2d, 3: R.drop_block3d}


def _input(shape, dtype, seed=0) -> torch.Tensor:
    """Random values (x3) with inf, -inf and -0.0 among them (NaN: see its own test; a GPU
    may return another NaN payload than the CPU)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    special = torch.tensor([float("inf"), -float("inf"), -0.0])
    flat = x.view(-1)
    flat[:min(3, flat.numel())] = special[:min(3, flat.numel())]
    return x.to(dtype)


def _both(x, spatial_dims, block, p, per_channel, scale, channels_last, seed):
    """The Triton result (on DEVICE, brought back) and the torch path's, for ``x`` on CPU."""
    n, c, spatial = R.layout(tuple(x.shape), spatial_dims, channels_last)
    cal = R.calibrate(spatial, block, p)
    assert 0 < cal.threshold < R.WORD_RANGE
    key = rng.seed_to_key(seed)
    args = (key, cal, n, c, spatial, per_channel, scale, channels_last)
    got = TDB.apply(x.to(DEVICE), *args).cpu()
    return got, DB._torch_path(x, *args)


@pytest.fixture(params=["default", "small"])
def tiles(request, monkeypatch):
    """Default tile constants, or tiny ones: small maps then split every axis into tiles."""
    if request.param == "small":
        monkeypatch.setattr(TDB, "_SPLIT", 8)
        monkeypatch.setattr(TDB, "_TILE", 32)
        monkeypatch.setattr(TDB, "_BLOCK_N", 4)
    return request.param


# Maps and blocks: 1-D/2-D/3-D, odd and even blocks, block 1, block == map, clipped blocks.
CASES = [
    ((37,), (1,)),
    ((37,), (4,)),
    ((37,), (37,)),
    ((9, 11), (3, 3)),
    ((9, 11), (4, 2)),
    ((9, 11), (9, 11)),
    ((8, 8), (20, 1)),
    ((5, 6, 7), (2, 3, 4)),
    ((5, 6, 7), (3, 1, 5)),
    ((4, 5, 6), (4, 5, 6)),
]


@pytest.mark.parametrize(("spatial", "block"), CASES)
@pytest.mark.parametrize("per_channel", [True, False])
def test_keep_mask_and_count_match_the_reference(spatial, block, per_channel, tiles):
    n, c, seed = 2, 3, 2**40 + 77
    cal = R.calibrate(spatial, block, 0.4)
    planes = n * (c if per_channel else 1)
    keep, ones = TDB.keep_mask(rng.seed_to_key(seed), cal, planes, spatial, DEVICE, count=True)
    want = R.keep_mask(n, c, spatial, cal, per_channel, seed).reshape(-1)
    assert np.array_equal(keep.cpu().numpy(), want.astype(np.uint8))
    assert int(ones.item()) == int(want.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_apply_matches_torch_path(dtype, scale, per_channel, channels_last, tiles):
    for spatial, block in [((23,), (5,)), ((7, 6), (3, 2)), ((4, 5, 3), (2, 3, 3)),
                           ((6, 6), (6, 6))]:
        for batched in (True, False):
            c = 3
            shape = (c, *spatial)
            if channels_last:
                shape = (*spatial, c)
            if batched:
                shape = (2, *shape)
            x = _input(shape, dtype, seed=len(spatial))
            got, want = _both(x, len(spatial), block, 0.35, per_channel, scale, channels_last,
                              seed=2**63 + 2**33 + 9)
            assert same_bits(got, want), (spatial, block, batched)


@pytest.mark.parametrize(("spatial", "block"), [((700,), (5,)), ((600,), (200,)),
                                                ((3, 300), (2, 7))])
def test_split_axes_with_default_tiles(spatial, block):
    """Axes longer than ``_SPLIT`` are tiled with a halo of ``b - 1`` (also huge blocks)."""
    x = _input((2, 2, *spatial), torch.float32)
    got, want = _both(x, len(spatial), block, 0.5, True, "batch", False, seed=5)
    assert same_bits(got, want)


@pytest.mark.parametrize("p", [0.9, 0.99])
def test_many_blocks_dropped(p, tiles):
    x = _input((2, 4, 12, 10), torch.bfloat16)
    got, want = _both(x, 2, (3, 4), p, True, "batch", False, seed=11)
    assert same_bits(got, want)
    assert (want == 0).float().mean() > 0.8


def test_everything_dropped_gives_zeros_not_nan():
    """A seed whose single start (block == map) is a seed: batch scale 0, all zeros."""
    cal = R.calibrate((5, 5), (5, 5), 0.9)
    seed = next(s for s in range(100) if not R.keep_mask(1, 2, (5, 5), cal, False, s).any())
    x = _input((1, 2, 5, 5), torch.float16)
    got, want = _both(x, 2, (5, 5), 0.9, False, "batch", False, seed=seed)
    assert same_bits(got, want)
    assert same_bits(got, torch.zeros_like(x))


def test_batch_scale_with_a_single_kept_unit():
    """count(M) / 1: the device division sees exactly one kept unit."""
    cal = R.calibrate((1,), (1,), 0.9)
    seed = next(s for s in range(1000) if R.keep_mask(1, 8, (1,), cal, True, s).sum() == 1)
    x = torch.arange(1.0, 9.0).reshape(8, 1)  # unbatched (C, L)
    got, want = _both(x, 1, (1,), 0.9, True, "batch", False, seed=seed)
    assert same_bits(got, want)
    kept = want != 0
    assert int(kept.sum()) == 1 and torch.equal(want[kept], 8 * x[kept])  # count(M) / 1 = 8


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_numpy_reference(scale, dtype):
    seed = 123456789
    for spatial_dims, shape, block, data_format in [
        (1, (2, 3, 19), 4, "channels_first"),
        (2, (2, 7, 8, 3), (3, 2), "channels_last"),
        (3, (3, 4, 5, 4), 2, "channels_first"),  # unbatched
    ]:
        x = _input(shape, dtype)
        want = NP_FUNCS[spatial_dims](x.numpy(), 0.3, block, scale=scale,
                                      data_format=data_format, seed=seed)
        channels_last = data_format == "channels_last"
        n, c, spatial = R.layout(shape, spatial_dims, channels_last)
        cal = R.calibrate(spatial, block, 0.3)
        got = TDB.apply(x.to(DEVICE), rng.seed_to_key(seed), cal, n, c, spatial, True, scale,
                        channels_last).cpu()
        assert same_bits(got, torch.from_numpy(want)), shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_is_kept_as_nan_and_dropped_as_zero(dtype):
    x = torch.full((2, 3, 8, 8), float("nan"), dtype=dtype)
    got, want = _both(x, 2, (3, 3), 0.4, True, "batch", False, seed=6)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.isnan(want).any() and (want == 0).any()
    assert same_bits(got[~torch.isnan(got)], want[~torch.isnan(want)])


@pytest.mark.parametrize("scale", SCALES)
def test_float64_uses_the_triton_mask_and_the_torch_expression(scale):
    x = _input((2, 3, 9, 7), torch.float64)
    got, want = _both(x, 2, (3, 3), 0.3, True, scale, False, seed=3)
    assert same_bits(got, want)


def test_blocks_beyond_the_tile_limit_fall_back_to_the_torch_path(monkeypatch):
    monkeypatch.setattr(TDB, "_SPLIT", 8)
    monkeypatch.setattr(TDB, "_MAX_AXIS_TILE", 8)
    x = _input((2, 2, 30), torch.float32)
    got, want = _both(x, 1, (10,), 0.3, True, "batch", False, seed=4)
    assert same_bits(got, want)


def test_non_contiguous_input():
    x = _input((2, 9, 3, 8), torch.float32).transpose(1, 3)  # logical (2, 8, 3, 9)
    got, want = _both(x, 2, (2, 4), 0.3, True, "expected", False, seed=8)
    assert same_bits(got, want)


@st.composite
def _problems(draw):
    spatial_dims = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 7)) for _ in range(spatial_dims))
    block = tuple(draw(st.integers(1, s + 2)) for s in spatial)
    c = draw(st.integers(1, 3))
    channels_last = draw(st.booleans())
    shape = (*spatial, c) if channels_last else (c, *spatial)
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 2)), *shape)
    return dict(
        shape=shape, spatial_dims=spatial_dims, block=block, channels_last=channels_last,
        p=draw(st.sampled_from([0.05, 0.3, 0.7, 0.95])), per_channel=draw(st.booleans()),
        scale=draw(st.sampled_from(SCALES)), seed=draw(st.integers(0, 2**64 - 1)),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
    )


@given(_problems())
def test_random_small_problems_match_torch_path(problem):
    spatial_dims = problem["spatial_dims"]
    channels_last = problem["channels_last"]
    _, _, spatial = R.layout(problem["shape"], spatial_dims, channels_last)
    cal = R.calibrate(spatial, problem["block"], problem["p"])
    if not 0 < cal.threshold < R.WORD_RANGE:
        return  # the op handles T = 0 and T = 2**32 before any backend
    x = _input(problem["shape"], problem["dtype"], seed=math.prod(problem["shape"]))
    got, want = _both(x, spatial_dims, problem["block"], problem["p"], problem["per_channel"],
                      problem["scale"], channels_last, problem["seed"])
    assert same_bits(got, want)


@pytest.mark.skipif(not ON_GPU, reason="the op sends only CUDA tensors to Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_on_cuda_matches_cpu_and_gradients(dtype):
    x = _input((4, 8, 21, 21), dtype).requires_grad_()
    xc = x.detach().to("cuda").requires_grad_()
    y = DB.drop_block2d(x, 0.2, 5, seed=17)
    yc = DB.drop_block2d(xc, 0.2, 5, seed=17)
    assert same_bits(yc.detach().cpu(), y.detach())
    g = _input(x.shape, dtype, seed=1)
    y.backward(g)
    yc.backward(g.to("cuda"))
    assert same_bits(xc.grad.cpu(), x.grad)
