"""Hugging Face transformers: attention dropout from dropkit's mask engine.

>>> import dropkit.integrations.transformers as dkt  # doctest: +SKIP
>>> name = dkt.register()                            # doctest: +SKIP
>>> model = AutoModel.from_config(config, attn_implementation=name)  # doctest: +SKIP

:func:`register` adds ``"dropkit"`` to transformers' ``AttentionInterface`` (with the ``"sdpa"``
mask format in ``AttentionMaskInterface``), so every model that dispatches through the attention
interface (BERT, GPT-2, Llama-family, ViT, ...) computes its attention with
:func:`dropkit.functional.scaled_dot_product_attention`. Models pass ``dropout=0.0`` in eval and
their attention-dropout rate in training, so eval outputs equal ``"sdpa"``'s within float
tolerance and training drops the weights at the model's rate, with dropkit's reproducible mask.
transformers is imported only here (an optional dependency).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as DF

__all__ = ["NAME", "attention_forward", "register"]

NAME = "dropkit"


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature (as its ``sdpa_attention_forward``).

    Shapes: ``query`` ``(B, H, L, E)``, ``key``/``value`` ``(B, Hkv, S, E)`` (grouped-query
    attention when the module has ``num_key_value_groups > 1``); returns ``(B, L, H, Ev)`` and
    ``None`` (no attention weights are materialised). ``dropout`` is the rate the model passes:
    its attention-dropout rate in training, 0 in eval.

    Raises:
        ValueError: ``softcap`` is given (not supported, as in ``"sdpa"``).
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("dropkit attention does not support `softcap`; use `eager`.")
    q_length = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    if is_causal and key.shape[2] > q_length:  # top-left causal: later keys are never seen
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        if position_bias is not None:
            position_bias = position_bias[..., :q_length]
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal,
                                                   query, key)
        is_causal = False
    groups = getattr(module, "num_key_value_groups", 1)
    out = DF.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=float(dropout),
        is_causal=is_causal, scale=scaling, enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> str:
    """Register :func:`attention_forward` as transformers attention implementation ``name``
    (and the ``"sdpa"`` mask format for it). Idempotent; returns ``name``, to pass as
    ``attn_implementation=`` to ``from_config`` / ``from_pretrained``.

    Raises:
        ImportError: transformers is not installed (``pip install transformers``).
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as err:
        raise ImportError("dropkit.integrations.transformers.register needs transformers "
                          "(pip install transformers).") from err
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
