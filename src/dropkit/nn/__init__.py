"""Modules of the dropout family: each stores its settings, validates them at construction with
the same checks as :mod:`dropkit.functional`, and calls one function in ``forward``."""

from ._rate import RateModule
from .drop_block import DropBlock1d, DropBlock2d, DropBlock3d
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

__all__ = [
    "AlphaDropout",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "RateModule",
    "SpatialDropout1d",
    "SpatialDropout2d",
    "SpatialDropout3d",
    "TimestepDropout",
]
