"""Activation checkpointing: the recomputed forward draws the same masks as the first one.

dropkit draws each call's key from torch's generator and ``torch.utils.checkpoint`` restores
the generator's state before recomputing, so the recomputed forward regenerates the same masks
and the gradients equal those of the plain run, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drops = nn.Sequential(
            dropkit.nn.Dropout(0.3),
            dropkit.nn.SpatialDropout2d(0.2),
            dropkit.nn.DropBlock2d(0.2, block_size=3),
            dropkit.nn.GaussianDropout(0.2),
            dropkit.nn.Dropout(0.3, mode="vanilla"),
        )
        self.path = dropkit.nn.DropPath(0.3)

    def forward(self, x):
        return x + self.path(self.drops(torch.relu(self.conv(x))))


def _grads(model, x, use_checkpoint, use_reentrant=False):
    torch.manual_seed(0)
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    if use_checkpoint:
        y = checkpoint(model, x, use_reentrant=use_reentrant)
    else:
        y = model(x)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    return [x.grad, *(p.grad for p in model.parameters())], y.detach()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_gradients_equal_plain(use_reentrant):
    torch.manual_seed(1)
    model = nn.Sequential(Block(), Block())
    x = torch.randn(6, 4, 9, 9)
    plain, y_plain = _grads(model, x, False)
    ckpt, y_ckpt = _grads(model, x, True, use_reentrant)
    assert torch.equal(y_plain, y_ckpt)
    for a, b in zip(plain, ckpt, strict=True):
        assert torch.equal(a, b)


def test_without_rng_restore_the_masks_differ():
    """The negative control: recomputing with a moved generator gives other masks, which the
    test above would catch."""
    torch.manual_seed(1)
    model = Block()
    x = torch.randn(6, 4, 9, 9, requires_grad=True)
    plain, _ = _grads(model, x, False)
    torch.manual_seed(0)
    model.zero_grad()
    y = checkpoint(model, x, use_reentrant=False, preserve_rng_state=False)
    torch.rand(1)  # move the generator between forward and recomputation
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    assert not torch.equal(model.conv.weight.grad, plain[1])
