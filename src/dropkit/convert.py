"""Swap a model's dropout layers (torch, timm, torchvision) for dropkit modules.

:func:`convert` walks a model, replaces each known dropout layer by the dropkit module of the
same semantics (same rate, ``inplace`` flag, mode, masks per sample or per channel, scaling,
block size) and returns a :class:`ConversionReport` that lists every replacement and every
layer it left alone, with the reason.

What is converted (torch classes by type, timm and torchvision classes by their fully qualified
class name, so neither library has to be installed for dropkit to import):

| Source class | dropkit module and arguments |
|---|---|
| ``torch.nn.Dropout(p, inplace)`` | ``Dropout(p, inplace)`` |
| ``torch.nn.Dropout1d(p, inplace)`` | ``SpatialDropout1d(p, inplace)`` |
| ``torch.nn.Dropout2d(p, inplace)`` | ``SpatialDropout2d(p, inplace)`` (note 1) |
| ``torch.nn.Dropout3d(p, inplace)`` | ``SpatialDropout3d(p, inplace)`` |
| ``torch.nn.AlphaDropout(p, inplace)`` | ``AlphaDropout(p, inplace)`` |
| ``torch.nn.FeatureAlphaDropout(p, inplace)`` | ``AlphaDropout(p, inplace, noise_shape=(None, None, 1, ...))`` with ``feature_alpha_rank`` (note 2) |
| timm ``DropPath(drop_prob, scale_by_keep)`` | ``DropPath(drop_prob, mode="row", scale_by_keep=scale_by_keep)`` |
| timm ``DropBlock2d`` (>= 1.0.23) | ``DropBlock2d(drop_prob * gamma_scale, block_size, inplace, per_channel=not couple_channels, scale="batch" if scale_by_keep else "none")`` (note 3) |
| timm ``DropBlock2d`` (<= 1.0.22) | the same with ``per_channel=True, scale="batch"`` (note 3) |
| torchvision ``StochasticDepth(p, mode)`` | ``DropPath(p, mode=mode, scale_by_keep=True)`` |
| torchvision ``DropBlock2d/3d(p, block_size, inplace, eps)`` | ``DropBlock2d/3d(p, block_size, inplace, per_channel=True, scale="batch")`` (note 4) |
| ``torch.nn.MultiheadAttention`` | ``MultiheadAttention`` (the class swapped, parameters shared; note 5) |
| timm ``Attention`` (``timm.layers.attention``, ``timm.models.vision_transformer``) | ``dropkit.nn.attention.TimmAttention`` (the class swapped; note 5) |

The timm classes are matched as ``timm.layers.drop.*`` and, before timm 0.9,
``timm.models.layers.drop.*``; torchvision's as ``torchvision.ops.stochastic_depth.*`` and
``torchvision.ops.drop_block.*``.

Notes:

1. ``torch.nn.Dropout2d`` treats a 3-D input as ``(N, C, L)`` (with a deprecation warning
   announcing ``(C, H, W)`` instead); ``SpatialDropout2d`` treats it as the unbatched
   ``(C, H, W)``. 4-D inputs behave the same.
2. ``FeatureAlphaDropout`` shares one decision per (sample, channel) over all remaining axes,
   whatever the input's rank; a ``noise_shape`` has one entry per axis, so the rank must be
   given (``feature_alpha_rank=4`` for ``(N, C, H, W)``). Without it the layer is skipped.
3. timm's seed rate is ``gamma_scale * drop_prob`` corrected for valid block positions, but it
   seeds the whole map, so its realized dropped fraction exceeds that nominal rate, by far on
   small maps (block 7, ``drop_prob=0.1``: 0.93 on 7x7 maps, 0.22 on 14x14, 0.11 on 56x56;
   :func:`timm_drop_block_fraction` computes it exactly). dropkit's DropBlock is calibrated:
   the expected dropped fraction is exactly ``p``. ``drop_block_rate="realised"`` (with
   ``example_input=``) sets ``p`` to timm's fraction at the layer's map size instead.
   ``with_noise=True`` (Gaussian fill) and the old non-fast ``batchwise=True`` (one mask for
   the whole batch) have no dropkit equivalent: such layers are skipped.
4. torchvision seeds only valid positions with the paper's approximate seed rate (its realized
   fraction is slightly below ``p`` because blocks overlap:
   :func:`torchvision_drop_block_fraction`); dropkit's is exactly ``p`` (or torchvision's
   fraction with ``drop_block_rate="realised"``). ``eps`` is not needed (an all-dropped map
   gives zeros, never a division by zero).

Layers that never run are not converted: a ``Dropout`` whose parent only reads its ``p`` and
passes it to a fused attention kernel (timm's ``Attention`` and friends with ``fused_attn=True``,
transformers' BERT/GPT-2/... attention, which call ``scaled_dot_product_attention`` or an
attention function with ``dropout=self.dropout.p``) is reported as skipped, "not applied", since
torch's dropout inside that kernel is what drops; so is ``nn.MultiheadAttention``'s
``dropout``, a float applied inside its functional forward. The parent's code is read with
:mod:`inspect` (the pattern ``self.<name>.p``); a layer it also calls is converted when the
parent has ``fused_attn=False``.

5. Attention layers keep their parameters, buffers, submodules and hooks (a shallow copy with
   the dropkit class); in training their attention dropout is dropkit's
   ``scaled_dot_product_attention``, in eval their own ``forward`` runs (bit-equal).

Only these exact classes are converted: a subclass (which may override ``forward``) is
reported as skipped, as are dropout layers with hooks, parameters, buffers or children, and layers
whose settings dropkit rejects (e.g. ``p`` set to 1.5 after construction)."""  # noqa: E501

