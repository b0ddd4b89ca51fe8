"""dropkit: the dropout family for PyTorch, on one reproducible Philox mask engine.

>>> import torch, dropkit
>>> y = dropkit.functional.dropout(torch.ones(8), 0.5, seed=0)
>>> y.tolist()
[2.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
"""

from . import distributed, functional, mc, nn, rng, schedules
from .convert import convert
from .kernels import get_backend, set_backend
from .schedules import depth_rates

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "convert",
    "depth_rates",
    "distributed",
    "functional",
    "get_backend",
    "mc",
    "nn",
    "rng",
    "schedules",
    "set_backend",
]
