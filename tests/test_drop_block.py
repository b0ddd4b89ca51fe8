"""DropBlock 1d/2d/3d: the calibration, the seed field, the block mask, every backend's bits,
the scaling modes, gradients, arguments, modules and ``torch.compile``.

The oracle is the NumPy reference ``dropkit._drop_block_numpy`` (``docs/dropblock.md``), itself
checked here against brute force: coverage counts by enumerating block starts, block masks by
painting each seed's block, and the expected dropped fraction by enumerating every seed pattern
of small maps.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import _drop_block as DB
from dropkit import _drop_block_numpy as R
from dropkit import rng
from dropkit.nn.drop_block import DropBlock1d, DropBlock2d, DropBlock3d
from helpers import run_on

FUNCS = {1: DB.drop_block1d, 2: DB.drop_block2d, 3: DB.drop_block3d}
NP_FUNCS = {1: R.drop_block1d, 2: R.drop_block2d, 3: R.drop_block3d}
MODULES = {1: DropBlock1d, 2: DropBlock2d, 3: DropBlock3d}
BACKENDS = ("numba", "torch")
SCALES = ("batch", "expected", "none")
compile_warning = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


# --------------------------------------------------------------------------------------------
# Brute-force oracles
# --------------------------------------------------------------------------------------------


def brute_coverage(spatial, block):
    """c(u) for every unit, by enumerating the valid block starts."""
    c = np.zeros(spatial, dtype=np.int64)
    starts = [range(s - b + 1) for s, b in zip(spatial, block, strict=True)]
    for start in itertools.product(*starts):
        c[tuple(slice(s, s + b) for s, b in zip(start, block, strict=True))] += 1
    return c


def brute_keep(seeds, block):
    """Keep mask of a seed field (N, C, *starts) by painting every seed's whole block."""
    n, c, *starts = seeds.shape
    spatial = tuple(v + b - 1 for v, b in zip(starts, block, strict=True))
    dropped = np.zeros((n, c, *spatial), dtype=bool)
    for idx in zip(*np.nonzero(seeds), strict=True):
        box = tuple(slice(s, s + b) for s, b in zip(idx[2:], block, strict=True))
        dropped[(idx[0], idx[1], *box)] = True
    return ~dropped


def clipped(spatial, block):
    block = (block,) * len(spatial) if isinstance(block, int) else block
    return tuple(min(b, s) for b, s in zip(block, spatial, strict=True))


def reference_keep(shape, block, p, seed, per_channel=True, channels_last=False):
    """Keep mask (N, C or 1, *spatial) of the spec for an input of ``shape``."""
    d = len(block) if isinstance(block, tuple) else len(shape) - 2
    n, c, spatial = R.layout(tuple(shape), d, channels_last)
    cal = R.calibrate(spatial, block, p)
    return R.keep_mask(n, c, spatial, cal, per_channel, seed), cal


def lipschitz_bound(spatial, block):
    """|f(gamma_eff) - p| <= |f(gamma_eff) - f(gamma)| + |f(gamma) - p|, and f's slope is at
    most mean(c), |gamma_eff - gamma| <= 2**-33, the solver's residual <= 1e-12."""
    values, counts = R.coverage_histogram(spatial, clipped(spatial, block))
    return float(values @ counts / counts.sum()) * 2.0**-33 + 1e-12


# --------------------------------------------------------------------------------------------
# The spec: Philox stream, coverage, block mask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 2**64 - 1, 0x0123456789ABCDEF])
def test_seed_field_numbering_and_stream(seed):
    # Element i reads word r[i % 4] of the block with counter (i // 4, 0, 2, 0).
    k0, k1 = rng.seed_to_key(seed)
    shape = (2, 3, 3, 5)  # 90 elements: 22.5 blocks, the last one partly used
    t = 2**31 + 12345
    words = []
    for n in range(23):
        words.extend(rng.philox4x32(n, 0, 2, 0, k0, k1))
    expected = (np.array(words[:90], dtype=np.int64) < t).reshape(shape)
    assert np.array_equal(R.seed_field(shape, t, seed), expected)
    assert R.STREAM_DROPBLOCK not in (rng.STREAM_BERNOULLI, rng.STREAM_NORMAL)
    # The torch path draws the same words on its own.
    got = DB.seed_field((k0, k1), shape, t)
    assert torch.equal(got, torch.from_numpy(expected))
    # The worked example of docs/dropblock.md.
    if seed == 0:
        words = [0x0661D677, 0xB6826759, 0x262148C6, 0x773C5FF0,
                 0x78130EFF, 0x2299A390, 0xD8704C11, 0x6CDCEDC3]
        assert R.seed_words(0, 8).tolist() == words
        assert R.seed_field((1, 1, 2, 4), 2**31, 0).astype(int).tolist() == [
            [[[1, 0, 1, 1], [1, 1, 0, 1]]]]
    # Thresholds 0 and 2**32 give no seeds and all seeds.
    assert not R.seed_field(shape, 0, seed).any() and R.seed_field(shape, 2**32, seed).all()


@given(
    spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    data=st.data(),
)
def test_coverage_histogram_and_fraction_match_brute_force(spatial, data):
    spatial = tuple(spatial)
    block = tuple(data.draw(st.integers(1, s)) for s in spatial)
    c = brute_coverage(spatial, block)
    values, counts = R.coverage_histogram(spatial, block)
    uniq, cnt = np.unique(c, return_counts=True)
    assert values.tolist() == uniq.tolist() and counts.tolist() == cnt.tolist()
    gamma = data.draw(st.floats(0.0, 1.0))
    assert math.isclose(R.drop_fraction(spatial, block, gamma),
                        1.0 - float(np.mean((1.0 - gamma) ** c)), rel_tol=1e-12, abs_tol=1e-15)


