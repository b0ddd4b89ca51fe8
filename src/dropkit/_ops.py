"""torch custom ops around the mask engine: registered once, so autograd and ``torch.compile``
see one opaque, well-described operation per call instead of Python control flow.

* ``dropkit::masked_affine(x, key, threshold, noise_shape, scale, shift, fill)`` computes
  ``where(keep, x * scale + shift, fill)`` with the keep field of ``noise_shape`` broadcast over
  ``x``. Plain, spatial, timestep and alpha dropout are all this op. Its backward is the same op
  applied to the gradient with ``shift = fill = 0``: autograd saves only the 2-word ``key``.
* ``dropkit::masked_affine_`` is the in-place twin (used when no gradient is needed).
* ``dropkit::gaussian_mul(x, key, std)`` computes ``x * (1 + std * z)``, z standard normal, in the
  compute dtype (float32, or float64 for float64 inputs); its backward is the same op on the
  gradient.

The output of the out-of-place ops is always contiguous.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels, rng
from .kernels import torch_ref


def _key(key: Tensor) -> tuple[int, int]:
    k0, k1 = key.tolist()
    return int(k0), int(k1)


@torch.library.custom_op("dropkit::masked_affine", mutates_args=())
def masked_affine(
    x: Tensor,
    key: Tensor,
    threshold: int,
    noise_shape: list[int],
    scale: float,
    shift: float,
    fill: float,
) -> Tensor:
    if threshold >= rng.LANE_RANGE:
        return torch.full_like(x, fill, memory_format=torch.contiguous_format)
    backend = kernels.for_device(x.device)
    return backend.apply(x, _key(key), threshold, tuple(noise_shape), scale, shift, fill)


@masked_affine.register_fake
def _(x, key, threshold, noise_shape, scale, shift, fill):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _masked_affine_setup(ctx, inputs, output):
    _, key, threshold, noise_shape, scale, _, _ = inputs
    ctx.save_for_backward(key)
    ctx.params = (threshold, noise_shape, scale)


def _masked_affine_backward(ctx, grad):
    (key,) = ctx.saved_tensors
    threshold, noise_shape, scale = ctx.params
    grad_x = masked_affine(grad, key, threshold, noise_shape, scale, 0.0, 0.0)
    return grad_x, None, None, None, None, None, None


masked_affine.register_autograd(_masked_affine_backward, setup_context=_masked_affine_setup)


@torch.library.custom_op("dropkit::masked_affine_", mutates_args=("x",))
def masked_affine_(
    x: Tensor,
    key: Tensor,
    threshold: int,
    noise_shape: list[int],
    scale: float,
    shift: float,
    fill: float,
) -> None:
    if threshold >= rng.LANE_RANGE:
        x.fill_(fill)
        return
    backend = kernels.for_device(x.device)
    args = (_key(key), threshold, tuple(noise_shape), scale, shift, fill)
    if x.is_contiguous():
        backend.apply(x, *args, out=x)
    else:
        x.copy_(backend.apply(x, *args))


@masked_affine_.register_fake
def _(x, key, threshold, noise_shape, scale, shift, fill):
    return None


@torch.library.custom_op("dropkit::gaussian_mul", mutates_args=())
def gaussian_mul(x: Tensor, key: Tensor, std: float) -> Tensor:
    backend = kernels.for_device(x.device)
    z = backend.normal_field(_key(key), x.numel(), device=x.device).reshape(x.shape)
    ct = torch_ref.compute_dtype(x.dtype)
    return (x.to(ct) * (1.0 + std * z).to(ct)).to(x.dtype).contiguous()


@gaussian_mul.register_fake
def _(x, key, std):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gaussian_setup(ctx, inputs, output):
    _, key, std = inputs
    ctx.save_for_backward(key)
    ctx.std = std


def _gaussian_backward(ctx, grad):
    (key,) = ctx.saved_tensors
    return gaussian_mul(grad, key, ctx.std), None, None


gaussian_mul.register_autograd(_gaussian_backward, setup_context=_gaussian_setup)
