"""Backend bit-identity: numba and torch backends and the NumPy oracle give the same bits, for
every shape, dtype, seed, noise shape, memory format, thread count and in-place mode; backward
regenerates the mask and autograd keeps no input-sized tensor."""

from __future__ import annotations

import importlib
import math

import numba
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dropkit.functional as DF
import dropkit.numpy as dnp
from dropkit import rng
from dropkit.kernels import numba_cpu, torch_ref
from helpers import BACKENDS, DTYPES, run_on

NP_DTYPES = (torch.float16, torch.float32, torch.float64)  # numpy has no bfloat16
SELU_ALPHA = 1.7580993408473766
SEEDS = (0, 2**64 - 1, 0x9E3779B97F4A7C15)
PS = (0.1, 0.5, 0.9)
# (p, seed) pairs: every p and every seed appears, without the full product's cost.
P_SEEDS = [(0.1, 0), (0.5, 2**64 - 1), (0.9, 0x9E3779B97F4A7C15), (0.5, 0), (0.1, 2**64 - 1)]
AWKWARD_SHAPES = [(1,), (7,), (8,), (9,), (3, 5, 7, 9), (2, 3, 300)]

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)
probabilities = st.floats(0.0, 1.0)
seeds = st.integers(0, 2**64 - 1)
dtypes = st.sampled_from(DTYPES)


def _input(shape, dtype, seed=0):
    """Finite, NaN-free values of both signs."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)


def _noise_shapes(shape):
    """Full (None and explicit), spatial-like (N, C, 1, ...), (1, C, 1, ..., W), all ones."""
    rank = len(shape)
    out = [None, tuple(shape), (1,) * rank]
    if rank >= 2:
        out.append(tuple(shape[:2]) + (1,) * (rank - 2))
    if rank >= 3:
        out.append((1, shape[1]) + (1,) * (rank - 3) + (shape[-1],))
    valid = []
    for ns in out:
        if ns is not None and any(n == 0 for n in ns):  # a 0-sized axis can only be None
            ns = tuple(None if s == 0 else n for n, s in zip(ns, shape, strict=True))
        if ns not in valid:
            valid.append(ns)
    return valid


@st.composite
def noise_shape_for(draw, shape):
    """Per axis: shared (1), full (size), or None."""
    entries = []
    for size in shape:
        kind = draw(st.sampled_from(["one", "full", "none"]))
        if kind == "one":
            entries.append(1)
        elif kind == "full" and size > 0:
            entries.append(size)
        else:
            entries.append(None)
    return tuple(entries)


def _both(fn, *args, **kwargs):
    """``fn`` on the numba and the torch backend: both results."""
    return run_on("numba", fn, *args, **kwargs), run_on("torch", fn, *args, **kwargs)


def _assert_np_equal(got: torch.Tensor, want: np.ndarray):
    assert isinstance(want, np.ndarray), f"dropkit.numpy returned {type(want).__name__}"
    assert got.dtype == torch.from_numpy(want).dtype
    assert tuple(got.shape) == want.shape
    assert np.array_equal(got.numpy(), want), (
        f"{int((got.numpy() != want).sum())} of {want.size} elements differ"
    )


def _check_masked(name, x, p, seed, noise_shape=None, mode=None):
    """numba == torch == numpy for a masked variant (dropout or alpha_dropout)."""
    kw = {"seed": seed}
    if noise_shape is not None:
        kw["noise_shape"] = noise_shape
    if mode is not None:
        kw["mode"] = mode
    a, b = _both(getattr(DF, name), x, p, **kw)
    assert a.dtype == x.dtype and a.shape == x.shape
    assert torch.equal(a, b)
    if x.dtype in NP_DTYPES:
        _assert_np_equal(a, getattr(dnp, name)(x.numpy(), p, **kw))
    return a


# ---------------------------------------------------------------------------------------------
# dropout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
def test_dropout_backends_and_numpy_identical(shape, dtype):
    x = _input(shape, dtype)
    for ns in _noise_shapes(shape):
        for p, seed in P_SEEDS:
            y = _check_masked("dropout", x, p, seed, ns)
            decisions = math.prod(shape if ns is None else ns)
            if decisions >= 100:  # not trivially all kept or all dropped
                assert (y == 0).any() and (y != 0).any()


@given(shape=shapes, dtype=dtypes, p=probabilities, seed=seeds, data=st.data())
def test_dropout_identical_hypothesis(shape, dtype, p, seed, data):
    ns = data.draw(noise_shape_for(shape))
    mode = data.draw(st.sampled_from(["inverted", "vanilla"]))
    _check_masked("dropout", _input(shape, dtype, seed=7), p, seed, ns, mode)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_vanilla_identical(dtype):
    x = _input((3, 5, 7, 9), dtype)
    for p in PS:
        _check_masked("dropout", x, p, 5, mode="vanilla")
        _check_masked("dropout", x, p, 5, noise_shape=(3, 5, 1, 1), mode="vanilla")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_structured_variants_identical(dtype):
    """spatial 1d/2d/3d (both layouts, batched and unbatched) and timestep dropout."""
    cases = [
        (DF.spatial_dropout1d, dnp.spatial_dropout1d, [(3, 5, 7), (5, 7)]),
        (DF.spatial_dropout2d, dnp.spatial_dropout2d, [(3, 5, 4, 6), (5, 4, 6)]),
        (DF.spatial_dropout3d, dnp.spatial_dropout3d, [(2, 5, 3, 4, 3), (5, 3, 4, 3)]),
    ]
    for fn, np_fn, fn_shapes in cases:
        for shape in fn_shapes:
            x = _input(shape, dtype)
            for fmt in ("channels_first", "channels_last"):
                for p, seed in P_SEEDS:
                    kw = {"data_format": fmt, "seed": seed}
                    a, b = _both(fn, x, p, **kw)
                    assert torch.equal(a, b)
                    if dtype in NP_DTYPES:
                        _assert_np_equal(a, np_fn(x.numpy(), p, **kw))
    for shape in [(3, 5, 7), (2, 9, 3, 4), (1, 1, 1)]:
        x = _input(shape, dtype)
        for p, seed in P_SEEDS:
            a, b = _both(DF.timestep_dropout, x, p, seed=seed)
            assert torch.equal(a, b)
            if dtype in NP_DTYPES:
                _assert_np_equal(a, dnp.timestep_dropout(x.numpy(), p, seed=seed))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_matches_spec_mask(dtype):
    """The mask is the spec's keep field: kept values are x * scale, dropped exactly 0."""
    shape, p, seed = (4, 6, 33), 0.3, 99
    x = _input(shape, dtype) + 100  # no zeros in the input
    keep = torch.from_numpy(rng.keep_field(shape, p, seed))
    for y in _both(DF.dropout, x, p, seed=seed):
        assert torch.equal(y != 0, keep)
        assert torch.equal(y[keep], (x * rng.inverted_scale(rng.threshold(p)))[keep])