@given(
    spatial=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**64 - 1),
    data=st.data(),
)
def test_block_mask_is_union_of_seeded_blocks(spatial, channels, seed, data):
    # Every dropped unit lies in the full block of a seeded start, every seeded start's block is
    # fully dropped, and nothing else is: numpy, torch and numba against painting each block.
    spatial = tuple(spatial)
    block = tuple(data.draw(st.integers(1, s)) for s in spatial)
    starts = tuple(s - b + 1 for s, b in zip(spatial, block, strict=True))
    t = data.draw(st.sampled_from([2**28, 2**30, 2**31]))
    seeds = R.seed_field((2, channels, *starts), t, seed)
    expected = brute_keep(seeds, block)
    assert np.array_equal(R.block_keep_mask(seeds, block), expected)
    got = DB.block_keep_mask(torch.from_numpy(seeds), block)
    assert torch.equal(got, torch.from_numpy(expected))
    from dropkit.kernels import drop_block_numba as K

    cal = R.Calibration(block, 0.0, t, t / 2**32, 0.0)
    keep, ones = K.keep_mask(rng.seed_to_key(seed), cal, 2 * channels, spatial)
    assert np.array_equal(keep.reshape(expected.shape).astype(bool), expected)
    assert ones == int(expected.sum())


def test_even_blocks_cover_exactly_b_units_from_their_start():
    seeds = np.zeros((1, 1, 7, 5), dtype=bool)
    seeds[0, 0, 2, 1] = True
    keep = R.block_keep_mask(seeds, (4, 2))  # map 10 x 6
    dropped = np.argwhere(~keep[0, 0])
    assert dropped.min(0).tolist() == [2, 1] and dropped.max(0).tolist() == [5, 2]
    assert len(dropped) == 8


# --------------------------------------------------------------------------------------------
# Calibration: the formula
# --------------------------------------------------------------------------------------------

PS = (0.01, 0.05, 0.1, 0.25, 0.5)


def check_calibration(spatial, block, p):
    cal = R.calibrate(spatial, block, p)
    assert cal.block == clipped(spatial, block)
    assert cal.threshold == math.floor(cal.gamma * 2**32 + 0.5)
    assert cal.gamma_eff == cal.threshold / 2**32
    # The solver solves f(gamma) = p to float64 precision...
    assert abs(R.drop_fraction(spatial, cal.block, cal.gamma) - p) <= 1e-12
    # ...and quantizing gamma to 32 bits moves f by at most mean(c) * 2**-33.
    assert abs(cal.expected - p) <= lipschitz_bound(spatial, block)
    assert abs(cal.expected - p) <= 0.03 * p  # the requirement; really ~1e-6 or better
    assert cal.expected == R.drop_fraction(spatial, cal.block, cal.gamma_eff)
    return cal


def test_calibration_every_1d_map_and_block():
    worst = 0.0
    for length in range(1, 65):
        for b in range(1, length + 1):
            for p in PS:
                cal = check_calibration((length,), b, p)
                worst = max(worst, abs(cal.expected - p) / p)
    assert worst < 1e-5


def test_calibration_every_square_2d_map_and_block():
    worst = 0.0
    for length in range(1, 65):
        for b in range(1, length + 1):
            for p in (0.01, 0.1, 0.5):
                cal = check_calibration((length, length), b, p)
                worst = max(worst, abs(cal.expected - p) / p)
    assert worst < 1e-5


@given(
    spatial=st.lists(st.integers(1, 64), min_size=2, max_size=3),
    p=st.floats(0.01, 0.5),
    data=st.data(),
)
@settings(max_examples=100)
def test_calibration_rectangular_2d_3d(spatial, p, data):
    spatial = tuple(spatial)
    block = tuple(data.draw(st.integers(1, s)) for s in spatial)
    check_calibration(spatial, block, p)


def test_calibration_limits_and_clipping():
    # A block as large as the map: one start, so gamma = p exactly (SpatialDropout).
    cal = R.calibrate((7, 7), 7, 0.1)
    assert cal.gamma == pytest.approx(0.1, rel=1e-14) and cal.expected == cal.gamma_eff
    # Larger than the map: clipped per axis, the same calibration.
    assert R.calibrate((7, 5), (9, 100), 0.3) == R.calibrate((7, 5), (7, 5), 0.3)
    # block 1 is dropout: gamma = p.
    assert R.calibrate((13, 4), 1, 0.25).gamma == pytest.approx(0.25, rel=1e-14)
    assert R.calibrate((8,), 3, 0.0).threshold == 0
    assert R.calibrate((8,), 3, 1.0).threshold == 2**32
    # p close to 1 still solves (the fraction is monotone up to 1).
    cal = R.calibrate((64,), 7, 0.999)
    assert abs(cal.expected - 0.999) < 1e-8
    # A big 3-D map solves from its histogram (cheap) and is cached.
    cal = R.calibrate((64, 64, 64), (32, 32, 32), 0.1)
    assert abs(cal.expected - 0.1) <= lipschitz_bound((64, 64, 64), (32, 32, 32))
    assert R.calibrate((64, 64, 64), (32, 32, 32), 0.1) is cal