from __future__ import annotations

import copy as _copy
import dataclasses
import fnmatch
import functools
import inspect
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import _drop_block_numpy
from . import nn as dnn

__all__ = [
    "ConversionReport",
    "ConvertedModule",
    "SkippedModule",
    "convert",
    "timm_drop_block_fraction",
    "torchvision_drop_block_fraction",
]


@dataclasses.dataclass(frozen=True)
class ConvertedModule:
    """One replaced layer.

    Attributes:
        name: Qualified name in the model (``""`` for the model itself); a layer registered
            under several names is listed once, under its first name, and replaced everywhere.
        source: The replaced class, e.g. ``"torch.nn.Dropout"`` or
            ``"timm.layers.drop.DropPath"``.
        target: The new class, e.g. ``"dropkit.nn.Dropout"``.
        source_settings: The attributes read from the replaced layer.
        settings: The arguments the new module was built with.
        training: The ``training`` flag, the same on both.
        notes: Differences in behaviour worth knowing (empty when there are none).

    Example:
        >>> import torch, dropkit
        >>> record = dropkit.convert(torch.nn.Sequential(torch.nn.Dropout1d(0.2))).converted[0]
        >>> record.name, record.source, record.target, record.settings
        ('0', 'torch.nn.Dropout1d', 'dropkit.nn.SpatialDropout1d', {'p': 0.2, 'inplace': False})
    """

    name: str
    source: str
    target: str
    source_settings: dict[str, Any]
    settings: dict[str, Any]
    training: bool
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SkippedModule:
    """A layer of a known dropout class that was left unconverted, and why.

    Attributes:
        name: Qualified name in the model (``""`` for the model itself).
        source: The layer's class, as in :class:`ConvertedModule`.
        reason: Why it was left as it is.

    Example:
        >>> import torch, dropkit
        >>> model = torch.nn.Sequential(torch.nn.FeatureAlphaDropout(), torch.nn.Dropout())
        >>> dropkit.convert(model).skipped[0].name
        '0'
    """

    name: str
    source: str
    reason: str


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did.

    ``len(report)`` is the number of converted layers; ``str(report)`` a readable table.

    Attributes:
        model: The converted model: ``model`` itself, its copy with ``copy=True``, or the new
            module when ``model`` itself is a converted dropout layer.
        converted: One :class:`ConvertedModule` per replaced layer, in module order.
        skipped: One :class:`SkippedModule` per layer of a known class that passed the
            ``include``/``exclude`` filters but was not converted.

    Example:
        >>> import torch, dropkit
        >>> report = dropkit.convert(torch.nn.Sequential(torch.nn.AlphaDropout(0.1)), copy=True)
        >>> len(report), type(report.model[0]).__name__, report.skipped
        (1, 'AlphaDropout', [])
    """

    model: nn.Module
    converted: list[ConvertedModule] = dataclasses.field(default_factory=list)
    skipped: list[SkippedModule] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.converted)

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} module(s), skipped {len(self.skipped)}"]
        if self.converted:
            rows = [("name", "from", "to", "settings")]
            for c in self.converted:
                settings = ", ".join(f"{k}={v!r}" for k, v in c.settings.items())
                rows.append((_shown(c.name), c.source, c.target, settings))
            lines += _table(rows)
            notes = [(c.name, n) for c in self.converted for n in c.notes]
            lines += [f"note: {_shown(name)}: {note}" for name, note in notes]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {_shown(s.name)} ({s.source}): {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _shown(name: str) -> str:
    return name if name else "<model>"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        cells = [cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return out


# ---------------------------------------------------------------------------------------------
# Rules: read the source layer, build the dropkit module


class _Skip(Exception):
    """Raised by a rule: the layer stays as it is, with this reason."""


_Result = tuple[nn.Module, dict[str, Any], dict[str, Any], tuple[str, ...]]
_Rule = Callable[[nn.Module, "_Options"], _Result]


@dataclasses.dataclass(frozen=True)
class _Options:
    feature_alpha_rank: int | None
    drop_block_rate: str = "nominal"
    # spatial map size seen by each DropBlock layer (by id) in the eval pass of example_input
    maps: dict[int, tuple[int, ...]] = dataclasses.field(default_factory=dict)


def _attrs(module: nn.Module, *names: str) -> dict[str, Any]:
    return {n: getattr(module, n) for n in names}


def _build(cls: type[nn.Module], source: dict[str, Any], notes: tuple[str, ...] = (),
           **settings: Any) -> _Result:
    return cls(**settings), source, settings, notes


def _torch_simple(cls: type[nn.Module], *notes: str) -> _Rule:
    def rule(m: nn.Module, options: _Options) -> _Result:
        src = _attrs(m, "p", "inplace")
        return _build(cls, src, notes, p=src["p"], inplace=src["inplace"])

    return rule


_DROPOUT2D_NOTE = (
    "a 3-D input is read as unbatched (C, H, W); torch.nn.Dropout2d reads it as (N, C, L) "
    "with a deprecation warning (dropkit.nn.SpatialDropout1d is that behaviour)"
)


def _feature_alpha(m: nn.Module, options: _Options) -> _Result:
    src = _attrs(m, "p", "inplace")
    rank = options.feature_alpha_rank
    if rank is None:
        raise _Skip(
            "channel-wise alpha dropout needs the input rank for its noise_shape: pass "
            "feature_alpha_rank (e.g. 4 for (N, C, H, W) inputs)"
        )
    noise_shape = (None, None) + (1,) * (rank - 2)
    note = f"expects {rank}-D inputs (feature_alpha_rank={rank})"
    return _build(dnn.AlphaDropout, src, (note,), p=src["p"], inplace=src["inplace"],
                  noise_shape=noise_shape)


def _timm_drop_path(m: nn.Module, options: _Options) -> _Result:
    src = {"drop_prob": m.drop_prob, "scale_by_keep": getattr(m, "scale_by_keep", True)}
    notes: tuple[str, ...] = ()
    p = src["drop_prob"]
    if p is None:  # timm < 0.5 defaulted to drop_prob=None, meaning no drop path
        p, notes = 0.0, ("drop_prob=None read as 0",)
    return _build(dnn.DropPath, src, notes, p=p, mode="row", scale_by_keep=src["scale_by_keep"])


# DropBlock rates: the peers' seed-rate formulas drop another fraction than their nominal rate,
# depending on the map size. The exact expected fraction of a formula at one map size is
# 1 - mean_u (1 - gamma)**c(u), c(u) the number of possible seeds whose block covers unit u.


def _fraction(counts: np.ndarray, gamma: float) -> float:
    """``1 - mean (1 - gamma)**counts`` in float64 (1.0 once every seed is set)."""
    if gamma >= 1.0:
        return 1.0
    return float(1.0 - np.mean(np.exp(counts * math.log1p(-gamma))))


def _timm_axis_counts(length: int, k: int, crop: int) -> np.ndarray:
    """timm seeds every position and pools with ``kernel k, padding k // 2`` (then drops the
    first ``crop`` outputs): how many positions' blocks cover each position of one axis."""
    start = np.arange(length) + crop - k // 2
    return np.minimum(start + k - 1, length - 1) - np.maximum(start, 0) + 1


