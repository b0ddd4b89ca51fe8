"""The mask engine's specification (``dropkit.rng``): Philox4x32-10 known answers on every
implementation, the 16-bit lane layout, seed -> key, thresholds and the normal stream."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dropkit import rng
from dropkit.kernels import numba_cpu, torch_ref

# Random123's known-answer vectors for philox4x32_10: (c0, c1, c2, c3), (k0, k1) -> (r0..r3).
KAT = [
    (
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
    ),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
KAT_IDS = ["zeros", "ones", "pi"]

seeds = st.integers(0, rng.MAX_SEED)


@numba.njit
def _numba_philox(c0, c1, c2, c3, k0, k1):
    return numba_cpu._philox(c0, c1, c2, c3, k0, k1)


# ---------------------------------------------------------------------------------------------
# Philox4x32-10 known answers


@pytest.mark.parametrize(("counter", "key", "expected"), KAT, ids=KAT_IDS)
def test_philox_kat_numpy_scalars(counter, key, expected):
    out = rng.philox4x32(*counter, *key)
    assert out == expected
    assert all(type(w) is int for w in out)


@pytest.mark.parametrize(("counter", "key", "expected"), KAT, ids=KAT_IDS)
def test_philox_kat_numpy_arrays(counter, key, expected):
    # Arrays of three identical counters, key as scalars and as arrays: every entry is the KAT.
    counters = [np.full(3, c, dtype=np.uint32) for c in counter]
    for k in (key, [np.full(3, k, dtype=np.uint32) for k in key]):
        out = rng.philox4x32(*counters, *k)
        assert len(out) == 4
        for word, want in zip(out, expected, strict=True):
            assert word.dtype == np.uint32
            assert word.shape == (3,)
            assert np.array_equal(word, np.full(3, want, dtype=np.uint32))


def test_philox_numpy_arrays_mix_vectors():
    # All three KATs in one vectorized call: each lane gets its own answer.
    cols = list(zip(*[c + k for c, k, _ in KAT], strict=True))
    out = rng.philox4x32(*(np.array(col, dtype=np.uint32) for col in cols))
    expected = np.array([e for _, _, e in KAT], dtype=np.uint32).T
    assert np.array_equal(np.stack(out), expected)


@pytest.mark.parametrize(("counter", "key", "expected"), KAT, ids=KAT_IDS)
def test_philox_kat_torch_ref(counter, key, expected):
    counters = [torch.full((5,), c, dtype=torch.int64) for c in counter]
    out = torch_ref.philox4x32(*counters, *key)
    assert len(out) == 4
    for word, want in zip(out, expected, strict=True):
        assert word.dtype == torch.int64
        assert torch.equal(word, torch.full((5,), want, dtype=torch.int64))


@pytest.mark.parametrize(("counter", "key", "expected"), KAT, ids=KAT_IDS)
def test_philox_kat_numba(counter, key, expected):
    args = [np.uint32(v) for v in (*counter, *key)]
    out = _numba_philox(*args)
    assert tuple(int(w) for w in out) == expected


@given(
    counter=st.tuples(*[st.integers(0, rng.MASK32)] * 4),
    key=st.tuples(*[st.integers(0, rng.MASK32)] * 2),
)
def test_philox_implementations_agree(counter, key):
    want = rng.philox4x32(*counter, *key)
    got_np = rng.philox4x32(*(np.array([v], dtype=np.uint32) for v in (*counter, *key)))
    assert tuple(int(w[0]) for w in got_np) == want
    got_torch = torch_ref.philox4x32(*(torch.tensor([c]) for c in counter), *key)
    assert tuple(int(w.item()) for w in got_torch) == want
    got_numba = _numba_philox(*(np.uint32(v) for v in (*counter, *key)))
    assert tuple(int(w) for w in got_numba) == want


def test_philox_rounds_matter():
    # Fewer rounds is a different function: the KAT pins the round count to 10.
    counter, key, expected = KAT[0]
    assert rng.philox4x32(*counter, *key, rounds=7) != expected
    assert rng.PHILOX_ROUNDS == 10


# ---------------------------------------------------------------------------------------------
# Lane layout


def _lanes_of(words):
    """(low, high) 16-bit halves of each 32-bit word, in word order."""
    out = []
    for w in words:
        out += [w & 0xFFFF, w >> 16]
    return out


def test_uniform16_lane_layout_matches_kat():
    _, _, expected = KAT[0]  # seed 0 = key (0, 0); block 0 = counter (0, 0, 0, 0)
    got = rng.uniform16(seed=0, start=0, count=8)
    assert got.dtype == np.uint16
    assert got.tolist() == _lanes_of(expected)


@pytest.mark.parametrize("seed", [0, 1, 2**32, 2**64 - 1, 0x0123456789ABCDEF])
@pytest.mark.parametrize("block", [0, 1, 7, 2**32 - 1, 2**32, 2**32 + 1, 2**61 - 1])
def test_uniform16_block_counter(seed, block):
    # Block n uses counter (n mod 2**32, n >> 32, 0, 0) and key (seed low, seed high).
    k0, k1 = seed & rng.MASK32, seed >> 32
    words = rng.philox4x32(block & rng.MASK32, block >> 32, rng.STREAM_BERNOULLI, 0, k0, k1)
    assert rng.uniform16(seed, 8 * block, 8).tolist() == _lanes_of(words)


def test_uniform16_high_counter_word_is_used():
    # Block 2**32 differs from block 0 only in counter word c1.
    assert not np.array_equal(rng.uniform16(5, 8 * 2**32, 8), rng.uniform16(5, 0, 8))


@given(seed=seeds, start=st.integers(0, 70), count=st.integers(0, 40))
def test_uniform16_is_a_slice_of_the_field(seed, start, count):
    whole = rng.uniform16(seed, 0, start + count)
    part = rng.uniform16(seed, start, count)
    assert part.dtype == np.uint16
    assert part.shape == (count,)
    assert np.array_equal(part, whole[start : start + count])


@given(
    seed=seeds,
    start=st.sampled_from(
        [8 * 2**32 + 5, 8 * 2**32 - 3, 8 * (2**32 - 1) + 7, 2**40 + 1, 8 * 2**32 * 3 + 2]
    ),
    count=st.integers(1, 30),
    split=st.integers(0, 30),
)
def test_uniform16_large_start_is_consistent(seed, start, count, split):
    """Far into the field (counters above 2**32 blocks): pieces concatenate, and each element
    is the lane of its block computed directly from the spec."""
    split = min(split, count)
    part = rng.uniform16(seed, start, count)
    joined = np.concatenate(
        [rng.uniform16(seed, start, split), rng.uniform16(seed, start + split, count - split)]
    )
    assert np.array_equal(part, joined)
    k0, k1 = rng.seed_to_key(seed)
    for offset, value in enumerate(part.tolist()):
        i = start + offset
        n, j = divmod(i, 8)
        words = rng.philox4x32(n & rng.MASK32, n >> 32, 0, 0, k0, k1)
        assert value == _lanes_of(words)[j]


def test_uniform16_count_zero():
    for start in (0, 3, 8 * 2**32 + 5):
        out = rng.uniform16(9, start, 0)
        assert out.dtype == np.uint16
        assert out.shape == (0,)


def test_keep_field_spec():
    u = rng.uniform16(11, 0, 24)
    t = rng.threshold(0.3)
    assert np.array_equal(rng.keep_field((2, 3, 4), 0.3, 11), (u >= t).reshape(2, 3, 4))
    assert rng.keep_field((2, 3), 0.0, 11).all()
    assert not rng.keep_field((2, 3), 1.0, 11).any()


# ---------------------------------------------------------------------------------------------
# seed -> key


@pytest.mark.parametrize(
    ("seed", "key"),
    [
        (0, (0, 0)),
        (1, (1, 0)),
        (2**32 - 1, (2**32 - 1, 0)),
        (2**32, (0, 1)),
        (2**64 - 1, (2**32 - 1, 2**32 - 1)),
        (0x0123456789ABCDEF, (0x89ABCDEF, 0x01234567)),
        (np.uint64(2**64 - 1), (2**32 - 1, 2**32 - 1)),
        (np.int64(7), (7, 0)),
    ],
)
def test_seed_to_key(seed, key):
    got = rng.seed_to_key(seed)
    assert got == key
    assert all(type(k) is int for k in got)


@given(seed=seeds)
def test_seed_to_key_roundtrip(seed):
    k0, k1 = rng.seed_to_key(seed)
    assert 0 <= k0 <= rng.MASK32 and 0 <= k1 <= rng.MASK32
    assert k0 | (k1 << 32) == seed


@pytest.mark.parametrize(
    ("seed", "error", "message"),
    [
        (True, TypeError, r"`seed` must be an int in \[0, 2\*\*64\), got bool True\."),
        (False, TypeError, r"`seed` must be an int in \[0, 2\*\*64\), got bool False\."),
        (1.0, TypeError, r"`seed` must be an int in \[0, 2\*\*64\), got float 1\.0\."),
        ("3", TypeError, r"`seed` must be an int in \[0, 2\*\*64\), got str '3'\."),
        (None, TypeError, r"`seed` must be an int in \[0, 2\*\*64\), got NoneType None\."),
        (-1, ValueError, r"`seed` must be an int in \[0, 2\*\*64\), got -1\."),
        (2**64, ValueError, r"`seed` must be an int in \[0, 2\*\*64\), got 18446744073709551616\."),
    ],
)
def test_seed_to_key_errors(seed, error, message):
    with pytest.raises(error, match=message):
        rng.seed_to_key(seed)


# ---------------------------------------------------------------------------------------------
# threshold, effective p, inverted scale


@pytest.mark.parametrize(
    ("p", "t"),
    [
        (0.0, 0),
        (0.1, 6554),
        (0.5, 32768),
        (0.9, 58982),
        (1.0, 65536),
        (0.5 / 65536, 1),  # exactly half: rounds up
        (1.5 / 65536, 2),
        (0.4999 / 65536, 0),
        (1 - 0.5 / 65536, 65536),
        (1 - 0.5001 / 65536, 65535),
    ],
)
def test_threshold_values(p, t):
    assert rng.threshold(p) == t
    assert type(rng.threshold(p)) is int


@given(p=st.floats(0.0, 1.0))
def test_threshold_rounding_and_effective_p(p):
    t = rng.threshold(p)
    assert t == math.floor(p * 65536 + 0.5)
    assert 0 <= t <= rng.LANE_RANGE
    p_eff = rng.effective_p(t)
    assert p_eff == t / 65536
    assert abs(p_eff - p) <= 2.0**-17


@given(p=st.floats(0.0, 1.0), q=st.floats(0.0, 1.0))
def test_threshold_is_monotone(p, q):
    if p <= q:
        assert rng.threshold(p) <= rng.threshold(q)


def test_inverted_scale_edges():
    assert rng.threshold(1.0) == 65536
    assert rng.inverted_scale(65536) == 0.0
    assert rng.inverted_scale(0) == 1.0
    assert rng.inverted_scale(32768) == 2.0
    assert rng.effective_p(65536) == 1.0
    assert rng.effective_p(0) == 0.0


@given(t=st.integers(0, 65535))
def test_inverted_scale(t):
    s = rng.inverted_scale(t)
    assert s == 65536 / (65536 - t)
    assert math.isclose(s, 1 / (1 - t / 65536), rel_tol=1e-15)
    assert s >= 1.0


# ---------------------------------------------------------------------------------------------
# Normal stream


N_NORMAL = 2**18


def test_normal_field_is_standard_normal():
    z = rng.normal_field((N_NORMAL,), seed=0)
    assert z.dtype == np.float64
    assert z.shape == (N_NORMAL,)
    assert np.isfinite(z).all()
    n = z.size
    mean, var = z.mean(), z.var(ddof=1)
    assert abs(mean) <= 4 / math.sqrt(n), mean
    # Sample variance of N(0, 1): standard error sqrt(2 / n) (4th moment 3).
    assert abs(var - 1.0) <= 4 * math.sqrt(2 / n), var
    # Symmetry and tails: third moment ~ 0 (sd sqrt(15 / n)), 4th ~ 3 (sd sqrt(96 / n)).
    assert abs((z**3).mean()) <= 4 * math.sqrt(15 / n)
    assert abs((z**4).mean() - 3) <= 4 * math.sqrt(96 / n)


def test_normal_field_reproducible_and_seeded():
    a = rng.normal_field((3, 50), seed=7)
    assert a.shape == (3, 50)
    assert np.array_equal(a, rng.normal_field((3, 50), seed=7))
    b = rng.normal_field((3, 50), seed=8)
    assert not np.any(a == b)
    c = rng.normal_field((3, 50), seed=7 + 2**32)  # differs in the key's high word only
    assert not np.any(a == c)


def test_normal_field_prefix_and_box_muller_layout():
    # The field is a prefix of a longer field, and element 4n..4n+3 comes from block n of
    # stream 1 through the documented Box-Muller pairs.
    long = rng.normal_field((41,), seed=3)
    for count in (0, 1, 2, 3, 4, 5, 17):
        assert np.array_equal(rng.normal_field((count,), seed=3), long[:count])
    k0, k1 = rng.seed_to_key(3)
    for n in (0, 1, 9):
        r = rng.philox4x32(n, 0, rng.STREAM_NORMAL, 0, k0, k1)
        for pair, (a, b) in enumerate(((r[0], r[1]), (r[2], r[3]))):
            radius = math.sqrt(-2.0 * math.log((a + 1.0) * 2.0**-32))
            angle = 2.0 * math.pi * (b * 2.0**-32)
            i = 4 * n + 2 * pair
            assert math.isclose(long[i], radius * math.cos(angle), rel_tol=1e-12, abs_tol=1e-12)
            assert math.isclose(long[i + 1], radius * math.sin(angle), rel_tol=1e-12, abs_tol=1e-12)


def test_normal_stream_is_not_bernoulli_stream():
    # Stream 1 (c2 = 1) gives different words from stream 0 for the same block.
    k0, k1 = rng.seed_to_key(0)
    assert rng.philox4x32(0, 0, rng.STREAM_NORMAL, 0, k0, k1) != KAT[0][2]
    assert rng.STREAM_BERNOULLI == 0 and rng.STREAM_NORMAL == 1
