"""torch custom ops around the mask engine: registered once, so autograd and ``torch.compile``
see one opaque, well-described operation per call instead of Python control flow.

* ``dropkit::masked_affine(x, key, threshold, noise_shape, scale, shift, fill)`` computes
  ``where(keep, x * scale + shift, fill)`` with the keep field of ``noise_shape`` broadcast over
  ``x``. Plain, spatial, timestep and alpha dropout are all this op. Its backward is the same op
  applied to the gradient with ``shift = fill = 0``: autograd saves only the 2-word ``key``.
* ``dropkit::masked_affine_`` is the in-place twin (used when no gradient is needed).
* ``dropkit::masked_affine_at(x, key, threshold, field_shape, offset, ...)`` is the same op for
  one shard of a bigger tensor: ``x`` starts at ``offset`` of a global input whose noise field
  is ``field_shape``, and reads its slice of that field (:mod:`dropkit.distributed`).
* ``dropkit::masked_affine_bits(...)`` is ``masked_affine`` that also returns the keep field
  packed to 1 bit per field element (``pack_bits``) and saves that for backward instead of the
  key: the optional "bitmask" mode of :func:`dropkit.functional.dropout`.
* ``dropkit::gaussian_mul(x, key, std)`` computes ``x * (1 + std * z)``, z standard normal, in the
  compute dtype (float32, or float64 for float64 inputs); its backward is the same op on the
  gradient.
* ``dropkit::rate_op(x, key, p, noise_shape, kind)`` is the same family with the drop rate given
  as a 0-dim tensor: the op reads it at run time, so a compiled graph does not guard on its value
  and a schedule can change it every step without recompiling. ``kind`` names the variant; the
  op turns ``p`` into ``(threshold, scale, shift, fill)`` with :func:`dropkit.rng.affine_params`,
  the same arithmetic as the float path.
* ``dropkit::draw_key(p)`` draws the key for a 0-dim rate tensor iff ``0 < p < 1``, so that a
  graph that does not guard on the rate consumes the generator as eager mode does.

Outputs keep the input's memory format, as ``torch.empty_like(x)`` (``torch.preserve_format``)
and torch's own dropout do: a ``channels_last`` (or ``channels_last_3d``, or any dense permuted)
``x`` gives an output with ``x``'s strides, a non-dense ``x`` one in its suggested memory format;
a gradient has the layout of the incoming gradient. The values do not depend on the layout: the
field stays indexed by the logical row-major position (docs/rng.md).

:func:`masked_affine_eager` is how :mod:`dropkit.functional` calls ``masked_affine``: in eager
mode it runs the same code through a ``torch.autograd.Function``, which skips the custom-op
dispatcher (about 15 us of host time per call, measured on CPU: most of a small tensor's cost);
under ``torch.compile``, export, fake tensors or dispatch modes it calls the custom op. Same
outputs, same gradients, same 16 saved bytes. Every op has such an entry point
(:func:`differentiable`, ``<op>_eager``): under forward-mode AD and functorch transforms
(``torch.func.jvp``, ``grad``, ``jacrev``, ``jacfwd``, ``vmap``) it goes through an
``autograd.Function`` with a ``jvp`` (the op is affine in its input: the tangent gets the
primal's mask and scale) and a batching rule, which a custom op's ``register_autograd`` lacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch._C._functorch import is_legacy_batchedtensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import kernels, rng
from .kernels import torch_ref

KINDS = ("inverted", "unscaled", "eval", "alpha", "gaussian")


def _key(key: Tensor) -> tuple[int, int]:
    k0, k1 = key.tolist()
    return int(k0), int(k1)


def _masked_affine(x, key, threshold, noise_shape, scale, shift, fill) -> Tensor:
    if threshold >= rng.LANE_RANGE:
        return torch.full_like(x, fill)
    backend = kernels.for_device(x.device)
    return backend.apply(x, _key(key), threshold, tuple(noise_shape), scale, shift, fill)


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
    return _masked_affine(x, key, threshold, noise_shape, scale, shift, fill)


@masked_affine.register_fake
def _(x, key, threshold, noise_shape, scale, shift, fill):
    return torch.empty_like(x)


def _save(ctx, *tensors: Tensor) -> None:
    """Save ``tensors`` for backward and for ``jvp`` (forward mode reads ``ctx.saved_tensors``
    from ``save_for_forward``)."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _masked_affine_setup(ctx, inputs, output):
    _, key, threshold, noise_shape, scale, _, _ = inputs
    _save(ctx, key)
    ctx.params = (threshold, noise_shape, scale)