@pytest.mark.parametrize(("spatial", "block"), [((4,), (2,)), ((6,), (3,)), ((3, 4), (2, 2)),
                                                ((5, 3), (3, 1)), ((2, 3, 3), (1, 2, 2))])
def test_expected_fraction_by_enumerating_every_seed_pattern(spatial, block):
    # E[dropped fraction] = sum over all seed patterns of P(pattern) * fraction: independent of
    # the coverage formula.
    cal = R.calibrate(spatial, block, 0.3)
    g = cal.gamma_eff
    starts = tuple(s - b + 1 for s, b in zip(spatial, block, strict=True))
    m = math.prod(starts)
    total = 0.0
    for bits in itertools.product((0, 1), repeat=m):
        seeds = np.array(bits, dtype=bool).reshape((1, 1, *starts))
        k = sum(bits)
        total += g**k * (1 - g) ** (m - k) * (1.0 - brute_keep(seeds, block).mean())
    assert total == pytest.approx(cal.expected, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Calibration: realized fractions
# --------------------------------------------------------------------------------------------


def realized(d, spatial, block, p, planes, seed, per_channel=True):
    """Per-plane dropped fractions of ``planes`` independent planes (ones input)."""
    x = torch.ones((planes, 1, *spatial))
    y = FUNCS[d](x, p, block, per_channel=per_channel, scale="none", seed=seed)
    return (y == 0).reshape(planes, -1).double().mean(1)


def assert_mean_fraction(fractions, expected, sigmas=4.0):
    """The mean of i.i.d. per-plane fractions is within ``sigmas`` standard errors (the sample
    standard deviation over sqrt(number of planes)) of ``expected``."""
    k = fractions.numel()
    mean = fractions.mean().item()
    se = fractions.std().item() / math.sqrt(k)
    assert abs(mean - expected) <= sigmas * se + 1e-12, (
        f"mean {mean:.5f} over {k} planes, expected {expected:.5f} +- {sigmas} * {se:.5f}"
    )
    return mean, se


UNITS = 500_000  # units per configuration: planes = UNITS // plane size


@given(length=st.integers(1, 64), p=st.floats(0.02, 0.5), seed=st.integers(0, 2**64 - 1),
       data=st.data())
@settings(max_examples=80)
def test_realized_fraction_1d(length, p, seed, data):
    b = data.draw(st.integers(1, length))
    cal = R.calibrate((length,), b, p)
    assert_mean_fraction(realized(1, (length,), b, p, UNITS // length, seed), cal.expected)


@given(h=st.integers(1, 64), w=st.integers(1, 64), p=st.floats(0.02, 0.5),
       seed=st.integers(0, 2**64 - 1), data=st.data())
@settings(max_examples=80)
def test_realized_fraction_2d(h, w, p, seed, data):
    block = (data.draw(st.integers(1, h)), data.draw(st.integers(1, w)))
    cal = R.calibrate((h, w), block, p)
    planes = max(200, UNITS // (h * w))
    assert_mean_fraction(realized(2, (h, w), block, p, planes, seed), cal.expected)


@given(spatial=st.lists(st.integers(1, 24), min_size=3, max_size=3), p=st.floats(0.02, 0.5),
       seed=st.integers(0, 2**64 - 1), data=st.data())
@settings(max_examples=20)
def test_realized_fraction_3d(spatial, p, seed, data):
    spatial = tuple(spatial)
    block = tuple(data.draw(st.integers(1, s)) for s in spatial)
    cal = R.calibrate(spatial, block, p)
    planes = max(200, UNITS // math.prod(spatial))
    assert_mean_fraction(realized(3, spatial, block, p, planes, seed), cal.expected)


@pytest.mark.parametrize(("spatial", "block", "p"), [
    ((14, 14), 7, 0.1), ((7, 7), 5, 0.2), ((7, 7), 7, 0.1), ((28, 28), 7, 0.1),
    ((10,), 4, 0.3), ((9, 12, 5), (3, 4, 2), 0.15),
])
def test_realized_fraction_within_3_percent_with_tight_sample(spatial, block, p):
    # Enough planes that 4 standard errors are inside 3% of p: the realized rate hits p.
    d = len(spatial)
    planes = 12_000_000 // math.prod(spatial)
    fractions = realized(d, spatial, block, p, planes, seed=11)
    mean, se = assert_mean_fraction(fractions, R.calibrate(spatial, block, p).expected)
    assert 4 * se < 0.03 * p
    assert abs(mean - p) <= 0.03 * p


@pytest.mark.parametrize("scale", SCALES)
def test_realized_fraction_shared_mask(scale):
    # One mask per sample, shared by its channels: the same expected fraction.
    planes, spatial, block, p = 20_000, (13, 9), (4, 3), 0.2
    y = DB.drop_block2d(torch.ones(planes, 3, *spatial), p, block, per_channel=False,
                        scale=scale, seed=8)
    assert (y == y[:, :1]).all()
    fractions = (y[:, 0] == 0).reshape(planes, -1).double().mean(1)
    assert_mean_fraction(fractions, R.calibrate(spatial, block, p).expected)


def article_fraction(spatial, b, p, planes, seed):
    """The seed article's DropBlock: gamma = p / b**2, seeds over the whole map, blocks
    centred on them (max_pool with padding b // 2, cropped for even b)."""
    gen = np.random.default_rng(seed)
    seeds = gen.random((planes, 1, *spatial)) < p / b**2
    # max_pool (kernel b, padding b // 2, cropped to the map) drops u from a seed at s iff
    # s - b + 1 + b // 2 <= u <= s + b // 2. As starts of a map padded by b - 1 at the end,
    # that block begins at s: crop from b - 1 - b // 2.
    pad = [(0, 0), (0, 0)] + [(0, b - 1)] * len(spatial)
    keep = R.block_keep_mask(np.pad(seeds, pad), (b,) * len(spatial))
    lo = b - 1 - b // 2
    crop = (slice(None), slice(None), *(slice(lo, lo + s) for s in spatial))
    return torch.from_numpy(1.0 - keep[crop].reshape(planes, -1).mean(1))


def test_seed_article_gamma_is_caught():
    # 14 x 14 map, block 7, p = 0.1: the article's gamma = p / 49 drops about 7.5%, and the same
    # gamma with paper-faithful valid seeds drops about 3%; the calibrated rate drops 10%. The
    # statistical check used above (4 standard errors around the expected fraction) rejects both.
    spatial, b, p, planes = (14, 14), 7, 0.1, 8000
    ours = realized(2, spatial, b, p, planes, seed=5)
    mean, _ = assert_mean_fraction(ours, R.calibrate(spatial, b, p).expected)
    assert abs(mean - p) < 0.03 * p
    article = article_fraction(spatial, b, p, planes, seed=5)
    se = article.std().item() / math.sqrt(planes)
    assert abs(article.mean().item() - p) > 0.1 * p + 4 * se
    with pytest.raises(AssertionError, match=re.escape("expected 0.10000")):
        assert_mean_fraction(article, p)
    # Valid-region seeds with the uncalibrated gamma: f(p / 49) is far below p.
    naive = R.drop_fraction(spatial, (b, b), p / b**2)
    assert naive < 0.35 * p
    x = torch.ones(planes, 1, *spatial)
    cal = R.Calibration((b, b), p / b**2, round(p / b**2 * 2**32), p / b**2, naive)
    y = DB._torch_path(x, (5, 0), cal, planes, 1, spatial, True, "none", False)
    fractions = (y == 0).reshape(planes, -1).double().mean(1)
    with pytest.raises(AssertionError, match=re.escape("expected 0.10000")):
        assert_mean_fraction(fractions, p)
    assert_mean_fraction(fractions, naive)


# --------------------------------------------------------------------------------------------
# Masks: torch equals the spec; backends agree bit for bit
# --------------------------------------------------------------------------------------------


def reference_output(x, d, p, block, per_channel, scale, data_format, seed):
    return torch.from_numpy(NP_FUNCS[d](x.numpy(), p, block, per_channel=per_channel,
                                        scale=scale, data_format=data_format, seed=seed))


SHAPES = {1: (3, 4, 23), 2: (2, 3, 11, 9), 3: (2, 2, 6, 5, 7)}
BLOCKS = {1: [1, 4, 7, 40], 2: [3, (2, 5), (20, 1)], 3: [2, (1, 3, 2), (6, 9, 3)]}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_backends_match_reference_bit_for_bit(backend, d):
    gen = torch.Generator().manual_seed(d)
    for block, per_channel, scale, dtype, data_format, batched in itertools.product(
        BLOCKS[d], (True, False), SCALES, (torch.float16, torch.float32, torch.float64),
        ("channels_first", "channels_last"), (True, False),
    ):
        shape = SHAPES[d] if batched else SHAPES[d][1:]
        x = torch.randn(shape, generator=gen).to(dtype)
        kwargs = dict(per_channel=per_channel, scale=scale, data_format=data_format)
        got = run_on(backend, FUNCS[d], x, 0.3, block, seed=99, **kwargs)
        want = reference_output(x, d, 0.3, block, per_channel, scale, data_format, 99)
        assert torch.equal(got, want), (block, per_channel, scale, dtype, data_format, batched)
        assert got.is_contiguous()


@pytest.mark.parametrize("d", [1, 2, 3])
def test_bfloat16_backends_agree(d):
    x = torch.randn(SHAPES[d]).to(torch.bfloat16)
    for scale, per_channel in itertools.product(SCALES, (True, False)):
        a, b = (run_on(be, FUNCS[d], x, 0.25, 3, per_channel=per_channel, scale=scale, seed=4)
                for be in BACKENDS)
        assert torch.equal(a, b)
        keep, _ = reference_keep(SHAPES[d], 3, 0.25, 4, per_channel)
        assert torch.equal(a != 0, torch.from_numpy(keep).expand(SHAPES[d]) & (x != 0))


@given(
    d=st.integers(1, 3),
    n=st.integers(0, 3),
    c=st.integers(1, 4),
    sizes=st.lists(st.integers(1, 10), min_size=3, max_size=3),
    blocks=st.lists(st.integers(1, 12), min_size=3, max_size=3),
    p=st.floats(0.0, 1.0),
    per_channel=st.booleans(),
    scale=st.sampled_from(SCALES),
    last=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_backends_agree_property(d, n, c, sizes, blocks, p, per_channel, scale, last, seed):
    shape = (n, *sizes[:d], c) if last else (n, c, *sizes[:d])
    if n == 0:
        shape = shape[1:]  # unbatched
    x = torch.randn(shape)
    kwargs = dict(per_channel=per_channel, scale=scale, seed=seed,
                  data_format="channels_last" if last else "channels_first")
    outs = [run_on(be, FUNCS[d], x, p, tuple(blocks[:d]), **kwargs) for be in BACKENDS]
    want = torch.from_numpy(NP_FUNCS[d](x.numpy(), p, tuple(blocks[:d]), **kwargs))
    assert torch.equal(outs[0], want) and torch.equal(outs[1], want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "block"), [((3, 4, 31), 5), ((3, 4, 13, 10), (3, 4)),
                                              ((2, 3, 6, 7, 5), (2, 4, 3))])
def test_output_is_the_union_of_seeded_blocks(backend, shape, block):
    # On a ones input with scale="none" the output is the keep mask: every dropped unit lies in
    # the whole block of a seed of the reference field, and every seed's block is dropped.
    d = len(shape) - 2
    block = (block,) * d if isinstance(block, int) else block
    y = run_on(backend, FUNCS[d], torch.ones(shape), 0.2, block, scale="none", seed=7)
    cal = R.calibrate(shape[2:], block, 0.2)
    starts = tuple(s - b + 1 for s, b in zip(shape[2:], block, strict=True))
    seeds = R.seed_field((*shape[:2], *starts), cal.threshold, 7)
    assert seeds.any() and not seeds.all()
    assert torch.equal(y, torch.from_numpy(brute_keep(seeds, block)).float())


def test_numba_is_independent_of_thread_count():
    x = torch.randn(8, 16, 20, 20)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs.append(run_on("numba", DB.drop_block2d, x, 0.2, 5, seed=3))
    assert torch.equal(*outs)


# --------------------------------------------------------------------------------------------
# Layouts, channels, clipping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_channels_last_is_the_permuted_channels_first(d):
    x = torch.randn(SHAPES[d])
    for per_channel in (True, False):
        first = FUNCS[d](x, 0.3, 3, per_channel=per_channel, seed=8)
        last = FUNCS[d](x.movedim(1, -1).contiguous(), 0.3, 3, per_channel=per_channel,
                        data_format="channels_last", seed=8)
        assert torch.equal(last, first.movedim(1, -1))
        # A non-contiguous view gets the mask of its contiguous copy, in the view's layout.
        moved = x.movedim(1, -1)
        view = FUNCS[d](moved, 0.3, 3, per_channel=per_channel,
                        data_format="channels_last", seed=8)
        assert torch.equal(view, last) and view.stride() == moved.stride()


@pytest.mark.parametrize("d", [1, 2, 3])
def test_unbatched_is_a_batch_of_one(d):
    x = torch.randn(SHAPES[d][1:])
    assert torch.equal(FUNCS[d](x, 0.3, 2, seed=1), FUNCS[d](x[None], 0.3, 2, seed=1)[0])


def test_per_channel_and_shared_masks():
    x = torch.ones(4, 6, 12, 12)
    shared = DB.drop_block2d(x, 0.3, 3, per_channel=False, scale="none", seed=2)
    assert (shared == shared[:, :1]).all()
    keep, _ = reference_keep(x.shape, 3, 0.3, 2, per_channel=False)
    assert keep.shape == (4, 1, 12, 12)
    assert torch.equal(shared, torch.from_numpy(keep).float().expand(x.shape))
    own = DB.drop_block2d(x, 0.3, 3, scale="none", seed=2)
    assert not all(torch.equal(own[:, 0], own[:, k]) for k in range(1, 6))
    keep, _ = reference_keep(x.shape, 3, 0.3, 2, per_channel=True)
    assert torch.equal(own, torch.from_numpy(keep).float())


def test_block_larger_than_map_is_clipped():
    x = torch.randn(3, 5, 6, 4)
    assert torch.equal(DB.drop_block2d(x, 0.3, 50, seed=1), DB.drop_block2d(x, 0.3, (6, 4), seed=1))
    assert torch.equal(DB.drop_block2d(x, 0.3, (2, 9), seed=1),
                       DB.drop_block2d(x, 0.3, (2, 4), seed=1))
    # A block the size of the map drops whole channel maps (SpatialDropout).
    y = DB.drop_block2d(torch.ones(64, 32, 6, 4), 0.3, 9, scale="none", seed=3)
    per_map = y.reshape(64, 32, -1)
    assert ((per_map == 0).all(-1) | (per_map == 1).all(-1)).all()


@pytest.mark.parametrize("block", [2, 4, 6, (2, 3), (4, 1)])
def test_even_and_mixed_block_sizes(block):
    x = torch.ones(2, 3, 15, 12)
    y = DB.drop_block2d(x, 0.25, block, scale="none", seed=6)
    keep, cal = reference_keep(x.shape, block, 0.25, 6)
    assert torch.equal(y, torch.from_numpy(keep).float())
    assert cal.block == clipped((15, 12), block)


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_batch_scale_is_count_over_count_ones(dtype):
    for per_channel in (True, False):
        x = torch.ones(4, 3, 9, 9, dtype=dtype)
        y = DB.drop_block2d(x, 0.3, 3, per_channel=per_channel, seed=5)
        keep, _ = reference_keep(x.shape, 3, 0.3, 5, per_channel)
        ct = torch.float64 if dtype == torch.float64 else torch.float32
        factor = torch.tensor(keep.size / keep.sum(), dtype=torch.float64).to(ct)
        zero = torch.zeros((), dtype=dtype)
        expected = torch.where(torch.from_numpy(keep), factor.to(dtype), zero)
        assert torch.equal(y, expected.expand(x.shape))


def test_expected_and_none_scales():
    x = torch.randn(4, 3, 9, 9)
    keep, cal = reference_keep(x.shape, 4, 0.3, 5)
    keep = torch.from_numpy(keep)
    factor = torch.tensor(1.0 / (1.0 - cal.expected), dtype=torch.float32)
    assert torch.equal(DB.drop_block2d(x, 0.3, 4, scale="expected", seed=5),
                       torch.where(keep, x * factor, 0.0))
    none = DB.drop_block2d(x, 0.3, 4, scale="none", seed=5)
    assert torch.equal(none, torch.where(keep, x, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", SCALES)
def test_everything_dropped_gives_zeros_not_nan(backend, scale):
    # One start per plane (block = map) and p close to 1: with this seed every plane drops.
    x = torch.full((2, 2, 3, 3), float("nan"), requires_grad=True)
    keep, _ = reference_keep(x.shape, 3, 0.9999, 1)
    assert not keep.any()
    y = run_on(backend, DB.drop_block2d, x, 0.9999, 3, scale=scale, seed=1)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropped_positions_are_zero_for_inf_and_nan(backend):
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 1.0]).repeat(2, 3, 4, 2)
    y = run_on(backend, DB.drop_block2d, x, 0.4, 2, scale="expected", seed=3)
    keep, _ = reference_keep(x.shape, 2, 0.4, 3)
    dropped = ~torch.from_numpy(keep).expand(x.shape)
    assert (y[dropped] == 0).all() and not torch.signbit(y[dropped]).any()
    assert y[~dropped].isnan().sum() == x[~dropped].isnan().sum()


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", SCALES)
def test_gradient_is_mask_times_scale(backend, scale):
    x = torch.randn(3, 4, 10, 10, requires_grad=True)
    y = run_on(backend, DB.drop_block2d, x, 0.3, 3, scale=scale, seed=9)
    run_on(backend, y.backward, torch.ones_like(y))
    ones = run_on(backend, DB.drop_block2d, torch.ones(3, 4, 10, 10), 0.3, 3, scale=scale,
                  seed=9)
    assert torch.equal(x.grad, ones)  # mask * scale, with the same (constant) scale


@pytest.mark.parametrize("scale", SCALES)
def test_gradcheck_float64(scale):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda t: DB.drop_block2d(t, 0.3, (2, 3), scale=scale, seed=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_backward_saves_only_the_key():
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = DB.drop_block2d(x, 0.2, 5, seed=1)
    assert [(t.shape, t.dtype) for t in saved] == [((2,), torch.int64)]
    y.sum().backward()


def test_generator_and_manual_seed_reproduce():
    x = torch.randn(2, 3, 8, 8)
    a = DB.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(5))
    b = DB.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    torch.manual_seed(3)
    c = DB.drop_block2d(x, 0.3, 3)
    torch.manual_seed(3)
    assert torch.equal(c, DB.drop_block2d(x, 0.3, 3))
    key = torch.randint(0, 2**32, (2,), generator=torch.Generator().manual_seed(5))
    seed = int(key[0]) | int(key[1]) << 32
    assert torch.equal(a, DB.drop_block2d(x, 0.3, 3, seed=seed))


def test_numpy_rng_draws_a_seed():
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    seed = int(np.random.default_rng(4).integers(0, 2**64, dtype=np.uint64))
    a = R.drop_block2d(x, 0.3, 3, rng=np.random.default_rng(4))
    assert np.array_equal(a, R.drop_block2d(x, 0.3, 3, seed=seed))


# --------------------------------------------------------------------------------------------
# Trivial cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_identity_zeros_and_empty(d):
    f = FUNCS[d]
    x = torch.randn(SHAPES[d], requires_grad=True)
    assert f(x, 0.0) is x
    assert f(x, 0.5, training=False) is x
    assert f(x, 0.5, 3, False, True) is x  # eval + inplace: untouched
    for shape in [(0, *SHAPES[d][1:]), (*SHAPES[d][:-1], 0), (*SHAPES[d][2:-1], 0, 3)]:
        if len(shape) in (d + 1, d + 2):
            empty = torch.ones(shape)
            assert f(empty, 0.5) is empty
    bad = torch.full(SHAPES[d], float("nan"), requires_grad=True)
    zeros = f(bad, 1.0)
    assert torch.equal(zeros, torch.zeros(SHAPES[d]))
    zeros.sum().backward()
    assert torch.equal(bad.grad, torch.zeros(SHAPES[d]))
    xn = np.ones(SHAPES[d], dtype=np.float32)
    assert NP_FUNCS[d](xn, 0.0) is xn and NP_FUNCS[d](xn, 0.5, training=False) is xn
    assert np.array_equal(NP_FUNCS[d](xn, 1.0), np.zeros_like(xn))


def test_threshold_zero_returns_the_values():
    # p so small that T rounds to 0: nothing is seeded; the values come back unchanged.
    x = torch.randn(2, 3, 64, 64)
    cal = R.calibrate((64, 64), 32, 1e-16)
    assert cal.threshold == 0
    y = DB.drop_block2d(x, 1e-16, 32, seed=1)
    assert torch.equal(y, x) and y is not x


def test_inplace():
    x = torch.randn(2, 3, 9, 9)
    expected = DB.drop_block2d(x, 0.3, 3, seed=2)
    y = x.clone()
    assert DB.drop_block2d(y, 0.3, 3, inplace=True, seed=2) is y
    assert torch.equal(y, expected)
    leaf = x.clone().requires_grad_()
    z = leaf * 1.0
    out = DB.drop_block2d(z, 0.3, 3, inplace=True, seed=2)
    out.sum().backward()
    assert torch.equal(leaf.grad, DB.drop_block2d(torch.ones_like(x), 0.3, 3, seed=2))


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------

BAD_ARGS = [
    (dict(input=[1.0]), TypeError, "drop_block2d: `input` must be a torch.Tensor, got list."),
    (dict(input=torch.ones(1, 2, 3, 3, dtype=torch.int64)), TypeError,
     "drop_block2d: `input` must have dtype torch.float16, torch.bfloat16, torch.float32 or "
     "torch.float64, got torch.int64."),
    (dict(p="0.1"), TypeError, "drop_block2d: `p` must be a real number in [0, 1], got str '0.1'."),
    (dict(p=True), TypeError, "drop_block2d: `p` must be a real number in [0, 1], got bool True."),
    (dict(p=1.5), ValueError, "drop_block2d: `p` must be in [0, 1], got 1.5."),
    (dict(p=float("nan")), ValueError, "drop_block2d: `p` must be in [0, 1], got nan."),
    (dict(block_size=True), TypeError, "drop_block2d: `block_size` must be a positive int or a "
     "tuple of 2 positive ints, got bool True."),
    (dict(block_size=3.0), TypeError, "drop_block2d: `block_size` must be a positive int or a "
     "tuple of 2 positive ints, got float 3.0."),
    (dict(block_size="3"), TypeError, "drop_block2d: `block_size` must be a positive int or a "
     "tuple of 2 positive ints, got str '3'."),
    (dict(block_size=0), ValueError, "drop_block2d: `block_size` must be a positive int or a "
     "tuple of 2 positive ints, got 0."),
    (dict(block_size=-2), ValueError, "drop_block2d: `block_size` must be a positive int or a "
     "tuple of 2 positive ints, got -2."),
    (dict(block_size=(3, 3, 3)), ValueError, "drop_block2d: `block_size` must be a positive int "
     "or a tuple of 2 positive ints (one per spatial axis), got 3 entries: (3, 3, 3)."),
    (dict(block_size=(3,)), ValueError, "drop_block2d: `block_size` must be a positive int "
     "or a tuple of 2 positive ints (one per spatial axis), got 1 entries: (3,)."),
    (dict(block_size=(3, 2.5)), TypeError,
     "drop_block2d: `block_size[1]` must be a positive int, got float 2.5."),
    (dict(block_size=(False, 2)), TypeError,
     "drop_block2d: `block_size[0]` must be a positive int, got bool False."),
    (dict(block_size=(3, 0)), ValueError,
     "drop_block2d: `block_size[1]` must be a positive int, got 0."),
    (dict(training=1), TypeError, "drop_block2d: `training` must be a bool, got int 1."),
    (dict(inplace=None), TypeError, "drop_block2d: `inplace` must be a bool, got NoneType None."),
    (dict(per_channel="yes"), TypeError,
     "drop_block2d: `per_channel` must be a bool, got str 'yes'."),
    (dict(scale="mean"), ValueError,
     "drop_block2d: `scale` must be 'batch' or 'expected' or 'none', got 'mean'."),
    (dict(scale=None), ValueError,
     "drop_block2d: `scale` must be 'batch' or 'expected' or 'none', got None."),
    (dict(data_format="NHWC"), ValueError, "drop_block2d: `data_format` must be "
     "'channels_first' or 'channels_last', got 'NHWC'."),
    (dict(input=torch.ones(3, 3)), ValueError, "drop_block2d: expected a 4D input (N, C, H, W) "
     "or an unbatched 3D input (C, H, W) with data_format='channels_first', got a 2D tensor of "
     "shape (3, 3)."),
    (dict(input=torch.ones(1, 1, 1, 3, 3), data_format="channels_last"), ValueError,
     "drop_block2d: expected a 4D input (N, H, W, C) or an unbatched 3D input (H, W, C) with "
     "data_format='channels_last', got a 5D tensor of shape (1, 1, 1, 3, 3)."),
    (dict(seed=-1), ValueError, "drop_block2d: `seed` must be an int in [0, 2**64), got -1."),
    (dict(seed=1.0), TypeError,
     "drop_block2d: `seed` must be an int in [0, 2**64), got float 1.0."),
    (dict(seed=1, generator=torch.Generator()), ValueError,
     "drop_block2d: pass either `seed` or `generator`, not both."),
    (dict(generator=3), TypeError,
     "drop_block2d: `generator` must be a torch.Generator or None, got int."),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGS)
def test_bad_arguments(kwargs, error, message):
    args = dict(input=torch.ones(1, 2, 5, 5), p=0.1, block_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        DB.drop_block2d(**args)


# NumPy has `x` (an ndarray) and `rng`, not `input`, `inplace` or `generator`.
NUMPY_BAD_ARGS = [a for a in BAD_ARGS if not {"input", "inplace", "generator"} & set(a[0])]


@pytest.mark.parametrize(("kwargs", "error", "message"), NUMPY_BAD_ARGS)
def test_bad_arguments_numpy(kwargs, error, message):
    args = dict(x=np.ones((1, 2, 5, 5)), p=0.1, block_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        R.drop_block2d(**args)


def test_bad_numpy_inputs():
    with pytest.raises(TypeError, match=re.escape("drop_block2d: `x` must be a numpy.ndarray")):
        R.drop_block2d([1.0])
    with pytest.raises(TypeError, match=re.escape("drop_block2d: `x` must have dtype")):
        R.drop_block2d(np.ones((1, 2, 5, 5), dtype=np.int32))
    with pytest.raises(ValueError, match=re.escape("drop_block2d: expected a 4D input")):
        R.drop_block2d(np.ones((3, 3)))
    with pytest.raises(ValueError, match=re.escape("pass either `seed` or `rng`, not both")):
        R.drop_block2d(np.ones((1, 2, 5, 5)), seed=1, rng=np.random.default_rng())


@pytest.mark.parametrize("d", [1, 3])
def test_rank_and_block_messages_name_the_dimension(d):
    axes = {1: "L", 3: "D, H, W"}[d]
    with pytest.raises(ValueError, match=re.escape(
        f"drop_block{d}d: expected a {d + 2}D input (N, C, {axes}) or an unbatched {d + 1}D "
        f"input (C, {axes})"
    )):
        FUNCS[d](torch.ones((2,) * (d + 3)))
    with pytest.raises(ValueError, match=re.escape(f"a tuple of {d} positive ints")):
        FUNCS[d](torch.ones((2,) * (d + 2)), 0.1, (2,) * (d + 1))


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_module_matches_function(d):
    m = MODULES[d](0.3, 3, per_channel=False, scale="expected")
    x = torch.randn(SHAPES[d])
    assert torch.equal(m(x, seed=4), FUNCS[d](x, 0.3, 3, per_channel=False, scale="expected",
                                              seed=4))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(m(x, generator=g), FUNCS[d](x, 0.3, 3, per_channel=False,
                                                   scale="expected",
                                                   generator=torch.Generator().manual_seed(1)))
    assert m.eval()(x) is x
    assert m.state_dict() == {} and list(m.parameters()) == []


def test_module_repr_and_settings():
    assert repr(DropBlock2d()) == (
        "DropBlock2d(p=0.1, block_size=7, inplace=False, per_channel=True, scale='batch', "
        "data_format='channels_first')"
    )
    m = DropBlock3d(0.2, [1, 3, 3], True, per_channel=False, scale="none",
                    data_format="channels_last")
    assert repr(m) == (
        "DropBlock3d(p=0.2, block_size=(1, 3, 3), inplace=True, per_channel=False, "
        "scale='none', data_format='channels_last')"
    )
    x = torch.randn(2, 4, 6, 6, 3)
    assert torch.equal(m(x.clone(), seed=1), DB.drop_block3d(
        x, 0.2, (1, 3, 3), per_channel=False, scale="none", data_format="channels_last", seed=1))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(p=2.0), ValueError, "DropBlock2d: `p` must be in [0, 1], got 2.0."),
    (dict(block_size=2.0), TypeError, "DropBlock2d: `block_size` must be a positive int or a "
     "tuple of 2 positive ints, got float 2.0."),
    (dict(block_size=(1, 2, 3)), ValueError, "DropBlock2d: `block_size` must be a positive int "
     "or a tuple of 2 positive ints (one per spatial axis), got 3 entries: (1, 2, 3)."),
    (dict(block_size=(1, -2)), ValueError,
     "DropBlock2d: `block_size[1]` must be a positive int, got -2."),
    (dict(inplace="no"), TypeError, "DropBlock2d: `inplace` must be a bool, got str 'no'."),
    (dict(per_channel=0), TypeError, "DropBlock2d: `per_channel` must be a bool, got int 0."),
    (dict(scale="paper"), ValueError,
     "DropBlock2d: `scale` must be 'batch' or 'expected' or 'none', got 'paper'."),
    (dict(data_format="NCHW"), ValueError, "DropBlock2d: `data_format` must be "
     "'channels_first' or 'channels_last', got 'NCHW'."),
])
def test_module_construction_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        DropBlock2d(**kwargs)


# --------------------------------------------------------------------------------------------
# torch.compile and the custom op
# --------------------------------------------------------------------------------------------


def test_opcheck():
    key = torch.tensor([3, 4])

    def rate(p):
        return torch.tensor(p, dtype=torch.float64)

    for args in [
        (torch.randn(2, 3, 6, 6, requires_grad=True), key, rate(0.2), [3, 3], True, "batch",
         False),
        (torch.randn(2, 6, 6, 3, dtype=torch.float64, requires_grad=True), key, rate(0.2),
         [2, 4], False, "expected", True),
        (torch.randn(3, 9, requires_grad=True), key, rate(0.5), [4], True, "none", False),
    ]:
        torch.library.opcheck(DB.drop_block_op, args)


@compile_warning
def test_compiled_model_fullgraph_train_and_eval():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), DropBlock2d(0.2, 3),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 4))
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 10, 10)
    torch.manual_seed(1)
    out = compiled(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(1)
    eager = model(x)
    eager.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    model.eval()
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


@compile_warning
def test_compile_dynamic_shapes_and_every_dimension():
    # The solver runs inside the op, so new map sizes need no retracing of Python code.
    torch._dynamo.reset()
    for d in (1, 2, 3):
        f = torch.compile(lambda t, d=d: FUNCS[d](t, 0.2, 2, seed=3), fullgraph=True,
                          dynamic=True)
        for size in (5, 8):
            x = torch.randn(2, 3, *([size] * d))
            assert torch.equal(f(x), FUNCS[d](x, 0.2, 2, seed=3))