# ---------------------------------------------------------------------------------------------
# alpha dropout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
def test_alpha_dropout_backends_identical(shape, dtype):
    x = _input(shape, dtype)
    for ns in _noise_shapes(shape):
        for p, seed in P_SEEDS:
            a, b = _both(DF.alpha_dropout, x, p, noise_shape=ns, seed=seed)
            assert torch.equal(a, b)
            # Same mask as dropout with the same seed: exactly the dropped positions hold the
            # fill (float32/64: a kept x * a + b cannot round onto the fill for these inputs).
            dropped = DF.dropout(torch.ones_like(x), p, noise_shape=ns, seed=seed) == 0
            q = rng.effective_p(rng.threshold(p))
            scale = 1.0 / math.sqrt((SELU_ALPHA**2 * q + 1.0) * (1.0 - q))
            fill = torch.tensor(-SELU_ALPHA * scale + SELU_ALPHA * scale * q, dtype=dtype)
            assert (a[dropped] == fill).all()
            if dtype in (torch.float32, torch.float64):
                assert torch.equal(a == fill, dropped)


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
def test_alpha_dropout_matches_numpy(shape, dtype):
    x = _input(shape, dtype)
    for ns in _noise_shapes(shape):
        for p, seed in P_SEEDS:
            kw = {"noise_shape": ns, "seed": seed}
            _assert_np_equal(
                run_on("numba", DF.alpha_dropout, x, p, **kw), dnp.alpha_dropout(x.numpy(), p, **kw)
            )