def timm_drop_block_fraction(spatial: tuple[int, int], drop_prob: float, block_size: int,
                             gamma_scale: float = 1.0, *, legacy: bool = False) -> float:
    """The expected fraction timm's ``DropBlock2d`` drops on an ``(H, W)`` map.

    Args:
        spatial: The map size ``(H, W)``.
        drop_prob, block_size, gamma_scale: The layer's settings.
        legacy: ``True`` for timm <= 1.0.22 (its fast path's formula: the block clipped to
            the shorter side, the valid-position count with the unclipped block), ``False``
            for timm >= 1.0.23.

    Returns:
        ``1 - mean_u (1 - gamma)**c(u)`` with timm's seed rate ``gamma`` and ``c(u)`` the
        number of seeds (any map position) whose clipped, centred block covers ``u``.

    Raises:
        ValueError: The legacy formula divides by zero or less at this map size.

    Example:
        >>> round(timm_drop_block_fraction((7, 7), 0.1, 7), 3)  # nominal rate 0.1
        0.93
    """
    h, w = spatial
    if legacy:
        kh = kw = min(block_size, h, w)
        valid = (w - block_size + 1) * (h - block_size + 1)
        if valid <= 0:
            raise ValueError(f"timm's (<= 1.0.22) seed rate divides by (W - block_size + 1) * "
                             f"(H - block_size + 1) = {valid} on a {h}x{w} map")
        crop_h = crop_w = 0
    else:
        kh, kw = min(block_size, h), min(block_size, w)
        valid = (h - kh + 1) * (w - kw + 1)
        crop_h, crop_w = (kh + 1) % 2, (kw + 1) % 2
    gamma = gamma_scale * drop_prob * h * w / (kh * kw) / valid
    counts = np.multiply.outer(_timm_axis_counts(h, kh, crop_h), _timm_axis_counts(w, kw, crop_w))
    return _fraction(counts, gamma)