def _masked_affine_backward(ctx, grad):
    (key,) = ctx.saved_tensors
    threshold, noise_shape, scale = ctx.params
    grad_x = masked_affine_eager(grad, key, threshold, noise_shape, scale, 0.0, 0.0)
    return grad_x, None, None, None, None, None, None


def _traced(args: Sequence[object]) -> bool:
    """Whether a call must be the custom op itself: under ``torch.compile``, export, ``make_fx``
    or another dispatch mode, or with a tensor subclass (fake tensors, ...) among ``args``."""
    return (
        torch.compiler.is_compiling()
        or _get_current_dispatch_mode() is not None
        or any(isinstance(a, Tensor) and type(a) is not Tensor for a in args)
    )


def _transformed() -> bool:
    """Whether forward-mode AD (a ``torch.autograd.forward_ad`` dual level, which
    ``torch.func.jvp`` opens too) or a functorch transform (``vmap``, ``grad``, ...) is active:
    then a custom op's ``register_autograd`` is not enough (it has no forward mode and no
    ``setup_context`` staticmethod for functorch)."""
    return _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def _vmap_by_slices(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op``'s batching rule: ``op`` on each slice of the batch, stacked (what functorch's
    fallback does, without its performance warning). A slice of a batched key is that slice's
    key (``randomness="different"``); an unbatched key gives every slice the same mask, so
    ``vmap(f)(x)[i]`` is ``f(x[i])``."""

    def rule(info, in_dims, *args):
        def sliced(i):
            return [a.select(d, i) if isinstance(d, int) else a
                    for a, d in zip(args, in_dims, strict=True)]

        outs = [op(*sliced(i)) for i in range(info.batch_size)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs, strict=True)), (0,) * len(outs[0])
        return torch.stack(outs), 0

    return rule


class _Leaf:
    """A list argument boxed for functorch: its pytree code would see a list as several leaves
    (and miscount the tangents of an ``autograd.Function`` under ``vmap(jvp)``)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


def _unbox(inputs: Sequence[object]) -> tuple:
    return tuple(a.value if type(a) is _Leaf else a for a in inputs)