@given(shape=shapes, dtype=dtypes, p=probabilities, seed=seeds, data=st.data())
def test_alpha_dropout_identical_hypothesis(shape, dtype, p, seed, data):
    ns = data.draw(noise_shape_for(shape))
    _check_masked("alpha_dropout", _input(shape, dtype, seed=3), p, seed, ns)


# ---------------------------------------------------------------------------------------------
# gaussian dropout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
def test_gaussian_dropout_backends_identical(shape, dtype):
    x = _input(shape, dtype)
    for p, seed in P_SEEDS:
        a, b = _both(DF.gaussian_dropout, x, p, seed=seed)
        assert a.dtype == dtype and a.shape == x.shape
        assert torch.equal(a, b), f"p={p} seed={seed}: {int((a != b).sum())} differ"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
def test_gaussian_dropout_matches_numpy(shape, dtype, backend):
    x = _input(shape, dtype)
    for p, seed in P_SEEDS:
        _assert_np_equal(
            run_on(backend, DF.gaussian_dropout, x, p, seed=seed),
            dnp.gaussian_dropout(x.numpy(), p, seed=seed),
        )


@given(shape=shapes, dtype=dtypes, p=probabilities, seed=seeds)
def test_gaussian_dropout_identical_hypothesis(shape, dtype, p, seed):
    x = _input(shape, dtype, seed=11)
    a, b = _both(DF.gaussian_dropout, x, p, seed=seed)
    assert torch.equal(a, b)
    if dtype in NP_DTYPES:
        _assert_np_equal(a, dnp.gaussian_dropout(x.numpy(), p, seed=seed))


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 4097, 40_000])
@pytest.mark.parametrize("seed", SEEDS)
def test_normal_field_identical(seed, count):
    """The root of gaussian_dropout's bits: both backends' stream-1 normals equal the spec's."""
    key = rng.seed_to_key(seed)
    want = rng.normal_field((count,), seed)
    for module in (numba_cpu, torch_ref):
        z = module.normal_field(key, count)
        assert z.dtype == torch.float64 and z.shape == (count,)
        assert np.array_equal(z.numpy(), want), (
            f"{module.__name__}: {int((z.numpy() != want).sum())} of {count} differ"
        )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_oracle_zero_dim_returns_ndarray(dtype):
    """A 0-d array in gives a 0-d array out (not a NumPy scalar), like the torch functions."""
    x = np.array(1.5, dtype=dtype)
    results = {
        "dropout": dnp.dropout(x, 0.5, seed=1),
        "dropout_vanilla_eval": dnp.dropout(x, 0.5, training=False, mode="vanilla"),
        "alpha_dropout": dnp.alpha_dropout(x, 0.5, seed=1),
        "gaussian_dropout": dnp.gaussian_dropout(x, 0.5, seed=1),
    }
    wrong = {k: type(v).__name__ for k, v in results.items() if not isinstance(v, np.ndarray)}
    assert not wrong, f"returned NumPy scalars: {wrong}"
    for name, value in results.items():
        assert value.shape == () and value.dtype == dtype, name


# ---------------------------------------------------------------------------------------------
# The keep field directly


KEEP_COUNTS = [0, 1, 2, 7, 8, 9, 15, 16, 17, 8191, 8192, 8193, 8 * 1024 * 16 * 3 + 5]


def _check_keep_field(count, seeds, thresholds):
    for seed in seeds:
        key = rng.seed_to_key(seed)
        u = rng.uniform16(seed, 0, count)
        for t in thresholds:
            want = torch.from_numpy(u >= t)
            a = numba_cpu.keep_field(key, t, count)
            b = torch_ref.keep_field(key, t, count)
            assert a.dtype == torch.bool and b.dtype == torch.bool
            assert a.shape == (count,) and b.shape == (count,)
            assert torch.equal(a, want)
            assert torch.equal(b, want)


@pytest.mark.parametrize("count", KEEP_COUNTS[:-1])
def test_keep_field_backends_match_spec(count):
    _check_keep_field(count, (0, 2**64 - 1, 2**32 + 17), (0, 1, rng.threshold(0.1), 32768, 65535))


def test_keep_field_across_parallel_work_items():
    """3 full numba work items (16 * 1024 blocks each) and a 5-element tail."""
    _check_keep_field(KEEP_COUNTS[-1], (2**64 - 1,), (rng.threshold(0.1),))