def torchvision_drop_block_fraction(spatial: tuple[int, ...], p: float,
                                    block_size: int) -> float:
    """The expected fraction torchvision's ``drop_block2d/3d`` drops on a map of ``spatial``.

    torchvision seeds the valid block starts with ``gamma = p * numel / (b**d * valid)``, the
    paper's approximation, which ignores overlaps: it drops a little less than ``p``.

    Raises:
        ValueError: A map side is smaller than ``block_size`` (torchvision fails there too).

    Example:
        >>> round(torchvision_drop_block_fraction((14, 14), 0.1, 7), 4)
        0.0929
    """
    if min(spatial) < block_size:
        raise ValueError(f"torchvision's DropBlock needs map sides >= block_size={block_size}, "
                         f"got a {'x'.join(map(str, spatial))} map")
    block = (block_size,) * len(spatial)
    valid = math.prod(s - block_size + 1 for s in spatial)
    gamma = p * math.prod(spatial) / (block_size ** len(spatial) * valid)
    values, weights = _drop_block_numpy.coverage_histogram(tuple(spatial), block)
    return _fraction(np.repeat(values, weights), gamma)


def _block_rate(m: nn.Module, options: _Options, peer: str, nominal: float,
                fraction: Callable[[tuple[int, ...]], float]) -> tuple[float, tuple[str, ...]]:
    """The dropkit rate of a peer DropBlock layer and the report's note about it."""
    spatial = options.maps.get(id(m))
    realised = options.drop_block_rate == "realised"
    if spatial is None:
        if realised:
            raise _Skip("drop_block_rate='realised' needs its map size, but it did not run in "
                        "the forward pass of example_input")
        return nominal, (f"p = {nominal:g} is {peer}'s nominal rate, which dropkit drops "
                         f"exactly; {peer}'s own fraction depends on the map size (far above p on "
                         "small maps for timm): pass example_input= to see it for this layer, "
                         "with drop_block_rate='realised' to keep it",)
    size = "x".join(map(str, spatial))
    try:
        peer_rate = fraction(spatial)
    except ValueError as err:
        if realised:
            raise _Skip(f"drop_block_rate='realised': {err}") from None
        return nominal, (f"p = {nominal:g} is {peer}'s nominal rate; {err}",)
    if realised:
        return peer_rate, (f"p = {peer_rate:.4f} is what {peer} drops on this layer's {size} map "
                           f"(its nominal rate is {nominal:g}; drop_block_rate='realised'); "
                           f"dropkit drops this p on any map size",)
    return nominal, (f"p = {nominal:g} is {peer}'s nominal rate, which dropkit drops exactly; "
                     f"{peer} drops {peer_rate:.4f} on this layer's {size} map; "
                     "drop_block_rate='realised' keeps that",)


def _timm_drop_block(m: nn.Module, options: _Options) -> _Result:
    src = _attrs(m, "drop_prob", "block_size", "gamma_scale", "with_noise", "inplace")
    if src["with_noise"]:
        raise _Skip("with_noise=True (Gaussian noise in dropped blocks) has no dropkit equivalent")
    legacy = not hasattr(m, "couple_channels")
    if not legacy:  # timm >= 1.0.23
        src.update(_attrs(m, "couple_channels", "scale_by_keep"))
        per_channel = not src["couple_channels"]
        scale = "batch" if src["scale_by_keep"] else "none"
    else:  # timm <= 1.0.22: per-channel masks; `batchwise` only on the non-fast path
        src.update({"batchwise": getattr(m, "batchwise", False), "fast": getattr(m, "fast", True)})
        if src["batchwise"] and not src["fast"]:
            raise _Skip("batchwise=True (one mask shared by the whole batch) has no dropkit "
                        "equivalent")
        per_channel, scale = True, "batch"
    nominal = src["drop_prob"] * src["gamma_scale"]
    p, notes = _block_rate(m, options, "timm", nominal, lambda spatial: timm_drop_block_fraction(
        spatial, src["drop_prob"], src["block_size"], src["gamma_scale"], legacy=legacy))
    if not 0.0 <= p <= 1.0:
        raise _Skip(f"drop_prob * gamma_scale = {p!r} is not a rate in [0, 1]")
    return _build(dnn.DropBlock2d, src, notes, p=p, block_size=src["block_size"],
                  inplace=src["inplace"], per_channel=per_channel, scale=scale)


def _tv_stochastic_depth(m: nn.Module, options: _Options) -> _Result:
    src = _attrs(m, "p", "mode")
    return _build(dnn.DropPath, src, p=src["p"], mode=src["mode"], scale_by_keep=True)


