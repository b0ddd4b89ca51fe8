"""Attention layers whose attention dropout is dropkit's (``docs/guides/attention.md``).

* :class:`MultiheadAttention`: a subclass of ``torch.nn.MultiheadAttention`` with the same
  parameters, ``state_dict`` and arguments; in training with ``dropout > 0`` the attention is
  :func:`dropkit.functional.scaled_dot_product_attention`, otherwise torch's own ``forward``
  runs (so eval is bit-equal to torch's).
* timm's ``Attention`` (ViT, DeiT, ...): :func:`timm_attention_class` gives a subclass of it
  whose training ``forward`` calls dropkit's attention at the rate of its ``attn_drop`` module
  (read at run time when that is a dropkit module: a schedule does not recompile); eval runs
  timm's own ``forward``. :func:`dropkit.convert` swaps the classes.
"""

from __future__ import annotations

import importlib
import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as DF
from ._rate import RateModule

__all__ = ["MultiheadAttention", "timm_attention_class"]


def _batch_first(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, L, E) -> (L, N, E) keeping which of query, key and value are the same tensor (torch's
    packed in-projection looks at that)."""
    if key is value:
        if query is key:
            query = key = value = query.transpose(1, 0)
        else:
            query, key = (x.transpose(1, 0) for x in (query, key))
            value = key
    else:
        query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    return query, key, value


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose attention dropout is dropkit's.

    Same constructor, parameters, ``state_dict`` and ``forward`` arguments as torch's (see
    ``torch.nn.MultiheadAttention``). In training with ``dropout > 0`` the attention weights of
    shape ``(N, num_heads, L, S)`` are dropped with dropkit's mask (the field of
    :func:`dropkit.functional.scaled_dot_product_attention`, numbered row-major,
    [docs/rng.md](../rng.md) section 10), so
    ``need_weights=False`` keeps no ``L x S`` tensor for backward. With ``need_weights=True``
    the weights are computed and dropped with :func:`dropkit.functional.dropout` (the same
    field, so the same positions for the same seed) and returned after dropout, as torch
    returns them. In eval, or with ``dropout == 0``, torch's own ``forward`` runs (its fast
    path included): bit-equal to torch's module.

    Args:
        embed_dim: Total dimension of the model.
        num_heads: Number of heads (``embed_dim`` must be divisible by it).
        dropout: Drop rate of the attention weights (applied with dropkit's mask).
        bias: Add bias to the input and output projections.
        add_bias_kv: Add bias to the key and value sequences at dim 0.
        add_zero_attn: Add a new batch of zeros to the key and value sequences at dim 1.
        kdim: Features of the keys (default ``embed_dim``).
        vdim: Features of the values (default ``embed_dim``).
        batch_first: Inputs and outputs are ``(N, L, E)`` instead of ``(L, N, E)``.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        AssertionError: As torch's (``embed_dim`` not divisible by ``num_heads``).

    Example:
        >>> import torch, dropkit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> mha = dropkit.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> mha(x, x, x, need_weights=False)[0].shape
        torch.Size([3, 5, 8])
        >>> ref = torch.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        >>> _ = ref.load_state_dict(mha.state_dict())
        >>> torch.equal(mha.eval()(x, x, x)[0], ref.eval()(x, x, x)[0])
        True
    """

    _dropkit_attention = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim,
                         vdim, batch_first, device, dtype)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if not self.training or self.dropout == 0.0:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = _batch_first(query, key, value)
        out, weights = _multi_head_attention(self, query, key, value, key_padding_mask,
                                             need_weights, attn_mask, average_attn_weights,
                                             is_causal)
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights


def _multi_head_attention(m: nn.MultiheadAttention, query, key, value, key_padding_mask,
                          need_weights, attn_mask, average_attn_weights, is_causal):
    """``torch.nn.functional.multi_head_attention_forward`` in training (sequence-first
    inputs), its attention dropout dropkit's. The checks and projections are torch's."""
    h = m.num_heads
    batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, h)
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    length, n, embed = query.shape
    if embed != m.embed_dim:
        raise ValueError(f"MultiheadAttention: `query` must have embed_dim = {m.embed_dim} "
                         f"features, got shape {tuple(query.shape)}.")
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask, mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask), other_name="attn_mask", target_type=query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError("MultiheadAttention: `is_causal=True` needs `attn_mask` (torch's rule; "
                           "nn.Transformer.generate_square_subsequent_mask makes one).")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                      other_name="", target_type=query.dtype, check_other=False)
        if key_padding_mask is not None:
            is_causal = False
    if m._qkv_same_embed_dim:
        q, k, v = F._in_projection_packed(query, key, value, m.in_proj_weight, m.in_proj_bias)
    else:
        b = (None,) * 3 if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
        q, k, v = F._in_projection(query, key, value, m.q_proj_weight, m.k_proj_weight,
                                   m.v_proj_weight, *b)
    if attn_mask is not None:
        expected = (length, key.shape[0]) if attn_mask.dim() == 2 else (n * h, length,
                                                                         key.shape[0])
        if attn_mask.dim() not in (2, 3) or tuple(attn_mask.shape) != expected:
            raise RuntimeError(f"MultiheadAttention: `attn_mask` must have shape {expected}, "
                               f"got {tuple(attn_mask.shape)}.")
        attn_mask = attn_mask.reshape(-1, length, key.shape[0])
    extra = []
    if m.bias_k is not None and m.bias_v is not None:
        k = torch.cat([k, m.bias_k.repeat(1, n, 1)])
        v = torch.cat([v, m.bias_v.repeat(1, n, 1)])
        extra.append(None)
    e = m.head_dim
    q = q.view(length, n * h, e).transpose(0, 1)
    k = k.view(k.shape[0], n * h, e).transpose(0, 1)
    v = v.view(v.shape[0], n * h, e).transpose(0, 1)
    if m.add_zero_attn:
        k = torch.cat([k, k.new_zeros(n * h, 1, e)], dim=1)
        v = torch.cat([v, v.new_zeros(n * h, 1, e)], dim=1)
        extra.append(None)
    if extra:  # the added key columns: unmasked
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, len(extra)))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, len(extra)))
    s = k.shape[1]
    if key_padding_mask is not None:
        if key_padding_mask.shape != (n, s):
            raise RuntimeError(f"MultiheadAttention: `key_padding_mask` must have shape {(n, s)}, "
                               f"got {tuple(key_padding_mask.shape)}.")
        pad = key_padding_mask.view(n, 1, 1, s).expand(-1, h, -1, -1).reshape(n * h, 1, s)
        attn_mask = pad if attn_mask is None else attn_mask + pad
    if need_weights:
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: `is_causal=True` with `need_weights=True` "
                               "needs `attn_mask`.")
        q_scaled = q * math.sqrt(1.0 / e)
        logits = (torch.bmm(q_scaled, k.transpose(-2, -1)) if attn_mask is None
                  else torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1)))
        weights = DF.dropout(torch.softmax(logits, dim=-1), m.dropout)
        out = torch.bmm(weights, v)
    else:
        mask4 = attn_mask
        if attn_mask is not None:
            mask4 = (attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1
                     else attn_mask.view(n, h, -1, s))
        out = DF.scaled_dot_product_attention(
            q.view(n, h, length, e), k.view(n, h, s, e), v.view(n, h, s, e), mask4,
            m.dropout, is_causal)
        out = out.permute(2, 0, 1, 3).reshape(n * length, h * e)
        weights = None
    if need_weights:
        out = out.transpose(0, 1).reshape(length * n, embed)
    out = F.linear(out, m.out_proj.weight, m.out_proj.bias).view(length, n, -1)
    if weights is not None:
        weights = weights.view(n, h, length, s)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    if not batched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return out, weights


# ---------------------------------------------------------------------------------------------
# timm


def _attention_rate(drop: nn.Module) -> float | Tensor:
    """The rate of timm's ``attn_drop``: a dropkit module's (a tensor while compiling), or the
    float ``p`` of ``torch.nn.Dropout``."""
    if isinstance(drop, RateModule):
        return drop._rate()
    return float(drop.p)


def _timm_forward(self, x: Tensor, attn_mask: Tensor | None = None,
                  is_causal: bool = False) -> Tensor:
    """timm's ``Attention.forward`` (timm 1.0: qk-norm, scale-norm, gate) with the attention
    computed by dropkit's ``scaled_dot_product_attention`` in training."""
    if not self.training:
        return super(type(self), self).forward(x, attn_mask=attn_mask, is_causal=is_causal)
    b, n, _ = x.shape
    gate = getattr(self, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = DF.scaled_dot_product_attention(q, k, v, attn_mask, _attention_rate(self.attn_drop),
                                        is_causal, self.scale)
    x = x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
    norm = getattr(self, "norm", None)
    if norm is not None:
        x = norm(x)
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


# timm's Attention classes (qualified names) and their dropkit subclasses' names in this module.
TIMM_ATTENTION = {
    "timm.layers.attention.Attention": "TimmAttention",
    "timm.models.vision_transformer.Attention": "TimmVisionTransformerAttention",
}
_TIMM_ATTRIBUTES = ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop", "num_heads",
                    "head_dim", "scale")


_TIMM_SUBCLASSES: dict[type, type] = {}


def timm_attention_class(base: type[nn.Module]) -> type[nn.Module]:
    """The dropkit subclass of timm's attention class ``base`` (its qualified name a key of
    ``TIMM_ATTENTION``), made once and kept in this module under its name, so that models
    holding it pickle and deep-copy (unpickling imports timm).

    Raises:
        ValueError: ``base`` is not one of timm's classes in ``TIMM_ATTENTION``.
    """
    source = f"{base.__module__}.{base.__qualname__}"
    if source not in TIMM_ATTENTION:
        raise ValueError(f"timm_attention_class: `base` must be one of "
                         f"{sorted(TIMM_ATTENTION)}, got {source!r}.")
    cls = _TIMM_SUBCLASSES.get(base)
    if cls is None:
        name = TIMM_ATTENTION[source]
        cls = type(name, (base,), {
            "forward": _timm_forward, "_dropkit_attention": True, "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{source} whose attention dropout is dropkit's (dropkit.convert).",
        })
        _TIMM_SUBCLASSES[base] = cls
        setattr(sys.modules[__name__], name, cls)
    return cls


def __getattr__(name: str) -> type[nn.Module]:  # unpickling a converted timm model
    for source, known in TIMM_ATTENTION.items():
        if name == known:
            module, _, qualname = source.rpartition(".")
            return timm_attention_class(getattr(importlib.import_module(module), qualname))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