def test_keep_field_threshold_65536_drops_everything():
    """t = 65536 (p_eff = 1) keeps nothing: u < 65536 for every 16-bit u. The public API
    short-circuits this case, but the backends' keep_field must honour it too."""
    key = rng.seed_to_key(1)
    assert not torch_ref.keep_field(key, 65536, 20).any()
    assert not numba_cpu.keep_field(key, 65536, 20).any()


# ---------------------------------------------------------------------------------------------
# Memory formats and non-contiguous inputs


def _noncontiguous_views(x4):
    """Non-contiguous views of a 4-D tensor: channels_last, transposed, strided slice."""
    return {
        "channels_last": x4.contiguous(memory_format=torch.channels_last),
        "transposed": x4.transpose(1, 3),
        "strided": x4[:, ::2, 1:, ::3],
        "permuted": x4.permute(2, 0, 3, 1),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_memory_formats_equal_contiguous(backend, dtype):
    base = _input((4, 6, 5, 9), dtype)
    for name, view in _noncontiguous_views(base).items():
        assert not view.is_contiguous(), name
        ref = view.contiguous()
        for fn, kw in [
            (DF.dropout, {}),
            (DF.dropout, {"noise_shape": (view.shape[0], view.shape[1], 1, 1)}),
            (DF.spatial_dropout2d, {}),
            (DF.spatial_dropout2d, {"data_format": "channels_last"}),
            (DF.alpha_dropout, {}),
            (DF.gaussian_dropout, {}),
        ]:
            got = run_on(backend, fn, view, 0.4, seed=21, **kw)
            want = run_on(backend, fn, ref, 0.4, seed=21, **kw)
            # the memory format is kept (torch.preserve_format), the values are the same
            assert got.stride() == torch.empty_like(view).stride(), (name, fn.__name__)
            assert torch.equal(got, want), (name, fn.__name__, kw)


# ---------------------------------------------------------------------------------------------
# Thread-count independence


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [("numba", torch.float32), ("numba", torch.float16), ("torch", torch.float32)],
    ids=str,
)
def test_thread_count_independent(backend, dtype):
    n = 2**20 + 3  # = 7 * 163 * 919: several parallel work items and a ragged tail
    x = _input((n,), dtype)
    cases = [
        (DF.dropout, x, {}),
        (DF.spatial_dropout1d, x.reshape(7, 163, 919), {}),
        (DF.spatial_dropout1d, x.reshape(7, 163, 919), {"data_format": "channels_last"}),
        (DF.spatial_dropout2d, x.reshape(7, 163, 1, 919), {}),
        (DF.alpha_dropout, x, {}),
    ]
    for fn, inp, kw in cases:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(run_on(backend, fn, inp, 0.3, seed=2**63 + 5, **kw))
            if backend == "numba":  # numba follows torch's thread count
                assert numba.get_num_threads() == min(threads, numba.config.NUMBA_NUM_THREADS)
        assert torch.equal(results[0], results[1]), fn.__name__


def test_numba_runs_with_two_threads():
    """The thread-count test above is only meaningful if numba can use 2 threads here."""
    assert numba.config.NUMBA_NUM_THREADS >= 2


# ---------------------------------------------------------------------------------------------
# In place


INPLACE_CASES = [
    ("dropout", DF.dropout, {}),
    ("dropout_noise_shape", DF.dropout, {"noise_shape": (1, 6, 1, 9)}),
    ("dropout_vanilla", DF.dropout, {"mode": "vanilla"}),
    ("spatial2d", DF.spatial_dropout2d, {}),
    ("spatial2d_last", DF.spatial_dropout2d, {"data_format": "channels_last"}),
    ("timestep", DF.timestep_dropout, {}),
    ("alpha", DF.alpha_dropout, {}),
    ("gaussian", DF.gaussian_dropout, {}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "fn", "kw"), INPLACE_CASES, ids=[c[0] for c in INPLACE_CASES])
def test_inplace_equals_out_of_place(backend, dtype, name, fn, kw):
    for p in (0.3, 1.0):
        x = _input((4, 6, 5, 9), dtype)
        want = run_on(backend, fn, x, p, seed=8, **kw)
        y = x.clone()
        out = run_on(backend, fn, y, p, inplace=True, seed=8, **kw)
        assert out is y
        assert torch.equal(y, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "fn", "kw"), INPLACE_CASES, ids=[c[0] for c in INPLACE_CASES])
