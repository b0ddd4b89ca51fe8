"""Fused residual adds: ``residual + dropout(x + bias)`` and ``residual + drop_path(x)``.

The public functions (:func:`bias_dropout_add`, :func:`drop_path_add`, exported by
:mod:`dropkit.functional`) are *defined* as the unfused dropkit expressions, bit for bit in every
dtype and with the same masks for the same seed. Each is one custom op:

* ``dropkit::bias_dropout_add(x, bias, residual, key, threshold, scale, p)`` computes
  ``residual + where(keep, (x + bias) * scale, 0)`` over ``x``'s full noise field (``bias`` may
  be ``None``). Its backward is ``grad`` for ``residual`` and the masked, scaled ``grad`` for
  ``x`` (:func:`dropkit._ops.masked_affine`); with a bias, ``dropkit::bias_dropout_add_backward``
  computes both ``d x`` and ``d bias`` (``d x`` summed to the bias' shape).
* ``dropkit::drop_path_add(x, residual, key, threshold, scale, p, noise_shape, kind)`` computes
  ``residual + where(keep, x * scale, 0)`` with the keep field of ``noise_shape`` (one decision
  per sample, or one for the batch) broadcast over ``x``.

The drop rate is given as ``(threshold, scale)`` for a float ``p``, or as the 0-dim tensor ``p``
read when the op runs (then ``(threshold, scale)`` are ignored), as :func:`dropkit._ops.rate_op`
does. Autograd saves only the 2-word key (and the 0-dim ``p`` when it is a tensor): no mask and
nothing of the input's size.

CUDA tensors of dtype float32, float16 or bfloat16 go to the one-pass Triton kernels of
:mod:`dropkit.kernels.triton_fused_add` when :func:`dropkit.kernels.uses_triton` says so; every
other case runs the composition of the existing ops (the definition).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from . import _ops, kernels, rng
from . import _validation as v
from . import functional as F

__all__ = ["bias_dropout_add", "drop_path_add"]


# --- validation -------------------------------------------------------------------------------


def check_operand(fn: str, name: str, value: object, x, array_type: type, broadcast: bool):
    """``value`` (``bias`` or ``residual``) is an ``array_type`` (``torch.Tensor`` or
    ``numpy.ndarray``) with ``x``'s dtype and device whose shape is ``x``'s shape, or with
    ``broadcast``, broadcasts to it (trailing axes aligned, each of size 1 or ``x``'s)."""
    if not isinstance(value, array_type):
        kind = "torch.Tensor" if array_type is Tensor else "numpy.ndarray"
        raise TypeError(f"{fn}: `{name}` must be a {kind}, got {type(value).__name__}.")
    if value.dtype != x.dtype:
        raise TypeError(
            f"{fn}: `{name}` must have the dtype of `x` ({x.dtype}), got {value.dtype}."
        )
    device, x_device = getattr(value, "device", None), getattr(x, "device", None)
    if device != x_device:
        raise ValueError(f"{fn}: `{name}` must be on the device of `x` ({x_device}), got {device}.")
    shape, x_shape = tuple(value.shape), tuple(x.shape)
    if broadcast:
        fits = len(shape) <= len(x_shape) and all(
            s in (1, n) for s, n in zip(reversed(shape), reversed(x_shape), strict=False)
        )
        if not fits:
            raise ValueError(
                f"{fn}: `{name}` of shape {shape} does not broadcast to the shape of `x` "
                f"{x_shape}."
            )
    elif shape != x_shape:
        raise ValueError(f"{fn}: `{name}` must have the shape of `x` {x_shape}, got {shape}.")
    return value


def drop_path_noise_shape(fn: str, x_shape: Sequence[int], mode: str) -> tuple[int, ...]:
    """DropPath's noise shape: ``(N, 1, ..., 1)`` for ``"row"``, all ones for ``"batch"``."""
    if len(x_shape) == 0:
        raise ValueError(f"{fn}: expected an `x` (N, *) with a batch dimension, got a 0D array.")
    lead = x_shape[0] if mode == "row" else 1
    return (lead,) + (1,) * (len(x_shape) - 1)


# --- the ops ----------------------------------------------------------------------------------


def _params(threshold: int, scale: float, p: Tensor | None, kind: str) -> tuple[int, float]:
    """``(threshold, scale)``: as given, or from the rate tensor ``p`` (read now)."""
    if p is None:
        return threshold, scale
    t, s, _, _ = rng.affine_params(kind, _ops.read_rate(p))
    return t, s


def _triton(x: Tensor) -> ModuleType | None:
    """The Triton module of the fused adds, when ``x``'s device uses Triton."""
    if not kernels.uses_triton(x.device):
        return None
    return importlib.import_module(".kernels.triton_fused_add", __package__)


def _masked_grad(grad, key, threshold, scale, p, noise_shape, kind) -> Tensor:
    """The masked, scaled gradient: the backward of dropout's own op."""
    if p is not None:
        return _ops.rate_op_backward_eager(grad, key, p, list(noise_shape), kind)
    return _ops.masked_affine_eager(grad, key, threshold, list(noise_shape), scale, 0.0, 0.0)


def _total(*tangents: Tensor | None) -> Tensor | None:
    """The sum of the tangents that are not ``None`` (``None`` when all are)."""
    present = [t for t in tangents if t is not None]
    return sum(present[1:], present[0]) if present else None




@torch.library.custom_op("dropkit::bias_dropout_add", mutates_args=())
def bias_dropout_add_op(
    x: Tensor,
    bias: Tensor | None,
    residual: Tensor,
    key: Tensor,
    threshold: int,
    scale: float,
    p: Tensor | None,
) -> Tensor:
    t, scale = _params(threshold, scale, p, "inverted")
    fused = _triton(x)
    out = fused.bias_dropout_add(x, bias, residual, _ops._key(key), t, scale) if fused else None
    if out is not None:
        return out
    h = x if bias is None else x + bias
    return residual + _ops.masked_affine(h, key, t, list(x.shape), scale, 0.0, 0.0)


@bias_dropout_add_op.register_fake
def _(x, bias, residual, key, threshold, scale, p):
    # the strides of the composition (the definition): its ops on fake tensors
    return residual + torch.empty_like(x if bias is None else x + bias)


def _bias_dropout_add_setup(ctx, inputs, output):
    x, bias, _, key, threshold, scale, p = inputs
    _ops._save(ctx, key, p)
    ctx.params = (threshold, scale, list(x.shape), None if bias is None else list(bias.shape))


def _bias_dropout_add_backward(ctx, grad):
    key, p = ctx.saved_tensors
    threshold, scale, shape, bias_shape = ctx.params
    need_x, need_bias, need_residual = ctx.needs_input_grad[:3]
    grad_x = grad_bias = None
    if bias_shape is not None and need_bias:
        grad_x, grad_bias = bias_dropout_add_backward_eager(grad, key, threshold, scale, p,
                                                            bias_shape)
    elif need_x:
        grad_x = _masked_grad(grad, key, threshold, scale, p, shape, "inverted")
    return grad_x, grad_bias, grad if need_residual else None, None, None, None, None


def _bias_dropout_add_jvp(ctx, x_t, bias_t, residual_t, *_):
    """``d out = M * scale * (d x + d bias) + d residual``."""
    key, p = ctx.saved_tensors
    threshold, scale, shape, _ = ctx.params
    h_t = _total(x_t, None if bias_t is None else bias_t.expand(shape))
    out_t = None if h_t is None else _masked_grad(h_t, key, threshold, scale, p, shape, "inverted")
    return _total(out_t, residual_t)


bias_dropout_add_eager = _ops.differentiable(
    bias_dropout_add_op, _bias_dropout_add_setup, _bias_dropout_add_backward,
    name="_BiasDropoutAddFn", jvp=_bias_dropout_add_jvp,
)


@torch.library.custom_op("dropkit::bias_dropout_add_backward", mutates_args=())
def bias_dropout_add_backward(
    grad: Tensor,
    key: Tensor,
    threshold: int,
    scale: float,
    p: Tensor | None,
    bias_shape: list[int],
) -> tuple[Tensor, Tensor]:
    """``(d x, d bias)``: the masked, scaled ``grad`` and its sum to ``bias_shape``."""
    t, scale = _params(threshold, scale, p, "inverted")
    fused = _triton(grad)
    grads = fused.bias_dropout_add_backward(grad, _ops._key(key), t, scale, bias_shape) if fused \
        else None
    if grads is not None:
        return grads
    grad_x = _ops.masked_affine(grad, key, t, list(grad.shape), scale, 0.0, 0.0)
    grad_bias = grad_x.sum_to_size(bias_shape)  # autograd's reduction of a broadcast operand
    if grad_bias.data_ptr() == grad_x.data_ptr():  # the same shape: an op's outputs don't alias
        grad_bias = grad_bias.clone()
    return grad_x, grad_bias.contiguous()


@bias_dropout_add_backward.register_fake
def _(grad, key, threshold, scale, p, bias_shape):
    return torch.empty_like(grad), grad.new_empty(bias_shape)


def _backward_setup(ctx, inputs, output):
    grad, key, threshold, scale, p, bias_shape = inputs
    _ops._save(ctx, key, p)
    ctx.params = (threshold, scale, list(grad.shape), bias_shape)


def _backward_backward(ctx, grad_grad_x, grad_grad_bias):
    """Both outputs are linear in ``grad`` with the same mask: ``d grad = M * scale * (gg_x +
    gg_bias broadcast)``."""
    key, p = ctx.saved_tensors
    threshold, scale, shape, _ = ctx.params
    if grad_grad_x is None:
        total = grad_grad_bias.expand(shape)
    else:
        total = grad_grad_x if grad_grad_bias is None else grad_grad_x + grad_grad_bias
    return _masked_grad(total, key, threshold, scale, p, shape, "inverted"), *(None,) * 5


def _backward_jvp(ctx, grad_t, *_):
    """Both outputs are linear in ``grad``: the op itself on the tangent."""
    key, p = ctx.saved_tensors
    threshold, scale, _, bias_shape = ctx.params
    return bias_dropout_add_backward_eager(grad_t, key, threshold, scale, p, bias_shape)


bias_dropout_add_backward_eager = _ops.differentiable(
    bias_dropout_add_backward, _backward_setup, _backward_backward,
    name="_BiasDropoutAddBackwardFn", jvp=_backward_jvp,
)


@torch.library.custom_op("dropkit::drop_path_add", mutates_args=())
def drop_path_add_op(
    x: Tensor,
    residual: Tensor,
    key: Tensor,
    threshold: int,
    scale: float,
    p: Tensor | None,
    noise_shape: list[int],
    kind: str,
) -> Tensor:
    t, scale = _params(threshold, scale, p, kind)
    fused = _triton(x)
    out = fused.drop_path_add(x, residual, _ops._key(key), t, scale, noise_shape) if fused \
        else None
    if out is not None:
        return out
    return residual + _ops.masked_affine(x, key, t, noise_shape, scale, 0.0, 0.0)


@drop_path_add_op.register_fake
def _(x, residual, key, threshold, scale, p, noise_shape, kind):
    return residual + torch.empty_like(x)  # the composition's strides


def _drop_path_add_setup(ctx, inputs, output):
    _, _, key, threshold, scale, p, noise_shape, kind = inputs
    _ops._save(ctx, key, p)
    ctx.params = (threshold, scale, noise_shape, kind)


def _drop_path_add_backward(ctx, grad):
    key, p = ctx.saved_tensors
    threshold, scale, noise_shape, kind = ctx.params
    need_x, need_residual = ctx.needs_input_grad[:2]
    grad_x = _masked_grad(grad, key, threshold, scale, p, noise_shape, kind) if need_x else None
    return grad_x, grad if need_residual else None, *(None,) * 6


def _drop_path_add_jvp(ctx, x_t, residual_t, *_):
    """``d out = M * scale * d x + d residual``."""
    key, p = ctx.saved_tensors
    threshold, scale, noise_shape, kind = ctx.params
    out_t = None if x_t is None else _masked_grad(x_t, key, threshold, scale, p, noise_shape,
                                                  kind)
    return _total(out_t, residual_t)


drop_path_add_eager = _ops.differentiable(
    drop_path_add_op, _drop_path_add_setup, _drop_path_add_backward, name="_DropPathAddFn",
    jvp=_drop_path_add_jvp,
)


# --- the functions ----------------------------------------------------------------------------


def _rate(p, kind, seed, generator, per_rank) -> tuple[Tensor, int, float, Tensor | None] | None:
    """``(key, threshold, scale, p tensor or None)`` of a training call, drawing the key as the
    unfused function does (iff ``0 < p < 1``); ``None`` for a float ``p == 0`` (the identity)."""
    if isinstance(p, Tensor):
        return F.draw_key(seed, generator, per_rank=per_rank, rate=p), 0, 1.0, p
    if p == 0.0:
        return None
    t, scale, _, _ = rng.affine_params(kind, p)
    if p == 1.0:  # everything dropped without looking: no key drawn
        return torch.tensor(F._NO_KEY, dtype=torch.int64), t, scale, None
    return F.draw_key(seed, generator, per_rank=per_rank), t, scale, None


def bias_dropout_add(
    x: Tensor,
    bias: Tensor | None,
    residual: Tensor,
    p: float | Tensor,
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``residual + dropout(x + bias, p)`` in one op: a transformer block's residual update.

    The result is :func:`dropkit.functional.dropout`'s, bit for bit in every dtype: ``x + bias``
    and the final sum are each rounded to the dtype once (half types compute in float32), the
    mask is dropout's mask over ``x``'s shape for the same ``seed``, and the same seed is drawn
    from ``generator`` when ``seed`` is not given. So ``bias_dropout_add(x, b, r, p, seed=s)``
    equals ``r + dropout(x + b, p, seed=s)``. At eval time or for ``p = 0`` it is
    ``residual + (x + bias)``; for ``p = 1`` it is ``residual + 0`` (``x``'s infs and NaNs do not
    leak). Backward regenerates the mask from the 2-word key: autograd saves no mask and nothing
    of the input's size. On CUDA (float32, float16, bfloat16) one Triton kernel reads ``x``,
    ``bias`` and ``residual`` and writes the result.

    Args:
        x: Tensor of any shape and a floating dtype (the sublayer's output before its bias).
        bias: Tensor of ``x``'s dtype that broadcasts to ``x``'s shape (typically ``(H,)``, the
            last axis of ``x``), or ``None``.
        residual: Tensor of ``x``'s shape and dtype (the block's input).
        p: Probability of dropping an element, in ``[0, 1]`` (float or 0-dim floating tensor).
        training: Apply dropout if ``True``; otherwise return ``residual + (x + bias)``.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - x, residual, output: ``(*)``, the same shape. bias: broadcastable to ``(*)``.

    Raises:
        TypeError: As :func:`dropkit.functional.dropout` (naming ``x``), ``bias`` or
            ``residual`` not a tensor, or a dtype differing from ``x``'s.
        ValueError: As :func:`dropkit.functional.dropout`, ``residual`` not of ``x``'s shape,
            ``bias`` not broadcastable to it, or either on another device.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> x, b, r = torch.ones(2, 4), torch.full((4,), 0.5), torch.full((2, 4), 10.0)
        >>> DF.bias_dropout_add(x, b, r, 0.5, seed=0)
        tensor([[13., 10., 13., 13.],
                [13., 13., 13., 13.]])
        >>> unfused = r + DF.dropout(x + b, 0.5, seed=0)
        >>> torch.equal(DF.bias_dropout_add(x, b, r, 0.5, seed=0), unfused)
        True
    """
    fn = "bias_dropout_add"
    p = F._check_common(fn, x, p, training, False, seed, generator, name="x")
    check_operand(fn, "residual", residual, x, Tensor, broadcast=False)
    if bias is not None:
        check_operand(fn, "bias", bias, x, Tensor, broadcast=True)
    rate = _rate(p, "inverted", seed, generator, True) if training and x.numel() else None
    if rate is None:
        return residual + (x if bias is None else x + bias)
    return bias_dropout_add_eager(x, bias, residual, *rate)


def drop_path_add(
    x: Tensor,
    residual: Tensor,
    p: float | Tensor,
    training: bool = True,
    *,
    mode: str = "row",
    scale_by_keep: bool = True,
    sync_ranks: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``residual + drop_path(x, p)`` in one op: a residual block with stochastic depth.

    The result is :func:`dropkit.functional.drop_path`'s, bit for bit in every dtype, with the
    same decisions for the same ``seed`` (or the same seed drawn from ``generator``): a dropped
    sample is ``residual`` plus zero, a kept one ``residual + x * scale``, rounded to the dtype
    once. At eval time or for ``p = 0`` it is ``residual + x``. Backward regenerates the
    decisions from the 2-word key (autograd saves no mask). On CUDA (float32, float16, bfloat16)
    one Triton kernel reads ``x`` (only for kept samples) and ``residual`` and writes the result.

    Args:
        x: Batch ``(N, *)`` of residual-branch outputs.
        residual: Tensor of ``x``'s shape and dtype (the block's input).
        p: Probability of dropping a sample (or the batch), in ``[0, 1]`` (float or 0-dim
            floating tensor).
        training: Apply DropPath if ``True``; otherwise return ``residual + x``.
        mode: ``"row"`` (one decision per sample) or ``"batch"`` (one for the whole batch), as
            in :func:`dropkit.functional.drop_path`.
        scale_by_keep: Scale kept samples by ``1 / (1 - p)`` (the default); ``False`` leaves
            them unscaled.
        sync_ranks: Under ``torch.distributed``, draw the same decisions on every rank, as in
            :func:`dropkit.functional.drop_path`.
        seed: Fixes the decisions: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - x, residual, output: ``(N, *)``, the same shape, at least one dimension.

    Raises:
        TypeError: As :func:`dropkit.functional.drop_path` (naming ``x``), ``residual`` not a
            tensor or of another dtype than ``x``.
        ValueError: As :func:`dropkit.functional.drop_path`, or ``residual`` not of ``x``'s
            shape or on another device.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> x, r = torch.ones(6, 3), torch.full((6, 3), 10.0)
        >>> DF.drop_path_add(x, r, 0.5, seed=0)[:, 0].tolist()
        [12.0, 10.0, 12.0, 12.0, 12.0, 12.0]
        >>> torch.equal(DF.drop_path_add(x, r, 0.5, seed=0), r + DF.drop_path(x, 0.5, seed=0))
        True
    """
    fn = "drop_path_add"
    p = F._check_common(fn, x, p, training, False, seed, generator, name="x")
    v.check_choice(fn, "mode", mode, F.DROP_PATH_MODES)
    v.check_bool(fn, "scale_by_keep", scale_by_keep)
    v.check_bool(fn, "sync_ranks", sync_ranks)
    noise_shape = drop_path_noise_shape(fn, tuple(x.shape), mode)
    check_operand(fn, "residual", residual, x, Tensor, broadcast=False)
    kind = "inverted" if scale_by_keep else "unscaled"
    rate = _rate(p, kind, seed, generator, not sync_ranks) if training and x.numel() else None
    if rate is None:
        return residual + x
    return drop_path_add_eager(x, residual, *rate, list(noise_shape), kind)

