"""Outputs keep the input's memory format, as torch's dropout does (``torch.preserve_format``).

For every op (plain, broadcast fields, alpha, Gaussian, DropBlock, the fused adds, in-place) and
every backend (numba, torch, the Triton kernels in Triton's CPU interpreter), a channels_last
(4-D), channels_last_3d (5-D), permuted-dense or non-dense input gives an output laid out as
torch's equivalent gives it, with the bits of the contiguous computation (the field is indexed
by the logical position), and gradients with the layout autograd gives for torch's dropout (the
incoming gradient's) and the contiguous computation's bits. Fake (meta) impls give the eager
strides, so compiled graphs keep them too.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import dropkit.functional as DF
from dropkit import kernels
from helpers import BACKENDS, same_bits

CL, CL3D = torch.channels_last, torch.channels_last_3d


def _randn(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _layout(x: torch.Tensor, kind: str, perm: tuple[int, ...]) -> torch.Tensor:
    """``x`` (contiguous) in memory layout ``kind``, the same values."""
    if kind == "channels_last":
        return x.contiguous(memory_format=CL if x.dim() == 4 else CL3D)
    if kind == "permuted":  # dense, memory order `perm`
        return x.permute(perm).contiguous().permute(_inverse(perm))
    # non-dense: a strided slice of a channels_last tensor twice as long on the last axis
    wide = torch.cat([x, x], dim=-1).contiguous(memory_format=CL if x.dim() == 4 else CL3D)
    return wide[..., ::2]


def _inverse(perm):
    inv = [0] * len(perm)
    for i, d in enumerate(perm):
        inv[d] = i
    return tuple(inv)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same strides on every axis longer than 1 (a size-1 axis' stride is arbitrary)."""
    return a.shape == b.shape and all(
        s == t for n, s, t in zip(a.shape, a.stride(), b.stride(), strict=True) if n > 1)


def _residual(x):
    return _randn(x.shape, x.dtype, seed=7)


def _bias(x):
    return _randn(x.shape[-1:], x.dtype, seed=8)


# name -> (dropkit op of (x, seed), torch's equivalent of x giving the reference layout).
# torch's equivalent for the fused adds is the unfused expression with F.dropout.
OPS = {
    "dropout": (lambda x, s: DF.dropout(x, 0.4, seed=s), lambda x: F.dropout(x, 0.4)),
    "spatial": (lambda x, s: (DF.spatial_dropout2d if x.dim() == 4 else DF.spatial_dropout3d)(
        x, 0.4, seed=s), lambda x: F.dropout2d(x, 0.4) if x.dim() == 4 else F.dropout3d(x, 0.4)),
    "noise_shape": (lambda x, s: DF.dropout(x, 0.4, noise_shape=(None, 1, *x.shape[2:]), seed=s),
                    lambda x: F.dropout(x, 0.4)),
    "timestep": (lambda x, s: DF.timestep_dropout(x, 0.4, seed=s), lambda x: F.dropout(x, 0.4)),
    "drop_path": (lambda x, s: DF.drop_path(x, 0.4, seed=s), lambda x: F.dropout(x, 0.4)),
    "alpha": (lambda x, s: DF.alpha_dropout(x, 0.4, seed=s),
              lambda x: F.alpha_dropout(x, 0.4, True)),
    "feature_alpha": (lambda x, s: DF.alpha_dropout(x, 0.4, noise_shape=(*x.shape[:2],) + (1,) * (
        x.dim() - 2), seed=s), lambda x: F.feature_alpha_dropout(x, 0.4, True)),
    "gaussian": (lambda x, s: DF.gaussian_dropout(x, 0.4, seed=s), lambda x: F.dropout(x, 0.4)),
    "drop_block": (lambda x, s: (DF.drop_block2d if x.dim() == 4 else DF.drop_block3d)(
        x, 0.3, 2, seed=s), lambda x: F.dropout(x, 0.4)),
    "drop_block_nhwc": (lambda x, s: (DF.drop_block2d if x.dim() == 4 else DF.drop_block3d)(
        x, 0.3, 2, data_format="channels_last", per_channel=False, seed=s),
        lambda x: F.dropout(x, 0.4)),
    "bias_dropout_add": (lambda x, s: DF.bias_dropout_add(x, _bias(x), _residual(x), 0.4, seed=s),
                         lambda x: _residual(x) + F.dropout(x + _bias(x), 0.4)),
    "drop_path_add": (lambda x, s: DF.drop_path_add(x, _residual(x), 0.4, seed=s),
                      lambda x: _residual(x) + F.dropout(x, 0.4)),
}
INPLACE = {
    "dropout": lambda x, s: DF.dropout(x, 0.4, inplace=True, seed=s),
    "spatial": lambda x, s: DF.dropout(x, 0.4, inplace=True, seed=s,
                                       noise_shape=(*x.shape[:2],) + (1,) * (x.dim() - 2)),
    "alpha": lambda x, s: DF.alpha_dropout(x, 0.4, inplace=True, seed=s),
}