def differentiable(
    op: Callable[..., Any],
    setup: Callable[..., None],
    backward: Callable[..., tuple],
    *,
    name: str,
    jvp: Callable[..., Any] | None = None,
    fast: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """Register ``op``'s reverse mode (``setup``, ``backward``) and batching rule
    (:func:`_vmap_by_slices`), and return its eager entry point.

    The entry point calls ``op`` itself when it is traced (:func:`_traced`: compile, export,
    fake tensors; they see the custom op and its registered autograd) and in plain eager mode.
    Under forward-mode AD or a functorch transform (:func:`_transformed`), and always when
    ``fast`` is given, it calls an ``autograd.Function`` ``name`` with the same ``setup`` and
    ``backward`` and a ``jvp``. Its forward is ``fast`` (the op's code without the dispatcher,
    about 15 us less per call) if given, else ``op``. Under functorch transforms it calls a
    twin of that Function with a ``setup_context``, ``generate_vmap_rule`` and boxed list
    arguments (:class:`_Leaf`), whose forward is ``op`` (so ``vmap`` reaches the op's batching
    rule).

    ``jvp(ctx, *tangents)`` defaults to ``backward`` applied to the tangent of the first input:
    right for an op that is affine in its only differentiable input with a diagonal linear
    part (a mask times a scale, or Gaussian noise), the adjoint of itself.
    """
    op.register_autograd(backward, setup_context=setup)
    torch.library.register_vmap(op, _vmap_by_slices(op))

    def forward(ctx, *inputs):
        # gradcheck's batched checks use the legacy vmap (no functorch transform is active)
        if fast is None or is_legacy_batchedtensor(inputs[0]):
            output = op(*inputs)
        else:
            output = fast(*inputs)
        setup(ctx, inputs, output)
        return output

    def linear_jvp(ctx, tangent, *_):
        return None if tangent is None else backward(ctx, tangent)[0]

    methods = {"backward": staticmethod(backward), "jvp": staticmethod(jvp or linear_jvp)}
    # Old style (forward(ctx, ...)) outside functorch: a setup_context makes `apply` bind the
    # arguments with inspect.signature, tens of microseconds per call.
    function = type(name, (torch.autograd.Function,), {**methods, "forward": staticmethod(forward)})
    boxed = type(name, (torch.autograd.Function,), {
        **methods,
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *inputs: op(*_unbox(inputs))),
        "setup_context": staticmethod(lambda ctx, inputs, output: setup(ctx, _unbox(inputs),
                                                                         output)),
    })

    def call(*args):
        if _traced(args):
            return op(*args)
        if torch._C._are_functorch_transforms_active():
            return boxed.apply(*(_Leaf(a) if isinstance(a, list) else a for a in args))
        if fast is None and _forward_ad._current_level < 0:
            return op(*args)
        return function.apply(*args)

    call.__doc__ = f"``{op._qualname}`` with forward-mode AD and functorch support."
    # Named as the module attribute it becomes, next to the op (for the API docs).
    call.__name__ = call.__qualname__ = f"{op._name}_eager"
    call.__module__ = op._init_fn.__module__
    return call


masked_affine_eager = differentiable(
    masked_affine, _masked_affine_setup, _masked_affine_backward, name="_MaskedAffineFn",
    fast=_masked_affine,
)
masked_affine_eager.__doc__ = """``dropkit::masked_affine``, through an ``autograd.Function``
in eager mode (:func:`differentiable`): same outputs, same gradients, same 16 saved bytes."""


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
    if torch_ref.is_dense(x):  # any memory format: written through x's own layout
        backend.apply(x, *args, out=x)
    else:
        x.copy_(backend.apply(x, *args))


@masked_affine_.register_fake
def _(x, key, threshold, noise_shape, scale, shift, fill):
    return None


@torch.library.custom_op("dropkit::masked_affine_at", mutates_args=())
def masked_affine_at(
    x: Tensor,
    key: Tensor,
    threshold: int,
    field_shape: list[int],
    offset: list[int],
    scale: float,
    shift: float,
    fill: float,
) -> Tensor:
    if threshold >= rng.LANE_RANGE:
        return torch.full_like(x, fill)
    index = torch_ref.field_index(tuple(x.shape), tuple(field_shape), tuple(offset), x.device)
    keep = torch_ref.lanes_at(_key(key), index) >= threshold
    return torch_ref.apply_keep(x, keep, scale, shift, fill)


@masked_affine_at.register_fake
def _(x, key, threshold, field_shape, offset, scale, shift, fill):
    return torch.empty_like(x)


def _masked_affine_at_setup(ctx, inputs, output):
    _, key, threshold, field_shape, offset, scale, _, _ = inputs
    _save(ctx, key)
    ctx.params = (threshold, field_shape, offset, scale)


def _masked_affine_at_backward(ctx, grad):
    (key,) = ctx.saved_tensors
    threshold, field_shape, offset, scale = ctx.params
    grad_x = masked_affine_at_eager(grad, key, threshold, field_shape, offset, scale, 0.0, 0.0)
    return grad_x, None, None, None, None, None, None, None


masked_affine_at_eager = differentiable(
    masked_affine_at, _masked_affine_at_setup, _masked_affine_at_backward,
    name="_MaskedAffineAtFn",
)