def _tv_drop_block(cls: type[nn.Module]) -> _Rule:
    def rule(m: nn.Module, options: _Options) -> _Result:
        src = _attrs(m, "p", "block_size", "inplace", "eps")
        p, notes = _block_rate(m, options, "torchvision", src["p"], lambda spatial: (
            torchvision_drop_block_fraction(spatial, src["p"], src["block_size"])))
        return _build(cls, src, notes, p=p, block_size=src["block_size"],
                      inplace=src["inplace"], per_channel=True, scale="batch")

    return rule


_TORCH_RULES: dict[type[nn.Module], tuple[str, _Rule]] = {
    nn.Dropout: ("torch.nn.Dropout", _torch_simple(dnn.Dropout)),
    nn.Dropout1d: ("torch.nn.Dropout1d", _torch_simple(dnn.SpatialDropout1d)),
    nn.Dropout2d: ("torch.nn.Dropout2d", _torch_simple(dnn.SpatialDropout2d, _DROPOUT2D_NOTE)),
    nn.Dropout3d: ("torch.nn.Dropout3d", _torch_simple(dnn.SpatialDropout3d)),
    nn.AlphaDropout: ("torch.nn.AlphaDropout", _torch_simple(dnn.AlphaDropout)),
    nn.FeatureAlphaDropout: ("torch.nn.FeatureAlphaDropout", _feature_alpha),
}

# timm < 0.9 defined its layers in timm.models.layers.drop (later a re-export of timm.layers).
_PEER_RULES: dict[str, _Rule] = {
    "timm.layers.drop.DropPath": _timm_drop_path,
    "timm.models.layers.drop.DropPath": _timm_drop_path,
    "timm.layers.drop.DropBlock2d": _timm_drop_block,
    "timm.models.layers.drop.DropBlock2d": _timm_drop_block,
    "torchvision.ops.stochastic_depth.StochasticDepth": _tv_stochastic_depth,
    "torchvision.ops.drop_block.DropBlock2d": _tv_drop_block(dnn.DropBlock2d),
    "torchvision.ops.drop_block.DropBlock3d": _tv_drop_block(dnn.DropBlock3d),
}

_TARGET_NAMES = {cls: f"dropkit.nn.{cls.__name__}" for cls in (
    dnn.Dropout, dnn.SpatialDropout1d, dnn.SpatialDropout2d, dnn.SpatialDropout3d,
    dnn.AlphaDropout, dnn.DropPath, dnn.DropBlock2d, dnn.DropBlock3d,
)}


# ---------------------------------------------------------------------------------------------
# Attention layers: the class is swapped on a shallow copy that shares the parameters, buffers,
# submodules and hooks (so state_dict, optimizers and hooks carry over); no new state.


_MHA_NOTE = ("training with dropout > 0 uses dropkit's attention dropout (weights returned by "
             "need_weights=True are the dropped ones, as torch's); eval runs torch's forward")
_TIMM_ATTENTION_NOTE = ("training uses dropkit's scaled_dot_product_attention at attn_drop's "
                        "rate (a dropkit attn_drop's rate is read at run time); eval runs "
                        "timm's forward")


def _swap_class(m: nn.Module, cls: type[nn.Module], source: dict[str, Any],
                note: str) -> _Result:
    new = cls.__new__(cls)
    new.__dict__.update(m.__dict__)
    return new, source, dict(source), (note,)


def _torch_mha(m: nn.Module, options: _Options) -> _Result:
    src = _attrs(m, "embed_dim", "num_heads", "dropout", "batch_first")
    return _swap_class(m, dnn.MultiheadAttention, src, _MHA_NOTE)


def _timm_attention(m: nn.Module, options: _Options) -> _Result:
    missing = [a for a in dnn.attention._TIMM_ATTRIBUTES if not hasattr(m, a)]
    if missing:
        raise _Skip(f"it lacks the attributes {missing} of timm 0.9-1.0's Attention")
    src = {"num_heads": m.num_heads, "head_dim": m.head_dim,
           "attn_drop": getattr(m.attn_drop, "p", None),
           "fused_attn": getattr(m, "fused_attn", None)}
    if isinstance(src["attn_drop"], bool) or not isinstance(src["attn_drop"], numbers.Real):
        raise _Skip("its attn_drop has no rate p")
    return _swap_class(m, dnn.attention.timm_attention_class(type(m)), src,
                       _TIMM_ATTENTION_NOTE)


# Rules that keep the layer's state (they run without _plan's no-state check).
_ATTENTION_RULES: dict[str, _Rule] = {
    "torch.nn.MultiheadAttention": _torch_mha,
    **dict.fromkeys(dnn.attention.TIMM_ATTENTION, _timm_attention),
}
_STATEFUL = frozenset(_ATTENTION_RULES.values())