@st.composite
def problems(draw):
    rank = draw(st.sampled_from([4, 5]))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    shape = (shape[0], shape[1] + 1, *(s + 1 for s in shape[2:]))  # DropBlock: maps >= 2
    kind = draw(st.sampled_from(["channels_last", "permuted", "sliced"]))
    perm = tuple(draw(st.permutations(range(rank))))
    return shape, kind, perm


def _check(backend, name, shape, kind, perm, dtype):
    op, torch_op = OPS[name]
    x = _layout(_randn(shape, dtype), kind, perm)
    ref = x.contiguous()
    got = _run(backend, op, x)
    want = _run(backend, op, ref)
    assert same_bits(got, want), (name, kind)
    assert _same_layout(got, torch_op(x)), (name, kind, got.stride(), torch_op(x).stride())
    # Gradients: the incoming gradient's layout (as for torch's dropout), the contiguous bits.
    xg, rg = x.detach().requires_grad_(), ref.detach().requires_grad_()
    for g in (torch.ones_like(x), _layout(_randn(shape, dtype, seed=3), "permuted", perm)):
        (gx,) = torch.autograd.grad(_run(backend, op, xg), xg, g)
        (gr,) = torch.autograd.grad(_run(backend, op, rg), rg, g.contiguous())
        (gt,) = torch.autograd.grad(torch_op(xg), xg, g)
        assert same_bits(gx, gr), (name, kind)
        assert _same_layout(gx, gt), (name, kind, gx.stride(), gt.stride())


def _run(backend, op, x, seed=11):
    old = kernels.get_backend()
    kernels.set_backend(backend)
    try:
        return op(x, seed)
    finally:
        kernels.set_backend(old)


