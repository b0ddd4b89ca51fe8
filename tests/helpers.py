"""Assertions shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import math

import torch

import dropkit
import dropkit.functional as DF

BACKENDS = ("numba", "torch")
FUNCS = {  # every function of dropkit.functional, by name
    "dropout": DF.dropout,
    "spatial_dropout1d": DF.spatial_dropout1d,
    "spatial_dropout2d": DF.spatial_dropout2d,
    "spatial_dropout3d": DF.spatial_dropout3d,
    "timestep_dropout": DF.timestep_dropout,
    "gaussian_dropout": DF.gaussian_dropout,
    "alpha_dropout": DF.alpha_dropout,
}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def assert_keep_rate(kept: int, total: int, p_drop: float, sigmas: float = 4.0) -> None:
    """The realized keep count is within ``sigmas`` binomial standard deviations of
    ``total * (1 - p_drop)``."""
    q = 1.0 - p_drop
    mean, sd = total * q, math.sqrt(total * q * (1.0 - q))
    assert abs(kept - mean) <= sigmas * sd, (
        f"kept {kept} of {total}: expected {mean:.1f} +- {sigmas} * {sd:.2f}"
    )


def run_on(backend: str, fn, *args, **kwargs):
    """Call ``fn`` with the CPU backend forced to ``backend``, then restore the setting."""
    old = dropkit.get_backend()
    dropkit.set_backend(backend)
    try:
        return fn(*args, **kwargs)
    finally:
        dropkit.set_backend(old)