def _match_attention(module: nn.Module) -> tuple[str, _Rule | None, str | None] | None:
    cls = type(module)
    if getattr(cls, "_dropkit_attention", False):
        return "", None, None  # converted already
    if cls is nn.MultiheadAttention:
        return "torch.nn.MultiheadAttention", _torch_mha, None
    qualified = _qualified_name(cls)
    if isinstance(module, nn.MultiheadAttention):
        return qualified, None, ("a subclass of torch.nn.MultiheadAttention (it may change "
                                 "forward); only the exact class is converted")
    if qualified in _ATTENTION_RULES:
        return qualified, _ATTENTION_RULES[qualified], None
    return None


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _target_name(cls: type) -> str:
    return _TARGET_NAMES.get(cls) or _qualified_name(cls).replace(".attention.", ".", 1)


def _match_rule(module: nn.Module) -> tuple[str, _Rule | None, str | None]:
    """``(source name, rule, None)`` for a known class, ``(name, None, reason)`` for a subclass
    of one, ``("", None, None)`` otherwise."""
    attention = _match_attention(module)
    if attention is not None:
        return attention
    cls = type(module)
    if cls in _TORCH_RULES:
        source, rule = _TORCH_RULES[cls]
        return source, rule, None
    qualified = _qualified_name(cls)
    if qualified in _PEER_RULES:
        return qualified, _PEER_RULES[qualified], None
    for base in cls.__mro__[1:]:
        known = _TORCH_RULES[base][0] if base in _TORCH_RULES else (
            _qualified_name(base) if _qualified_name(base) in _PEER_RULES
            or _qualified_name(base) in _ATTENTION_RULES else None)
        if known is not None:
            return qualified, None, (f"a subclass of {known} (it may change forward); only "
                                     "the exact classes are converted")
    return "", None, None


# Layers whose rate is read by their parent and handed to a fused kernel: the layer itself never
# runs, so a replacement would change nothing (and a report calling it converted would be wrong).


@functools.cache
def _class_source(cls: type) -> str:
    """The source of ``cls`` and its bases up to ``nn.Module`` ("" where it is unavailable)."""
    parts = []
    for base in cls.__mro__:
        if base in (nn.Module, object):
            continue
        try:
            parts.append(inspect.getsource(base))
        except (OSError, TypeError):
            pass
    return "\n".join(parts)


def _rate_reader(parent: nn.Module, name: str) -> str | None:
    """Why the layer ``parent.<name>`` does not run, or ``None`` if it may.

    A parent whose code reads ``self.<name>.p`` (timm's ``Attention``, transformers' attention
    classes: the rate goes into ``scaled_dot_product_attention`` or an attention function) and
    either never calls ``self.<name>(...)`` or calls it only off its fused path
    (``fused_attn=True``, timm's flag) does not apply the layer.
    """
    source = _class_source(type(parent))
    attr = re.escape(name)
    if not re.search(rf"self\.{attr}\.p\b", source):
        return None
    called = re.search(rf"self\.{attr}\(", source) is not None
    fused = getattr(parent, "fused_attn", None)
    cls = _qualified_name(type(parent))
    if called and fused is False:
        return None
    if called and fused is True:
        where = f"{cls} has fused_attn=True: it passes the layer's p to a fused attention kernel"
    elif called:
        where = (f"{cls} passes the layer's p to an attention kernel and calls the layer only on "
                 "another code path")
    else:
        where = f"{cls} reads only the layer's p and passes it to an attention kernel"
    return (f"not applied: {where} (e.g. scaled_dot_product_attention), so torch's dropout "
            "inside that kernel is what runs; the layer is left as it is")


def _multihead_reason(module: nn.Module) -> str | None:
    p = getattr(module, "dropout", 0.0)
    if type(module) is not nn.MultiheadAttention or not p:
        return None
    return (f"its attention dropout (dropout={p!r}) is a float applied inside "
            "F.multi_head_attention_forward, not a layer; it is left to torch")


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _plan(module: nn.Module, rule: _Rule, options: _Options) -> _Result:
    if rule in _STATEFUL:
        return rule(module, options)
    if any(getattr(module, h, None) for h in _HOOKS):
        raise _Skip("it has forward or backward hooks, which a replacement would lose")
    if (next(module.children(), None) is not None
            or next(module.parameters(), None) is not None
            or next(module.buffers(), None) is not None):
        raise _Skip("it has parameters, buffers or submodules, which a replacement would lose")
    try:
        new, src, settings, notes = rule(module, options)
    except (AttributeError, TypeError, ValueError) as err:
        raise _Skip(f"its settings cannot be carried over: {err}") from None
    new.train(module.training)
    return new, src, settings, notes


# ---------------------------------------------------------------------------------------------
# Filters and argument checks


_Filter = tuple[tuple[str, ...], tuple[type, ...]]


