"""Modules of the dropout family: each stores its settings, validates them at construction with
the same checks as :mod:`dropkit.functional`, and calls one function in ``forward``."""

from ._rate import RateModule
from .attention import MultiheadAttention
from .drop_block import DropBlock1d, DropBlock2d, DropBlock3d
from .drop_connect import (
    DropConnectConv1d,
    DropConnectConv2d,
    DropConnectConv3d,
    DropConnectLinear,
)
from .drop_head import DropHead
from .drop_path import DropPath
from .dropout import (
    AlphaDropout,
    Dropout,
    GaussianDropout,
    SpatialDropout1d,
    SpatialDropout2d,
    SpatialDropout3d,
    TimestepDropout,
)
from .sequence import EmbeddingDropout, LockedDropout
from .weight_drop import WeightDrop

__all__ = [
    "AlphaDropout",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnectConv1d",
    "DropConnectConv2d",
    "DropConnectConv3d",
    "DropConnectLinear",
    "DropHead",
    "DropPath",
    "Dropout",
    "EmbeddingDropout",
    "GaussianDropout",
    "LockedDropout",
    "MultiheadAttention",
    "RateModule",
    "SpatialDropout1d",
    "SpatialDropout2d",
    "SpatialDropout3d",
    "TimestepDropout",
    "WeightDrop",
]

from .dropout import GaussianNoise

__all__ += ["GaussianNoise"]
