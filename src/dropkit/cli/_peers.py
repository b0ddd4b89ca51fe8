"""Short copies of the DropBlock functions of torchvision and timm, for ``dropkit bench``.

``dropkit bench --device cuda`` compares dropkit's DropBlock with torchvision's and timm's. Neither
package is a dependency; when one is not importable the benchmark times these copies instead and
labels their rows "(copied code)". Only what a forward call computes is copied (argument checks
and the API-usage logging of torchvision are left out); the arithmetic, the order of the tensor
operations and the random draws are the sources'.

Sources and licenses:

* :func:`torchvision_drop_block2d`: ``drop_block2d`` of ``torchvision/ops/drop_block.py``,
  torchvision (https://github.com/pytorch/vision), BSD-3-Clause license,
  Copyright (c) Soumith Chintala 2016, all rights reserved.
* :func:`timm_drop_block_2d`: ``drop_block_2d`` of ``timm/layers/drop.py`` as of timm 1.0.23
  (after commit fff7ec5a, "A simplification / fix for DropBlock2d", which added
  ``couple_channels``), pytorch-image-models (https://github.com/huggingface/pytorch-image-models),
  Apache License 2.0, Copyright 2020 Ross Wightman.

``tests/test_convert.py`` holds look-alikes copied from the same sources;
``tests/test_bench_gpu.py`` checks that these copies and those look-alikes (and the packages, where
installed) give the same outputs from the same draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["timm_drop_block_2d", "torchvision_drop_block2d"]


def torchvision_drop_block2d(
    input: Tensor, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06,
    training: bool = True,
) -> Tensor:
    """torchvision's ``drop_block2d`` (BSD-3-Clause): one mask per channel.

    Args:
        input: ``(N, C, H, W)``.
        p: Drop probability in ``[0, 1]``.
        block_size: Block side; ``H`` and ``W`` must be at least ``block_size``.
        inplace: Multiply ``input`` in place.
        eps: Added to the kept count of the normalization.
        training: Return ``input`` unchanged if ``False``.

    Returns:
        ``input * (1 - mask) * numel / (eps + kept)``, shape ``(N, C, H, W)``.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``.
    """
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input

    N, C, H, W = input.size()
    # compute the gamma of Bernoulli distribution
    gamma = (p * H * W) / ((block_size**2) * ((H - block_size + 1) * (W - block_size + 1)))
    noise = torch.empty((N, C, H - block_size + 1, W - block_size + 1), dtype=input.dtype,
                        device=input.device)
    noise.bernoulli_(gamma)

    noise = F.pad(noise, [block_size // 2] * 4, value=0)
    noise = F.max_pool2d(noise, stride=(1, 1), kernel_size=(block_size, block_size),
                         padding=block_size // 2)
    noise = 1 - noise
    normalize_scale = noise.numel() / (eps + noise.sum())
    if inplace:
        input.mul_(noise).mul_(normalize_scale)
    else:
        input = input * noise * normalize_scale
    return input


def timm_drop_block_2d(
    x: Tensor, drop_prob: float = 0.1, block_size: int = 7, gamma_scale: float = 1.0,
    with_noise: bool = False, inplace: bool = False, couple_channels: bool = True,
    scale_by_keep: bool = True,
) -> Tensor:
    """timm's ``drop_block_2d`` (Apache-2.0); ``couple_channels=False`` is its per-channel mask.

    Args:
        x: ``(B, C, H, W)``.
        drop_prob: Drop probability.
        block_size: Block side (clipped to ``H`` and ``W``).
        gamma_scale: Scales the seed rate.
        with_noise: Fill the dropped units with normal noise instead of zeros.
        inplace: Multiply ``x`` in place.
        couple_channels: One ``(B, 1, H, W)`` mask for all channels (timm's default) or one per
            channel.
        scale_by_keep: Scale kept units by ``numel / kept``.

    Returns:
        The masked ``x``, shape ``(B, C, H, W)``.
    """
    B, C, H, W = x.shape
    kh, kw = min(block_size, H), min(block_size, W)
    gamma = float(gamma_scale * drop_prob * H * W) / float(kh * kw) / float(
        (H - kh + 1) * (W - kw + 1))
    noise_shape = (B, 1 if couple_channels else C, H, W)
    with torch.no_grad():
        block_mask = torch.empty(noise_shape, dtype=x.dtype, device=x.device).bernoulli_(gamma)
        block_mask = F.max_pool2d(block_mask, kernel_size=(kh, kw), stride=1,
                                  padding=(kh // 2, kw // 2))
        if kh % 2 == 0 or kw % 2 == 0:
            block_mask = block_mask[..., (kh + 1) % 2:, (kw + 1) % 2:]
        keep_mask = 1.0 - block_mask
    if with_noise:
        with torch.no_grad():
            noise = torch.empty_like(keep_mask).normal_()
            noise.mul_(block_mask)
        return x.mul_(keep_mask).add_(noise) if inplace else x * keep_mask + noise
    if scale_by_keep:
        with torch.no_grad():
            normalize_scale = keep_mask.numel() / keep_mask.to(dtype=torch.float32).sum().add(1e-7)
            keep_mask.mul_(normalize_scale.to(x.dtype))
    return x.mul_(keep_mask) if inplace else x * keep_mask