def _check_filter(arg: str, value: object) -> _Filter | None:
    """``include``/``exclude`` as (name globs, types); ``None`` stays ``None``."""
    if value is None:
        return None
    items = [value] if isinstance(value, str | type) else value
    expected = ("a module-name glob (str), a class, or a list of them")
    if not isinstance(items, Iterable):
        raise TypeError(f"convert: `{arg}` must be {expected}, got "
                        f"{type(value).__name__} {value!r}.")
    globs: list[str] = []
    types: list[type] = []
    for item in items:
        if isinstance(item, str):
            globs.append(item)
        elif isinstance(item, type):
            types.append(item)
        else:
            raise TypeError(f"convert: `{arg}` must be {expected}; an entry is "
                            f"{type(item).__name__} {item!r}.")
    return tuple(globs), tuple(types)


def _matches(flt: _Filter, names: list[str], module: nn.Module) -> bool:
    globs, types = flt
    return (isinstance(module, types) if types else False) or any(
        fnmatch.fnmatchcase(name, g) for name in names for g in globs)


def _check_rank(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("convert: `feature_alpha_rank` must be None or an int >= 2, got "
                        f"{type(value).__name__} {value!r}.")
    if value < 2:
        raise ValueError(f"convert: `feature_alpha_rank` must be None or an int >= 2 (batch "
                         f"and channel axes first), got {value}.")
    return int(value)


_BLOCK_RATES = ("nominal", "realised")


def _check_block_rate(value: object, example_input: object) -> str:
    if not isinstance(value, str) or value not in _BLOCK_RATES:
        raise ValueError(f"convert: `drop_block_rate` must be 'nominal' or 'realised', got "
                         f"{value!r}.")
    if value == "realised" and example_input is None:
        raise ValueError("convert: drop_block_rate='realised' needs `example_input` (a tensor, "
                         "a tuple of positional arguments or a dict of keyword arguments for "
                         "model(...)): the rate a peer's DropBlock realises depends on its map "
                         "size.")
    return value


def _map_sizes(model: nn.Module, modules: dict[int, nn.Module], example_input: object
               ) -> dict[int, tuple[int, ...]]:
    """The spatial size of the input of every peer DropBlock layer in one forward pass of
    ``model(example_input)`` in eval mode without gradients (every mode is restored)."""
    blocks = {key: m for key, m in modules.items()
              if _qualified_name(type(m)) in _PEER_RULES and "DropBlock" in type(m).__name__}
    sizes: dict[int, tuple[int, ...]] = {}
    if not blocks:
        return sizes

    def record(key: int, dims: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                sizes.setdefault(key, tuple(args[0].shape[-dims:]))
        return hook

    handles = [m.register_forward_pre_hook(record(key, 3 if type(m).__name__.endswith("3d")
                                                  else 2))
               for key, m in blocks.items()]
    modes = {key: m.training for key, m in modules.items()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for key, m in modules.items():
            m.training = modes[key]
    return sizes


# ---------------------------------------------------------------------------------------------
# The entry point


def convert(
    model: nn.Module,
    *,
    include: str | type | Iterable[str | type] | None = None,
    exclude: str | type | Iterable[str | type] | None = None,
    copy: bool = False,
    feature_alpha_rank: int | None = None,
    drop_block_rate: Literal["nominal", "realised"] = "nominal",
    example_input: Any = None,
) -> ConversionReport:
    """Replace the dropout layers of ``model`` by dropkit modules of the same semantics.

    Converts ``torch.nn`` ``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and (with
    ``feature_alpha_rank``) ``FeatureAlphaDropout``; timm's ``DropPath`` and ``DropBlock2d``;
    torchvision's ``StochasticDepth`` and ``DropBlock2d/3d``. The mapping and its few
    behavioural differences are in the module docstring of :mod:`dropkit.convert`. The new
    modules keep each layer's ``training`` flag and register no parameters or buffers, so the
    model's ``state_dict`` keys do not change and an old checkpoint still loads. A layer
    registered under several names is replaced by one shared module everywhere.

    Args:
        model: The model; its submodules are replaced in place unless ``copy=True``.
        include: Convert only the layers that match: a glob on the qualified module name
            (``fnmatch``, case-sensitive, e.g. ``"encoder.*"``), a class (matched with
            ``isinstance`` against the original layer, e.g. ``torch.nn.Dropout``), or a list
            of both (any match counts). ``None`` (default) includes every layer.
        exclude: Leave the layers that match unconverted (same forms). Applied after
            ``include``.
        copy: ``False`` (default): change ``model`` itself. ``True``: change a deep copy and
            leave ``model`` untouched. Either way the result is ``report.model``, which is
            also the only way to get the result when ``model`` itself is a dropout layer.
        feature_alpha_rank: Input rank of the ``FeatureAlphaDropout`` layers (``4`` for
            ``(N, C, H, W)``); they are skipped when ``None``.
        drop_block_rate: The rate of each timm/torchvision DropBlock layer's replacement.
            ``"nominal"`` (default): the peer's nominal rate (timm: ``drop_prob *
            gamma_scale``), which dropkit drops exactly at every map size. ``"realised"``: the
            fraction the peer's own formula drops at the layer's map size in
            ``example_input`` (timm drops far more than its nominal rate on small maps,
            torchvision a little less), so a model tuned with the peer keeps its
            regularization; a layer that does not run on ``example_input`` is skipped. The
            report's notes give both numbers whenever the map size is known.
        example_input: ``model``'s input for one forward pass in eval mode without gradients
            (every module's mode is restored): a tensor, a tuple of positional arguments or a
            dict of keyword arguments. It tells each DropBlock layer's map size; required
            with ``drop_block_rate="realised"``, optional otherwise.

    Returns:
        A :class:`ConversionReport`: ``model``, the ``converted`` records (name, source and
        target class, settings read and set, notes) and the ``skipped`` layers with reasons.
        ``str(report)`` is a readable table. Layers whose rate is only read by their parent
        and passed to a fused attention kernel (timm's ``Attention`` with ``fused_attn``,
        transformers' attention classes) never run, so they are left as they are and listed
        as skipped ("not applied: ..."), as is ``nn.MultiheadAttention``'s own dropout (a
        float inside its functional forward).

    Warns:
        UserWarning: Nothing was converted.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``copy`` is not a bool, ``include`` or
            ``exclude`` is not a glob, a class or a list of them, or ``feature_alpha_rank``
            is not an int.
        ValueError: ``feature_alpha_rank`` is below 2, ``drop_block_rate`` is not
            ``"nominal"`` or ``"realised"``, or it is ``"realised"`` without
            ``example_input``.

    Example:
        >>> import torch, dropkit
        >>> head = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Dropout(0.2))
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), head)
        >>> report = dropkit.convert(model, exclude="2.*")  # all but head's layers
        >>> print(report)
        converted 1 module(s), skipped 0
        name  from              to                  settings
        1     torch.nn.Dropout  dropkit.nn.Dropout  p=0.1, inplace=False
        >>> model[1], report.model is model
        (Dropout(p=0.1, inplace=False, mode='inverted'), True)
        >>> model.eval()(torch.ones(1, 4)).shape
        torch.Size([1, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: `model` must be a torch.nn.Module, got "
                        f"{type(model).__name__}.")
    if not isinstance(copy, bool):
        raise TypeError(f"convert: `copy` must be a bool, got {type(copy).__name__} {copy!r}.")
    inc = _check_filter("include", include)
    exc = _check_filter("exclude", exclude)
    rank = _check_rank(feature_alpha_rank)
    block_rate = _check_block_rate(drop_block_rate, example_input)
    if copy:
        model = _copy.deepcopy(model)

    # Every occurrence of every module, with all of its names (shared layers have several)
    # and the (parent, attribute) pairs that hold it.
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
        modules.setdefault(id(module), module)
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in modules.values():
        for child_name, child in parent._modules.items():
            if child is not None:
                holders.setdefault(id(child), []).append((parent, child_name))
    maps = {} if example_input is None else _map_sizes(model, modules, example_input)
    options = _Options(rank, block_rate, maps)

    def selected(module: nn.Module) -> bool:
        all_names = names[id(module)]
        return ((inc is None or _matches(inc, all_names, module))
                and (exc is None or not _matches(exc, all_names, module)))

    def converted_attention(module: nn.Module) -> bool:
        """An attention block this call converts: it applies its dropout layer itself."""
        match = _match_attention(module)
        return match is not None and match[1] is not None and selected(module)

    report = ConversionReport(model)
    replacements: dict[int, nn.Module] = {}
    for key, module in modules.items():
        source, rule, reason = _match_rule(module)
        if rule is not None:
            reason = next(filter(None, (_rate_reader(parent, attr)
                                        for parent, attr in holders.get(key, ())
                                        if not converted_attention(parent))), None)
            if reason is not None:
                rule = None
        elif not source and (reason := _multihead_reason(module)) is not None:
            source = "torch.nn.MultiheadAttention"
        if not source:
            continue
        all_names = names[key]
        if not selected(module):
            continue
        try:
            if rule is None:
                raise _Skip(reason or "")
            new, src, settings, notes = _plan(module, rule, options)
        except _Skip as skip:
            report.skipped.append(SkippedModule(all_names[0], source, str(skip)))
            continue
        replacements[key] = new
        report.converted.append(ConvertedModule(
            all_names[0], source, _target_name(type(new)), src, settings, module.training,
            notes))

    # Swap only after every layer was planned: a shared layer gets one module everywhere.
    for parent in list(modules.values()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]
    if id(model) in replacements:
        report.model = replacements[id(model)]
    if not report.converted:
        warnings.warn(f"convert: no layer was converted ({len(report.skipped)} skipped; see the "
                      "report's `skipped` for why)", UserWarning, stacklevel=2)
    return report
