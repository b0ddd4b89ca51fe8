"""DropHead (dropkit.functional.drop_head, dropkit.nn.DropHead): whole heads of (N, H, L, E)
dropped, one decision per (sample, head), bit for bit dropout with noise shape (N, H, 1, 1)."""

from __future__ import annotations

import pytest
import torch

import dropkit.functional as DF
import dropkit.nn as dn
from helpers import assert_keep_rate


def _x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_bits_equal_dropout_with_the_head_noise_shape(dtype):
    x = _x(3, 5, 7, 4, dtype=dtype)
    for seed in (0, 1, 2**40 + 3):
        y = DF.drop_head(x, 0.3, seed=seed)
        assert torch.equal(y, DF.dropout(x, 0.3, noise_shape=(3, 5, 1, 1), seed=seed))
        assert torch.equal(dn.DropHead(0.3)(x, seed=seed), y)


def test_whole_heads_are_dropped_and_kept_heads_scaled_like_torch_dropout2d():
    x = torch.ones(4, 8, 6, 5)
    p = 0.25
    scale = torch.tensor(1 / (1 - p)).item()  # in float32
    y = DF.drop_head(x, p, seed=11)
    heads = y.flatten(2)
    dropped = (heads == 0).all(-1)
    kept = (heads == scale).all(-1)
    assert bool((dropped | kept).all()) and bool(dropped.any()) and bool(kept.any())
    # torch's own reference of one decision per (N, C) plane on a 4D input: F.dropout2d.
    torch.manual_seed(0)
    ref = torch.nn.functional.dropout2d(x, p).flatten(2)
    assert set(ref.unique().tolist()) == set(heads.unique().tolist()) == {0.0, scale}


def test_gradient_is_the_same_head_mask():
    x = _x(2, 4, 3, 5).requires_grad_(True)
    y = DF.drop_head(x, 0.5, seed=4)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (y != 0).to(x.dtype) * 2.0)


def test_rate_within_4_sigma():
    n, h = 500, 16
    y = DF.drop_head(torch.ones(n, h, 2, 3), 0.3, seed=123)
    kept = int((y.flatten(2) != 0).all(-1).sum())
    assert_keep_rate(kept, n * h, 0.3)


def test_eval_p0_p1():
    x = _x(2, 3, 4, 5)
    assert DF.drop_head(x, 0.4, training=False) is x
    assert dn.DropHead(0.4).eval()(x) is x
    assert DF.drop_head(x, 0.0) is x
    assert torch.equal(DF.drop_head(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_wrong_rank_is_a_value_error_naming_the_function_and_module(shape):
    x = torch.ones(shape)
    with pytest.raises(ValueError, match=rf"^drop_head: expected per-head outputs \(N, H, L, E\), "
                                         rf"a 4D input, got a {len(shape)}D tensor"):
        DF.drop_head(x, 0.1)
    with pytest.raises(ValueError, match=r"^DropHead: expected per-head outputs"):
        dn.DropHead(0.1)(x)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^drop_head: .*`p`"):
        DF.drop_head(torch.ones(1, 2, 3, 4), 1.5)
    with pytest.raises(TypeError, match=r"^drop_head: .*`input`"):
        DF.drop_head(torch.ones(1, 2, 3, 4, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match=r"^DropHead: .*`p`"):
        dn.DropHead(-0.1)
    assert repr(dn.DropHead(0.2)) == "DropHead(p=0.2)"