def test_inplace_noncontiguous(backend, dtype, name, fn, kw):
    base = _input((8, 6, 5, 18), dtype)

    def view_of(t):
        return t[::2, :, :, ::2]  # shape (4, 6, 5, 9), non-contiguous

    want = run_on(backend, fn, view_of(base), 0.3, seed=8, **kw)
    y = base.clone()
    v = view_of(y)
    assert not v.is_contiguous()
    out = run_on(backend, fn, v, 0.3, inplace=True, seed=8, **kw)
    assert out is v
    assert torch.equal(v, want)
    # Elements outside the view are untouched.
    untouched = torch.ones_like(base, dtype=torch.bool)
    view_of(untouched).fill_(False)
    assert torch.equal(y[untouched], base[untouched])


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_with_autograd(backend):
    """In place on a tensor that needs a gradient: same values and gradient as out of place."""
    leaf = _input((5, 7, 9), torch.float32).requires_grad_()
    want = run_on(backend, DF.dropout, leaf * 1, 0.4, seed=3)
    (g_want,) = torch.autograd.grad(want.sum(), leaf)
    h = leaf * 1
    out = run_on(backend, DF.dropout, h, 0.4, inplace=True, seed=3)
    assert out is h
    assert torch.equal(out, want)
    (g_got,) = torch.autograd.grad(out.sum(), leaf)
    assert torch.equal(g_got, g_want)