def pack_bits(keep: Tensor) -> Tensor:
    """A boolean tensor packed to ``ceil(numel / 8)`` uint8: bit ``j`` (least significant first)
    of byte ``b`` is element ``8 b + j`` in row-major order."""
    flat = keep.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    shifts = torch.arange(8, dtype=torch.uint8, device=keep.device)
    return (flat.reshape(-1, 8) << shifts).sum(-1, dtype=torch.uint8)


def unpack_bits(bits: Tensor, shape: list[int]) -> Tensor:
    """Inverse of :func:`pack_bits`: the boolean tensor of ``shape``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(-1) >> shifts) & 1).reshape(-1)
    return flat[: math.prod(shape)].reshape(shape).bool()


@torch.library.custom_op("dropkit::masked_affine_bits", mutates_args=())
def masked_affine_bits(
    x: Tensor,
    key: Tensor,
    threshold: int,
    noise_shape: list[int],
    scale: float,
    shift: float,
    fill: float,
) -> tuple[Tensor, Tensor]:
    backend = kernels.for_device(x.device)
    keep = backend.keep_field(_key(key), threshold, math.prod(noise_shape), device=x.device)
    keep = keep.reshape(noise_shape)
    return torch_ref.apply_keep(x, keep, scale, shift, fill), pack_bits(keep)


@masked_affine_bits.register_fake
def _(x, key, threshold, noise_shape, scale, shift, fill):
    bits = x.new_empty(-(-math.prod(noise_shape) // 8), dtype=torch.uint8)
    return torch.empty_like(x), bits


def _bits_setup(ctx, inputs, output):
    _, _, _, noise_shape, scale, _, _ = inputs
    _save(ctx, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.params = (noise_shape, scale)


def _bits_backward(ctx, grad, _):
    (bits,) = ctx.saved_tensors
    noise_shape, scale = ctx.params
    keep = unpack_bits(bits, noise_shape)
    return torch_ref.apply_keep(grad, keep, scale, 0.0, 0.0), None, None, None, None, None, None


masked_affine_bits_eager = differentiable(
    masked_affine_bits, _bits_setup, _bits_backward, name="_MaskedAffineBitsFn",
    jvp=lambda ctx, tangent, *_: (_bits_backward(ctx, tangent, None)[0], None),
)


@torch.library.custom_op("dropkit::gaussian_mul", mutates_args=())
def gaussian_mul(x: Tensor, key: Tensor, std: float) -> Tensor:
    backend = kernels.for_device(x.device)
    fused = getattr(backend, "gaussian", None)  # numba: float32/float64 in one pass, same bits
    out = fused(x, _key(key), std) if fused is not None else None
    if out is not None:
        return out
    z = backend.normal_field(_key(key), x.numel(), device=x.device).reshape(x.shape)
    ct = torch_ref.compute_dtype(x.dtype)
    return torch_ref.in_memory_order(
        lambda xv, zv: (xv.to(ct) * (1.0 + std * zv).to(ct)).to(x.dtype), x, z)


@gaussian_mul.register_fake
def _(x, key, std):
    return torch.empty_like(x)


def _gaussian_setup(ctx, inputs, output):
    _, key, std = inputs
    _save(ctx, key)
    ctx.std = std


def _gaussian_backward(ctx, grad):
    (key,) = ctx.saved_tensors
    return gaussian_mul_eager(grad, key, ctx.std), None, None


gaussian_mul_eager = differentiable(
    gaussian_mul, _gaussian_setup, _gaussian_backward, name="_GaussianMulFn"
)


def read_rate(p: Tensor, fn: str = "dropkit") -> float:
    """The value of a 0-dim rate tensor, checked to be in [0, 1] (at run time); ``fn`` names
    the caller in the message (the ops, which do not know it, say ``dropkit``)."""
    value = float(p.item())
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{fn}: `p` must be in [0, 1], got {value!r}.")
    return value


# nondeterministic_seeded: like torch.randint, the compiler keeps it in program order among the
# random ops and never recomputes it (it consumes torch's default CPU generator).
@torch.library.custom_op("dropkit::draw_key", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def draw_key_op(p: Tensor) -> Tensor:
    """The two key words drawn from torch's default CPU generator iff ``0 < p < 1`` (the 0-dim
    rate tensor, read when the op runs), as the float path draws them; ``(0, 0)`` otherwise,
    drawing nothing: a compiled graph consumes the generator as eager mode does at every rate."""
    if 0.0 < read_rate(p) < 1.0:
        return torch.randint(0, 2**32, (2,), dtype=torch.int64)
    return torch.zeros(2, dtype=torch.int64)


@draw_key_op.register_fake
def _(p):
    return torch.empty(2, dtype=torch.int64)


@torch.library.custom_op("dropkit::rate_op", mutates_args=())
def rate_op(x: Tensor, key: Tensor, p: Tensor, noise_shape: list[int], kind: str) -> Tensor:
    rate = read_rate(p)
    if rate == 0.0:  # what the float path returns (the input's values), at the cost of a copy
        return x.clone()
    if kind == "gaussian":
        if rate == 1.0:
            return torch.zeros_like(x)
        return gaussian_mul(x, key, math.sqrt(rate / (1.0 - rate)))
    t, scale, shift, fill = rng.affine_params(kind, rate)
    return masked_affine(x, key, t, noise_shape, scale, shift, fill)


@rate_op.register_fake
def _(x, key, p, noise_shape, kind):
    return torch.empty_like(x)


@torch.library.custom_op("dropkit::rate_op_backward", mutates_args=())
def rate_op_backward(
    grad: Tensor, key: Tensor, p: Tensor, noise_shape: list[int], kind: str
) -> Tensor:
    """Gradient of :func:`rate_op`: the same decisions, times the scale, no shift or fill."""
    rate = read_rate(p)
    if kind == "gaussian" or rate == 0.0:
        return rate_op(grad, key, p, noise_shape, kind)
    t, scale, _, _ = rng.affine_params(kind, rate)
    return masked_affine(grad, key, t, noise_shape, scale, 0.0, 0.0)


@rate_op_backward.register_fake
def _(grad, key, p, noise_shape, kind):
    return torch.empty_like(grad)


def _rate_setup(ctx, inputs, output):
    _, key, p, noise_shape, kind = inputs
    _save(ctx, key, p)
    ctx.params = (noise_shape, kind)


def _rate_backward(ctx, grad):
    key, p = ctx.saved_tensors
    return rate_op_backward_eager(grad, key, p, *ctx.params), None, None, None, None


# Both ops are linear in their first input with the same mask and scale, so both have the same
# backward: rate_op_backward again.
rate_op_eager = differentiable(rate_op, _rate_setup, _rate_backward, name="_RateOpFn")
rate_op_backward_eager = differentiable(
    rate_op_backward, _rate_setup, _rate_backward, name="_RateOpBackwardFn"
)


@torch.library.custom_op("dropkit::gaussian_add", mutates_args=())
def gaussian_add(x: Tensor, key: Tensor, std: float) -> Tensor:
    """``x + std * z``, z the standard normal field of stream 1 (the noise of ``gaussian_mul``):
    ``std * z`` is computed in float64, rounded to the compute dtype, added in it and rounded to
    x's dtype. Its gradient is the identity, so autograd saves nothing, not even the key."""
    z = kernels.for_device(x.device).normal_field(_key(key), x.numel(), device=x.device)
    ct = torch_ref.compute_dtype(x.dtype)
    out = (x.to(ct) + (std * z.reshape(x.shape)).to(ct)).to(x.dtype)
    like = torch.empty_like(x)  # x's memory format, as every op here
    return out if out.stride() == like.stride() else like.copy_(out)


@gaussian_add.register_fake
def _(x, key, std):
    return torch.empty_like(x)


def _gaussian_add_setup(ctx, inputs, output):
    pass


def _gaussian_add_backward(ctx, grad):
    return grad, None, None


# identity gradient; the default jvp (backward on the tangent) is the identity too
gaussian_add_eager = differentiable(
    gaussian_add, _gaussian_add_setup, _gaussian_add_backward, name="_GaussianAddFn"
)
