"""Scaled dot-product attention with dropkit's attention dropout (``docs/guides/attention.md``).

The random field is the attention weights' shape ``(*batch, L, S)`` (``batch``: the broadcast
batch shape of query, key, value and mask, heads included), numbered row-major as every dropkit
field (``docs/rng.md``, section 10). ``dropout_mode="probs"`` drops weights after the softmax,
exactly as ``dropkit.functional.dropout(weights, p, seed=seed)`` would; ``"key"`` (DropKey)
drops the same positions' logits before it.

Two custom ops carry the work, so autograd, ``torch.compile`` and export see one opaque call:

* ``dropkit::attention(q, k, v, mask, key, threshold, keep_scale, scale, causal, mode)`` returns
  ``(out, lse)``, ``lse`` the per-row log-sum-exp of the (masked) logits.
* ``dropkit::attention_backward(...)`` recomputes the weights from ``q``, ``k``, ``lse`` and
  regenerates the keep field from the 16-byte key.

Both walk the query rows in blocks of at most ``_BLOCK_ELEMENTS`` weights, so no ``L x S``
tensor outlives a block, and autograd keeps only ``q, k, v``, the mask (an input), ``out``,
``lse`` and the key. The logits and products use torch's matmuls (BLAS) in the compute dtype
(float32 for 16-bit inputs, float64 for float64); the keep field of a block comes from the
backend's ``keep_runs`` (numba on CPU, pure PyTorch elsewhere).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from . import _validation as v
from . import kernels, rng
from .kernels import torch_ref

__all__ = ["scaled_dot_product_attention"]

MODES = ("probs", "key")
_BLOCK_ELEMENTS = 1 << 21  # weights per block of query rows (8 MiB in float32)


def _batch_shape(q: Tensor, k: Tensor, vv: Tensor, mask: Tensor | None) -> tuple[int, ...]:
    shapes = [q.shape[:-2], k.shape[:-2], vv.shape[:-2]]
    if mask is not None:
        shapes.append(mask.shape[:-2])
    return tuple(torch.broadcast_shapes(*shapes))


def _rows_per_block(n: int, length: int, s: int) -> int:
    return max(1, min(length, _BLOCK_ELEMENTS // max(1, n * s)))


def _block_keep(key: Tensor, t: int, batch, length: int, s: int, l0: int, l1: int,
                device) -> Tensor:
    """The keep field of query rows ``l0:l1`` of every batch entry: ``(*batch, l1 - l0, S)``."""
    n = math.prod(batch)
    starts = torch.arange(n, dtype=torch.int64) * (length * s) + l0 * s
    backend = kernels.for_device(device)
    keep_runs = getattr(backend, "keep_runs", torch_ref.keep_runs)
    k0, k1 = (int(w) for w in key.tolist())
    keep = keep_runs((k0, k1), t, starts, (l1 - l0) * s, device=device)
    return keep.to(device).reshape(*batch, l1 - l0, s)


def _logits(q_scaled, k_t, mask, key, t, batch, length, l0, l1, causal, mode) -> tuple:
    """Masked logits of query rows ``l0:l1`` (compute dtype, a fresh ``(*batch, rows, S)``
    tensor) and their keep field (or None). ``q_scaled`` is the query times the scale."""
    s = k_t.shape[-1]
    logits = torch.matmul(q_scaled[..., l0:l1, :], k_t)
    if logits.shape[:-2] != batch:  # the mask has more batch entries than query and key
        logits = logits.expand(*batch, l1 - l0, s).contiguous()
    if mask is not None:
        rows = mask if mask.shape[-2] == 1 else mask[..., l0:l1, :]
        if rows.dtype == torch.bool:
            logits.masked_fill_(~rows, float("-inf"))
        else:
            logits.add_(rows)
    if causal:
        row = torch.arange(l0, l1, device=logits.device).unsqueeze(-1)
        logits.masked_fill_(torch.arange(s, device=logits.device) > row, float("-inf"))
    keep = None
    if t > 0:
        keep = _block_keep(key, t, batch, length, s, l0, l1, logits.device)
        if mode == "key":
            logits.masked_fill_(~keep, float("-inf"))
    return logits, keep


def _forward(q, k, vv, mask, key, t, keep_scale, scale, causal, mode) -> tuple[Tensor, Tensor]:
    batch = _batch_shape(q, k, vv, mask)
    length, s = q.shape[-2], k.shape[-2]
    ct = torch_ref.compute_dtype(q.dtype)
    q_scaled, k_t, vc = q.to(ct) * scale, k.to(ct).transpose(-2, -1), vv.to(ct)
    out = torch.empty(*batch, length, vv.shape[-1], dtype=ct, device=q.device)
    lse = torch.empty(*batch, length, dtype=ct, device=q.device)
    if s == 0:
        return out.zero_().to(q.dtype), lse.fill_(float("inf"))
    step = _rows_per_block(math.prod(batch), length, s)
    for l0 in range(0, length, step):
        l1 = min(length, l0 + step)
        logits, keep = _logits(q_scaled, k_t, mask, key, t, batch, length, l0, l1, causal, mode)
        top = logits.amax(-1, keepdim=True)
        top.masked_fill_(top == float("-inf"), 0.0)
        e = logits.sub_(top).exp_()
        total = e.sum(-1, keepdim=True)
        lse[..., l0:l1] = torch.where(total > 0, top + torch.log(total), float("inf")).squeeze(-1)
        weights = e.div_(total.clamp_min(torch.finfo(ct).tiny))  # nothing left -> zeros
        if keep is not None and mode == "probs":  # = where(keep, weights * keep_scale, 0)
            weights.mul_(keep_scale).masked_fill_(~keep, 0.0)
        out[..., l0:l1, :] = torch.matmul(weights, vc)
    return out.to(q.dtype), lse


def _backward(grad, q, k, vv, mask, out, lse, key, t, keep_scale, scale, causal, mode,
              mask_grad) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch = _batch_shape(q, k, vv, mask)
    length, s = q.shape[-2], k.shape[-2]
    ct = torch_ref.compute_dtype(q.dtype)
    q_scaled, kc, vc, g = q.to(ct) * scale, k.to(ct), vv.to(ct), grad.to(ct)
    k_t, v_t = kc.transpose(-2, -1), vc.transpose(-2, -1)
    delta = (g * out.to(ct)).sum(-1, keepdim=True)  # rowsum(dP * P) = rowsum(dO * O)
    dq = torch.empty(*batch, length, q.shape[-1], dtype=ct, device=q.device)
    dk = torch.zeros(*batch, s, k.shape[-1], dtype=ct, device=q.device)
    dv = torch.zeros(*batch, s, vv.shape[-1], dtype=ct, device=q.device)
    dmask = torch.zeros(mask.shape if mask_grad else (0,), dtype=ct, device=q.device)
    step = _rows_per_block(math.prod(batch), length, s) if s else length
    for l0 in range(0, length if s else 0, step):
        l1 = min(length, l0 + step)
        logits, keep = _logits(q_scaled, k_t, mask, key, t, batch, length, l0, l1, causal, mode)
        weights = logits.sub_(lse[..., l0:l1, None]).exp_()
        g_rows = g[..., l0:l1, :]
        d_weights = torch.matmul(g_rows, v_t)
        dropped = weights
        if keep is not None and mode == "probs":
            drop = ~keep
            dropped = (weights * keep_scale).masked_fill_(drop, 0.0)
            d_weights.mul_(keep_scale).masked_fill_(drop, 0.0)
        dv += torch.matmul(dropped.transpose(-2, -1), g_rows)
        d_logits = d_weights.sub_(delta[..., l0:l1, :]).mul_(weights)
        if mask_grad:
            rows = dmask if mask.shape[-2] == 1 else dmask[..., l0:l1, :]
            rows += d_logits.sum_to_size(rows.shape)
        dq[..., l0:l1, :] = torch.matmul(d_logits, kc).mul_(scale)
        dk += torch.matmul(d_logits.transpose(-2, -1), q_scaled[..., l0:l1, :])
    if length == 0 or s == 0:
        dq.zero_()
    return (dq.sum_to_size(q.shape).to(q.dtype), dk.sum_to_size(k.shape).to(k.dtype),
            dv.sum_to_size(vv.shape).to(vv.dtype), dmask.to(q.dtype))


@torch.library.custom_op("dropkit::attention", mutates_args=())
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    key: Tensor,
    threshold: int,
    keep_scale: float,
    scale: float,
    causal: bool,
    mode: str,
) -> tuple[Tensor, Tensor]:
    return _forward(q, k, v, mask, key, threshold, keep_scale, scale, causal, mode)


def _forward_fake(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    batch = _batch_shape(q, k, v, mask)
    out = q.new_empty(*batch, q.shape[-2], v.shape[-1])
    return out, q.new_empty(*batch, q.shape[-2], dtype=torch_ref.compute_dtype(q.dtype))


@attention.register_fake
def _(q, k, v, mask, key, threshold, keep_scale, scale, causal, mode):
    return _forward_fake(q, k, v, mask)


@torch.library.custom_op("dropkit::attention_backward", mutates_args=())
def attention_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    out: Tensor,
    lse: Tensor,
    key: Tensor,
    threshold: int,
    keep_scale: float,
    scale: float,
    causal: bool,
    mode: str,
    mask_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backward(grad, q, k, v, mask, out, lse, key, threshold, keep_scale, scale, causal,
                     mode, mask_grad)


def _backward_fake(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   mask_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dmask = q.new_empty(mask.shape if mask_grad else (0,))  # contiguous, as _backward's
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask


@attention_backward.register_fake
def _(grad, q, k, v, mask, out, lse, key, threshold, keep_scale, scale, causal, mode, mask_grad):
    return _backward_fake(q, k, v, mask, mask_grad)


def _setup(ctx, inputs, output):
    q, k, vv, mask, key, threshold, keep_scale, scale, causal, mode = inputs
    out, lse = output
    ctx.save_for_backward(q, k, vv, mask, out, lse, key)
    ctx.mark_non_differentiable(lse)
    ctx.mask_grad = mask is not None and mask.dtype != torch.bool and mask.requires_grad
    ctx.params = (threshold, keep_scale, scale, causal, mode)


def _attention_grad(ctx, grad, _):
    q, k, vv, mask, out, lse, key = ctx.saved_tensors
    dq, dk, dv, dmask = attention_backward(grad.contiguous(), q, k, vv, mask, out, lse, key,
                                           *ctx.params, ctx.mask_grad)
    return dq, dk, dv, (dmask if ctx.mask_grad else None), None, None, None, None, None, None


attention.register_autograd(_attention_grad, setup_context=_setup)


def _rate_params(p: Tensor) -> tuple[int, float]:
    """``(threshold, keep_scale)`` of a 0-dim rate tensor, read (and checked) at run time."""
    from ._ops import read_rate

    rate = read_rate(p, "scaled_dot_product_attention")
    t, keep_scale, _, _ = rng.affine_params("inverted", rate)
    return t, keep_scale


@torch.library.custom_op("dropkit::attention_rate", mutates_args=())
def attention_rate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    key: Tensor,
    p: Tensor,
    scale: float,
    causal: bool,
    mode: str,
) -> tuple[Tensor, Tensor]:
    """``dropkit::attention`` with the rate a 0-dim tensor read when the op runs, so a
    compiled graph follows a changing rate (a schedule) without recompiling."""
    t, keep_scale = _rate_params(p)
    return _forward(q, k, v, mask, key, t, keep_scale, scale, causal, mode)


@attention_rate.register_fake
def _(q, k, v, mask, key, p, scale, causal, mode):
    return _forward_fake(q, k, v, mask)


@torch.library.custom_op("dropkit::attention_rate_backward", mutates_args=())
def attention_rate_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    out: Tensor,
    lse: Tensor,
    key: Tensor,
    p: Tensor,
    scale: float,
    causal: bool,
    mode: str,
    mask_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    t, keep_scale = _rate_params(p)
    return _backward(grad, q, k, v, mask, out, lse, key, t, keep_scale, scale, causal, mode,
                     mask_grad)


@attention_rate_backward.register_fake
def _(grad, q, k, v, mask, out, lse, key, p, scale, causal, mode, mask_grad):
    return _backward_fake(q, k, v, mask, mask_grad)


def _setup_rate(ctx, inputs, output):
    q, k, vv, mask, key, p, scale, causal, mode = inputs
    out, lse = output
    ctx.save_for_backward(q, k, vv, mask, out, lse, key, p)
    ctx.mark_non_differentiable(lse)
    ctx.mask_grad = mask is not None and mask.dtype != torch.bool and mask.requires_grad
    ctx.params = (scale, causal, mode)


def _attention_rate_grad(ctx, grad, _):
    q, k, vv, mask, out, lse, key, p = ctx.saved_tensors
    dq, dk, dv, dmask = attention_rate_backward(grad.contiguous(), q, k, vv, mask, out, lse, key,
                                                p, *ctx.params, ctx.mask_grad)
    return dq, dk, dv, (dmask if ctx.mask_grad else None), None, None, None, None, None


attention_rate.register_autograd(_attention_rate_grad, setup_context=_setup_rate)


def _check_tensor(fn: str, name: str, value: object, dims: int) -> Tensor:
    from .functional import _check_input

    _check_input(fn, value, name)
    if value.dim() < dims:
        raise ValueError(f"{fn}: `{name}` must have at least {dims} dimensions "
                         f"(..., {'L' if name == 'query' else 'S'}, E), got shape "
                         f"{tuple(value.shape)}.")
    return value


def _check_mask(fn: str, mask: object, q: Tensor, batch: tuple[int, ...], length: int,
                s: int) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{fn}: `attn_mask` must be a torch.Tensor or None, got "
                        f"{type(mask).__name__}.")
    if mask.dtype not in (torch.bool, torch.float32, q.dtype):  # torch's SDPA's rule
        raise TypeError(f"{fn}: `attn_mask` must have dtype torch.bool, torch.float32 or the "
                        f"query's dtype ({q.dtype}), got {mask.dtype}.")
    target = (*batch, length, s)
    try:
        if mask.dim() < 2 or mask.shape[-2] not in (1, length) or mask.shape[-1] not in (1, s):
            raise RuntimeError
        torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        raise ValueError(f"{fn}: `attn_mask` must broadcast to the weights' shape {target} "
                         f"(..., L, S), got shape {tuple(mask.shape)}.") from None
    return mask


def _check_dropout_p(fn: str, p: object) -> float | Tensor:
    """A float in ``[0, 1]``; a 0-dim floating tensor is read here in eager mode (checked, its
    value used as the float) and passed on while compiling or tracing."""
    if not isinstance(p, Tensor):
        return v.check_p(fn, p, "dropout_p")
    if p.dim() != 0 or not p.is_floating_point():
        raise TypeError(f"{fn}: `dropout_p` must be a real number in [0, 1] or a 0-dim floating "
                        f"tensor, got a tensor of shape {tuple(p.shape)} and dtype {p.dtype}.")
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or type(p) is not Tensor:
        return p
    from ._ops import read_rate

    return read_rate(p, fn)


def _grouped(q: Tensor, k: Tensor, vv: Tensor, mask: Tensor | None, batch: tuple[int, ...],
             groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Grouped-query attention as broadcasting: ``(..., Hk, G, L, E)`` against
    ``(..., Hk, 1, S, E)``, the same row-major field as the ``(..., Hq, L, S)`` weights."""
    if groups == 1:
        return q, k, vv, mask
    hk = k.shape[-3]
    q = q.unflatten(-3, (hk, groups))
    k, vv = k.unsqueeze(-3), vv.unsqueeze(-3)
    if mask is not None:
        mask = mask.reshape((1,) * (len(batch) + 2 - mask.dim()) + mask.shape)
        mask = mask.unflatten(-3, (hk, groups)) if mask.shape[-3] != 1 else mask.unsqueeze(-3)
    return q, k, vv, mask


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_mode: str = "probs",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scaled dot-product attention, torch's semantics, with dropkit's attention dropout.

    ``softmax(query @ key.transpose(-2, -1) * scale + bias) @ value``, where ``bias`` comes
    from ``attn_mask`` (boolean: ``True`` takes part, ``False`` is ``-inf``; floating: added)
    and ``is_causal`` (top-left aligned lower triangle, as torch). With ``dropout_p > 0`` the
    attention weights of shape ``(*batch, L, S)`` form the random field (numbered row-major,
    [docs/rng.md](../rng.md)); ``dropout_mode="probs"`` gives exactly
    ``dropkit.functional.dropout(weights, dropout_p, seed=seed) @ value`` (the same dropped
    positions, the same scale ``1 / (1 - p_eff)``, values equal up to rounding);
    ``dropout_mode="key"`` (DropKey) sets the same positions' logits to ``-inf`` before the
    softmax, which renormalises (no extra scale). A row with every key masked or dropped gives
    zeros, not NaN (torch's SDPA gives zeros for fully masked rows too).

    Autograd keeps ``query``, ``key``, ``value``, ``attn_mask``, the output, one log-sum-exp
    per query row and the 16-byte Philox key, never an ``L x S`` tensor: backward recomputes the
    weights and regenerates the mask block by block. There is no ``training`` flag (as in
    torch): pass ``dropout_p=0.0`` in eval. ``dropout_p == 0`` (``p_eff == 0``) calls
    ``torch.nn.functional.scaled_dot_product_attention`` itself and draws nothing.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``. Same floating
            dtype and device; batch dimensions broadcast.
        attn_mask: ``None``, or a bool, float32 or query-dtype tensor broadcastable to
            ``(..., L, S)``; a floating mask receives a gradient.
        dropout_p: Probability of dropping an attention weight (or key), in ``[0, 1]``: a
            float, or a 0-dim floating tensor (read when the op runs under ``torch.compile``,
            so a changing rate does not recompile; read at once in eager mode).
        is_causal: Causal masking; cannot be combined with ``attn_mask``.
        scale: Logit scale; ``1 / sqrt(E)`` when ``None``.
        enable_gqa: Grouped-query attention: key/value have ``Hk`` heads (dimension -3), query
            ``Hq``, a multiple of ``Hk``; query head ``h`` uses key head ``h // (Hq / Hk)``.
        dropout_mode: ``"probs"`` (drop weights, torch's and FlashAttention's choice) or
            ``"key"`` (DropKey, Li et al., CVPR 2023).
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        Output: ``(*batch, L, Ev)``, ``batch`` the broadcast batch shape of the inputs.

    Raises:
        TypeError: A non-tensor or non-floating input, mismatched dtypes, a mask of another
            dtype, a non-number ``dropout_p`` or ``scale``, non-bool flags, a non-int seed.
        ValueError: Fewer than 2 dimensions, mismatched ``E`` or ``S``, batch shapes that do not
            broadcast, a mask that does not broadcast, ``attn_mask`` with ``is_causal``, bad GQA
            head counts, ``dropout_p`` outside ``[0, 1]``, an unknown ``dropout_mode``.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> q = k = torch.randn(1, 2, 4, 8); v = torch.eye(4).expand(1, 2, 4, 4)
        >>> w = DF.scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=3)  # = weights
        >>> ref = DF.dropout(torch.softmax(q @ k.mT / 8**0.5, -1), 0.5, seed=3)
        >>> torch.equal(w == 0, ref == 0), torch.allclose(w, ref)
        (True, True)
    """
    fn = "scaled_dot_product_attention"
    q = _check_tensor(fn, "query", query, 2)
    k = _check_tensor(fn, "key", key, 2)
    vv = _check_tensor(fn, "value", value, 2)
    for name, other in (("key", k), ("value", vv)):
        if other.dtype != q.dtype:
            raise TypeError(f"{fn}: `{name}` must have the query's dtype {q.dtype}, got "
                            f"{other.dtype}.")
        if other.device != q.device:
            raise ValueError(f"{fn}: `{name}` must be on the query's device {q.device}, got "
                             f"{other.device}.")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{fn}: `key` must have the query's last dimension E = "
                         f"{q.shape[-1]}, got shape {tuple(k.shape)}.")
    if vv.shape[-2] != k.shape[-2]:
        raise ValueError(f"{fn}: `value` must have as many rows S as `key` ({k.shape[-2]}), "
                         f"got shape {tuple(vv.shape)}.")
    p = _check_dropout_p(fn, dropout_p)
    v.check_bool(fn, "is_causal", is_causal)
    v.check_bool(fn, "enable_gqa", enable_gqa)
    v.check_choice(fn, "dropout_mode", dropout_mode, MODES)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale)):
        raise TypeError(f"{fn}: `scale` must be a finite real number or None, got "
                        f"{type(scale).__name__} {scale!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: `generator` must be a torch.Generator or None, got "
                        f"{type(generator).__name__}.")
    v.check_seed(fn, seed, generator)
    if is_causal and attn_mask is not None:
        raise ValueError(f"{fn}: pass either `attn_mask` or `is_causal=True`, not both.")
    groups = 1
    if enable_gqa and (q.dim() < 3 or k.dim() < 3 or vv.dim() < 3):
        raise ValueError(f"{fn}: `enable_gqa=True` needs a head dimension (-3) in query, key "
                         f"and value, got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(vv.shape)}.")
    if enable_gqa and q.shape[-3] != k.shape[-3]:
        hq, hk = q.shape[-3], k.shape[-3]
        if hk == 0 or hq % hk or vv.shape[-3] != hk:
            raise ValueError(f"{fn}: with `enable_gqa=True` the query's heads ({hq}) must be a "
                             f"multiple of the key's ({hk}), and value must have the key's "
                             f"heads, got value heads {vv.shape[-3]}.")
        groups = hq // hk
    try:
        kv_batch = (*k.shape[:-3], k.shape[-3] * groups) if groups > 1 else k.shape[:-2]
        batch = tuple(torch.broadcast_shapes(q.shape[:-2], kv_batch, vv.shape[:-2] if groups == 1
                                             else kv_batch))
    except RuntimeError:
        raise ValueError(f"{fn}: the batch dimensions of `query` {tuple(q.shape)}, `key` "
                         f"{tuple(k.shape)} and `value` {tuple(vv.shape)} do not broadcast."
                         ) from None
    length, s = q.shape[-2], k.shape[-2]
    mask = None
    if attn_mask is not None:
        mask = _check_mask(fn, attn_mask, q, batch, length, s)
        batch = tuple(torch.broadcast_shapes(batch, mask.shape[:-2]))
    scale_value = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if isinstance(p, Tensor):  # compiling or tracing: the op reads the rate at run time
        q, k, vv, mask = _grouped(q, k, vv, mask, batch, groups)
        from .functional import draw_key

        out, _ = attention_rate(q, k, vv, mask, draw_key(seed, generator), p.to(torch.float64),
                                scale_value, is_causal, dropout_mode)
        return out.flatten(-4, -3) if groups > 1 else out
    t, keep_scale, _, _ = rng.affine_params("inverted", p)
    if t == 0:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, vv, attn_mask=mask, dropout_p=0.0, is_causal=is_causal, scale=scale_value,
            enable_gqa=enable_gqa)
    q, k, vv, mask = _grouped(q, k, vv, mask, batch, groups)
    if t >= rng.LANE_RANGE:
        key_tensor = torch.zeros(2, dtype=torch.int64)  # every weight dropped: nothing drawn
    else:
        from .functional import draw_key

        key_tensor = draw_key(seed, generator)
    out, _ = attention(q, k, vv, mask, key_tensor, t, keep_scale, scale_value, is_causal,
                       dropout_mode)
    return out.flatten(-4, -3) if groups > 1 else out