# ---------------------------------------------------------------------------------------------
# Backward regenerates the mask; autograd saves only the key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_regenerates_mask(backend, dtype):
    shape = (6, 5, 4, 7)
    for p in (0.1, 0.5, 0.9):
        for seed in SEEDS:
            x = _input(shape, dtype).requires_grad_()
            out = run_on(backend, DF.dropout, x, p, seed=seed)
            (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
            ones_out = run_on(backend, DF.dropout, torch.ones(shape, dtype=dtype), p, seed=seed)
            scale = rng.inverted_scale(rng.threshold(p))
            assert grad.dtype == dtype
            assert torch.equal(grad, (ones_out != 0).to(dtype) * scale)
            assert torch.equal(grad, ones_out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_of_other_variants(backend, dtype):
    p, seed = 0.3, 12
    ones = torch.ones(3, 4, 5, 6, dtype=dtype)
    variants = [
        (DF.spatial_dropout2d, {}),
        (DF.spatial_dropout2d, {"data_format": "channels_last"}),
        (DF.timestep_dropout, {}),
        (DF.dropout, {"noise_shape": (3, 1, 5, 1)}),
        (DF.dropout, {"mode": "vanilla"}),
        (DF.gaussian_dropout, {}),
    ]
    for fn, kw in variants:
        x = _input(ones.shape, dtype).requires_grad_()
        out = run_on(backend, fn, x, p, seed=seed, **kw)
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
        # d(out)/dx is the output for an all-ones input (a linear map of x).
        assert torch.equal(grad, run_on(backend, fn, ones, p, seed=seed, **kw)), fn.__name__
    # Alpha dropout: gradient a on kept positions (dropout's mask), 0 on dropped ones.
    x = _input(ones.shape, dtype).requires_grad_()
    out = run_on(backend, DF.alpha_dropout, x, p, seed=seed)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    keep = run_on(backend, DF.dropout, ones, p, seed=seed) != 0
    q = rng.effective_p(rng.threshold(p))
    a = 1.0 / math.sqrt((SELU_ALPHA**2 * q + 1.0) * (1.0 - q))
    assert torch.equal(grad, keep.to(dtype) * a)


SAVED_CASES = [
    ("dropout", DF.dropout, (32, 16, 8, 8), {}),
    ("dropout_noise_shape", DF.dropout, (32, 16, 8, 8), {"noise_shape": (32, 16, 1, 1)}),
    ("spatial1d", DF.spatial_dropout1d, (32, 16, 64), {}),
    ("spatial2d", DF.spatial_dropout2d, (32, 16, 8, 8), {}),
    ("spatial3d", DF.spatial_dropout3d, (8, 16, 4, 8, 8), {}),
    ("timestep", DF.timestep_dropout, (32, 16, 64), {}),
    ("alpha", DF.alpha_dropout, (32, 16, 8, 8), {}),
    ("gaussian", DF.gaussian_dropout, (32, 16, 8, 8), {}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "fn", "shape", "kw"), SAVED_CASES, ids=[c[0] for c in SAVED_CASES]
)
def test_autograd_saves_only_the_key(backend, name, fn, shape, kw):
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    x = _input(shape, torch.float32).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run_on(backend, fn, x, 0.5, seed=4, **kw)
    assert saved, "the op saved nothing: the hook did not see the key"
    assert max(saved) <= 2, saved
    out.backward(torch.ones_like(out))
    assert x.grad is not None and x.grad.shape == x.shape


def test_first_parallel_kernel_keeps_torch_thread_count():
    """Launching numba's OpenMP pool resets the process' OpenMP thread count; the kernels
    restore torch's, so a user's torch.set_num_threads(1) holds (fresh process: the pool is
    launched once)."""
    import subprocess
    import sys

    code = (
        "import torch, dropkit.functional as DF\n"
        "torch.set_num_threads(1)\n"
        "DF.dropout(torch.ones(2**20), 0.5)\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


# ---------------------------------------------------------------------------------------------
# Gaussian noise: the fused numba kernel (stream 1 Box-Muller + x * (1 + std * z))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (so -0.0 != 0.0 and NaNs compare by payload)."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_numba_box_muller_on_chosen_and_random_words():
    """The kernel's scalar Box-Muller equals the spec's on edge words (0, 0xFFFFFFFF, the
    quadrant boundaries) in both positions and on 300k random pairs: 600k+ values, bit for bit."""
    edge = np.array([0, 1, 2, 0x1FFFFFFF, 0x20000000, 0x3FFFFFFF, 0x40000000, 0x7FFFFFFF,
                     0x80000000, 0xBFFFFFFF, 0xC0000000, 0xFFFFFFFE, 0xFFFFFFFF], dtype=np.uint32)
    ra, rb = (w.ravel() for w in np.meshgrid(edge, edge))
    words = np.random.default_rng(5).integers(0, 2**32, size=(2, 300_000), dtype=np.uint32)
    ra, rb = np.concatenate([ra, words[0]]), np.concatenate([rb, words[1]])
    got = numba_cpu.box_muller_words(ra, rb)
    want = rng.box_muller(ra.astype(np.float64), rb.astype(np.float64))
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.view(np.uint64), w.view(np.uint64)), int((g != w).sum())
    assert got[0][edge.size - 1] == 0.0  # ra = 0xFFFFFFFF: u1 = 1, radius 0


@pytest.mark.parametrize("count", [5 * 4 * numba_cpu._GAUSS_ITEM + 3, 2**19 + 2])
def test_normal_field_parallel_path_matches_spec(count):
    """Fields spanning several parallel work items (ragged tails) equal the spec bit for bit."""
    seed = 0xDEADBEEF12345
    z = numba_cpu.normal_field(rng.seed_to_key(seed), count).numpy()
    assert np.array_equal(z.view(np.uint64), rng.normal_field((count,), seed).view(np.uint64))


def _gaussian_reference(x, key, std):
    """dropkit::gaussian_mul's reference expression, on torch_ref's noise."""
    z = torch_ref.normal_field(key, x.numel()).reshape(x.shape)
    ct = torch_ref.compute_dtype(x.dtype)
    return (x.to(ct) * (1.0 + std * z).to(ct)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fused_gaussian_equals_reference_expression(dtype):
    n = 3 * 4 * numba_cpu._GAUSS_ITEM + 5  # parallel path with a ragged tail
    x = _input((n,), dtype)
    x[:4] = torch.tensor([0.0, -0.0, 1e-30, -1e30], dtype=dtype)
    for std in (0.0, 0.1, 1.0, 99.5):
        for key in ((0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (123, 456)):
            for inp in (x[:7], x[:4099], x):  # serial and parallel paths
                got = numba_cpu.gaussian(inp, key, std)
                assert got.dtype == dtype and got.shape == inp.shape and got.is_contiguous()
                assert torch.equal(_bits(got), _bits(_gaussian_reference(inp, key, std)))
    strided = x[: 2 * 4099].reshape(2, 4099).t()  # not contiguous: logical order counts
    want = _gaussian_reference(strided, (7, 8), 0.5)
    assert torch.equal(_bits(numba_cpu.gaussian(strided, (7, 8), 0.5)), _bits(want))


def test_fused_gaussian_leaves_16_bit_floats_to_the_reference():
    for dtype in (torch.float16, torch.bfloat16):
        assert numba_cpu.gaussian(torch.ones(5, dtype=dtype), (1, 2), 0.5) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gaussian_dropout_backends_identical_large(dtype):
    x = _input((5, 4 * numba_cpu._GAUSS_ITEM + 1), dtype)
    for p, seed in P_SEEDS:
        a, b = _both(DF.gaussian_dropout, x, p, seed=seed)
        assert torch.equal(_bits(a), _bits(b)), f"p={p} seed={seed}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gaussian_dropout_thread_count_independent(dtype):
    x = _input((2**18 + 3,), dtype)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(run_on("numba", DF.gaussian_dropout, x, 0.3, seed=2**63 + 5))
        assert numba.get_num_threads() == min(threads, numba.config.NUMBA_NUM_THREADS)
    assert torch.equal(_bits(results[0]), _bits(results[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gaussian_dropout_gradient_backends_identical(dtype):
    """Backward is the same op on the gradient: equal on both backends, and with upstream
    ones it is the rounded factor, i.e. gaussian_dropout of ones."""
    shape = (3, 4 * numba_cpu._GAUSS_ITEM + 7)
    upstream = _input(shape, dtype, seed=3)
    grads = []
    for backend in BACKENDS:
        x = _input(shape, dtype).requires_grad_()
        out = run_on(backend, DF.gaussian_dropout, x, 0.4, seed=99)
        (grad,) = run_on(backend, torch.autograd.grad, out, x, upstream, retain_graph=True)
        grads.append(grad)
        ones = run_on(backend, DF.gaussian_dropout, torch.ones(shape, dtype=dtype), 0.4, seed=99)
        (g1,) = run_on(backend, torch.autograd.grad, out, x, torch.ones_like(out))
        assert torch.equal(_bits(g1), _bits(ones))
    assert torch.equal(_bits(grads[0]), _bits(grads[1]))


def test_triton_self_check_accepts_the_kernels_and_falls_back_when_they_disagree(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    from dropkit import kernels

    triton_cuda = importlib.import_module("dropkit.kernels.triton_cuda")
    device = torch.device("cpu", 0)  # the check is device-generic; CUDA is where it runs
    monkeypatch.setattr(kernels, "_triton_ok", {})
    assert kernels._triton_checked(device)  # the real kernels (interpreter here) agree
    monkeypatch.setattr(kernels, "_triton_ok", {})
    monkeypatch.setattr(triton_cuda, "keep_field",
                        lambda key, t, count, device=None: torch.zeros(count, dtype=torch.bool))
    with pytest.warns(UserWarning, match="disagree with the mask spec on cpu:0"):
        assert not kernels._triton_checked(device)
    assert not kernels._triton_checked(device)  # decided once per device, no second warning
    monkeypatch.setattr(kernels, "_triton_ok", {})
    kernels.set_backend("triton")  # asked for explicitly: an error, not a silent fallback
    with pytest.raises(RuntimeError, match="Triton keep field differs"):
        kernels._triton_checked(device)


def test_cpu_tensors_never_use_triton():
    from dropkit import kernels

    for name in ("auto", "triton", "numba"):
        kernels.set_backend(name)
        assert not kernels.uses_triton(torch.device("cpu"))
        assert kernels.for_device(torch.device("cpu")).__name__.endswith("numba_cpu")


@pytest.mark.parametrize(("shape", "noise_shape", "sizes", "strides"), [
    ((2, 3, 4, 5), (2, 3, 1, 1), [6, 20], [1, 0]),
    ((2, 4, 5, 3), (2, 1, 1, 3), [2, 20, 3], [3, 0, 1]),
    ((2, 3, 4, 5), (1, 3, 1, 5), [2, 3, 4, 5], [0, 5, 0, 1]),
    ((2, 1, 4, 5), (2, 1, 4, 5), [40], [1]),
    ((2, 3, 4, 5), (1, 1, 1, 1), [120], [0]),
    ((1, 1), (1, 1), [1], [1]),
])
def test_collapse(shape, noise_shape, sizes, strides):
    assert torch_ref.collapse(shape, noise_shape) == (sizes, strides)


def test_collapse_rejects_a_noise_shape_that_does_not_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        torch_ref.collapse((2, 3), (2, 2))