# Few examples each: 2 backends x 12 ops (x 3 inplace ops) already give hundreds of draws, and
# the full-field kernels' tile edges are covered exhaustively below.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=12)
@given(problem=problems(), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_outputs_and_gradients_keep_the_memory_format(backend, name, problem, dtype):
    _check(backend, name, *problem, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(INPLACE))
@settings(max_examples=12)
@given(problem=problems(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_inplace_writes_the_contiguous_bits_through_the_layout(backend, name, problem, dtype):
    shape, kind, perm = problem
    x = _layout(_randn(shape, dtype), kind, perm)
    want = _run(backend, OPS[name][0], x.contiguous())
    strides = x.stride()
    out = _run(backend, INPLACE[name], x)
    assert out is x and x.stride() == strides
    assert same_bits(x, want), (name, kind)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_channels_last_inputs_take_the_parallel_kernels(backend):
    """Bigger than one numba work item: the parallel broadcast kernel with strided rows."""
    x = _randn((4, 64, 30, 30)).contiguous(memory_format=CL)
    for name in ("dropout", "spatial", "alpha", "gaussian", "drop_block"):
        got, want = _run(backend, OPS[name][0], x), _run(backend, OPS[name][0], x.contiguous())
        assert same_bits(got, want) and got.is_contiguous(memory_format=CL), name


# --- numba: a full field in a non-row-major memory order takes the tiled kernel ---

# Shapes around the tile edges (numba_cpu._tile_shape): positions along w (or h*w) not a multiple
# of the tile or of 8 (Philox runs that start inside a block), more channels than a tile (_T_B),
# one channel tile exactly, a tile remainder of one; 4-D channels_last, 5-D channels_last_3d and
# a permuted layout whose innermost axis is not w.
TILED = [
    ((2, 3, 5, 7), CL), ((3, 70, 9, 11), CL), ((1, 300, 2, 37), CL), ((2, 256, 1, 65), CL),
    ((2, 5, 3, 4, 6), CL3D), ((1, 9, 7, 1, 13), CL3D), ((2, 6, 5, 9), (0, 3, 1, 2)),
]


def _tiled_input(shape, layout, dtype, seed=0):
    x = _randn(shape, dtype, seed)
    if isinstance(layout, tuple):
        return _layout(x, "permuted", layout)
    return x.contiguous(memory_format=layout)


@pytest.fixture
def no_keep_field(monkeypatch):
    """The tiled kernel draws no separate keep field: any call of numba_cpu.keep_field fails."""
    numba_cpu = importlib.import_module("dropkit.kernels.numba_cpu")

    def fail(*args, **kwargs):
        raise AssertionError("the full field was drawn separately, not by the tiled kernel")

    monkeypatch.setattr(numba_cpu, "keep_field", fail)


@pytest.mark.parametrize("shape, layout", TILED, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=str)
def test_full_field_tiled_kernel_gives_the_contiguous_bits(shape, layout, dtype, no_keep_field):
    """Plain dropout (and float32/64 alpha dropout) on the tiled kernel: the contiguous input's
    bits, in the input's layout; backward with a gradient in either layout too."""
    x = _tiled_input(shape, layout, dtype)
    ops = [OPS["dropout"][0]]
    if dtype in (torch.float32, torch.float64):  # 16-bit alpha dropout shares torch_ref's path
        ops.append(OPS["alpha"][0])
    for op in ops:
        got = _run("numba", op, x, seed=2**40 + 3)
        want = _run("numba", op, x.contiguous(), seed=2**40 + 3)
        assert same_bits(got, want) and got.stride() == x.stride(), (shape, layout)
    xg, rg = x.detach().requires_grad_(), x.contiguous().requires_grad_()
    for g in (_tiled_input(shape, layout, dtype, seed=4), _randn(shape, dtype, seed=4)):
        op = ops[0]
        (gx,) = torch.autograd.grad(_run("numba", op, xg), xg, g)
        (gr,) = torch.autograd.grad(_run("numba", op, rg), rg, g.contiguous())
        assert same_bits(gx, gr) and gx.stride() == g.stride(), (shape, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_full_field_tiled_kernel_in_place(dtype, no_keep_field):
    for shape, layout in TILED:
        x = _tiled_input(shape, layout, dtype)
        want = _run("numba", OPS["dropout"][0], x.contiguous())
        strides = x.stride()
        out = _run("numba", INPLACE["dropout"], x)
        assert out is x and x.stride() == strides and same_bits(x, want), (shape, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_full_field_tiled_kernel_does_not_depend_on_the_thread_count(dtype, no_keep_field):
    """Bigger than one work item (the parallel kernel), ragged tiles: 1 and 2 threads agree."""
    for shape, layout in (((3, 300, 11, 19), CL), ((2, 30, 5, 23, 9), CL3D)):
        x = _tiled_input(shape, layout, dtype)
        want = _run("numba", OPS["dropout"][0], x.contiguous())
        for threads in (1, 2):
            torch.set_num_threads(threads)  # restored by conftest
            got = _run("numba", OPS["dropout"][0], x)
            assert same_bits(got, want) and got.stride() == x.stride(), (shape, threads)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("kind", ["channels_last", "permuted", "sliced"])
def test_fake_impls_give_the_eager_strides(name, kind):
    """Compiled and exported graphs see the fake impls' strides: they must be eager's."""
    op, torch_op = OPS[name]
    for shape in ((2, 3, 4, 5), (2, 3, 2, 4, 3)):
        x = _layout(_randn(shape), kind, (2, 0, 3, 1) if len(shape) == 4 else (4, 1, 0, 3, 2))
        eager = op(x, 5)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(mode.from_tensor(x), 5)
        assert fake.stride() == eager.stride(), (name, kind, fake.stride(), eager.stride())
        assert _same_layout(fake, torch_op(x)), (name, kind, fake.stride())


# Inductor's first compile imports code that uses the deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["dropout", "spatial", "drop_path_add"])
def test_compiled_graphs_keep_the_memory_format(name):
    """Inductor, fullgraph: forward and backward give eager's bits and torch's layout."""
    x = _randn((2, 8, 5, 6)).contiguous(memory_format=CL).requires_grad_()
    r = _residual(x).contiguous(memory_format=CL)
    fns = {
        "dropout": (lambda t, r: DF.dropout(t, 0.4, seed=9) * 2, lambda t, r: F.dropout(t) * 2),
        "spatial": (lambda t, r: DF.spatial_dropout2d(t, 0.4, seed=9) * 2,
                    lambda t, r: F.dropout2d(t) * 2),
        "drop_path_add": (lambda t, r: DF.drop_path_add(t, r, 0.4, seed=9) * 2,
                          lambda t, r: (r + F.dropout(t)) * 2),
    }
    fn, torch_fn = fns[name]
    got = torch.compile(fn, fullgraph=True)(x, r)
    want = fn(x, r)
    assert same_bits(got, want) and _same_layout(got, torch_fn(x, r)), (name, got.stride())
    g = torch.ones_like(got)
    (gx,) = torch.autograd.grad(got, x, g)
    (gw,) = torch.autograd.grad(want, x, g)
    assert same_bits(gx, gw) and _same_layout(gx, gw), name


# --- Triton (CPU interpreter, or a GPU): the same ops through the Triton kernels ---


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("kind", ["channels_last", "permuted", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_kernels_keep_the_memory_format(monkeypatch, name, kind, dtype):
    pytest.importorskip("triton", reason="triton is not installed")
    triton_cuda = importlib.import_module("dropkit.kernels.triton_cuda")
    op, torch_op = OPS[name]
    for shape, perm in (((2, 3, 4, 5), (2, 0, 3, 1)), ((2, 3, 2, 4, 3), (4, 1, 0, 3, 2))):
        x = _layout(_randn(shape, dtype), kind, perm)
        want = _run("torch", op, x.contiguous(), seed=13)
        with monkeypatch.context() as m:  # every op to the Triton kernels (CPU: interpreter)
            m.setattr(kernels, "for_device", lambda device: triton_cuda)
            m.setattr(kernels, "uses_triton", lambda device: True)
            got = op(x, 13)
        assert same_bits(got, want), (name, kind, shape)
        assert _same_layout(got, torch_op(x)), (name, kind, got.stride(), torch_op(x).stride())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("kind", ["channels_last", "permuted"])
def test_outputs_accept_inplace_ops_as_torchs_do(backend, name, kind):
    """An op's output is not a view of a temporary: ``relu_`` on it works under autograd, as on
    torch's dropout outputs (timm's ResNet applies an in-place ReLU after DropBlock)."""
    x = _layout(_randn((2, 3, 4, 5)), kind, (0, 3, 1, 2)).requires_grad_()
    out = _run(backend, OPS[name][0], x)
    assert not out._is_view()
    out.relu_().sum().backward()
    assert x.grad is not None
