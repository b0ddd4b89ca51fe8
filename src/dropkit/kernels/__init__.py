"""Backends of the mask engine, one file each, behind one small dispatcher.

* ``numba_cpu``: fused, parallel CPU kernels (used for CPU tensors when numba imports).
* ``torch_ref``: pure PyTorch, any device (CUDA tensors use it by default for now).
* ``triton_cuda``: Triton kernels for CUDA tensors, checked bit for bit in Triton's CPU
  interpreter but not yet on a GPU, so used only when asked for with ``"triton"``.

Each backend module exposes ``apply``, ``keep_field`` and ``normal_field`` with the same
signatures and the same bits; a backend may also offer ``gaussian(x, key, std)`` (fused Gaussian
dropout, ``None`` where it does not apply), which ``dropkit::gaussian_mul`` uses when present.
The choice is ``"auto"`` by default; ``DROPKIT_BACKEND`` in the
environment or :func:`set_backend` can force ``"numba"`` or ``"torch"``. Backends are imported on
first use, so ``import dropkit`` stays light.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

__all__ = ["BACKENDS", "for_device", "get_backend", "set_backend"]

BACKENDS = ("auto", "numba", "torch", "triton")


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")
    return name


_backend = _check(os.environ.get("DROPKIT_BACKEND", "auto"))


def set_backend(name: str) -> None:
    """Choose the backend: ``"auto"`` (numba for CPU tensors when available, pure PyTorch
    elsewhere), ``"numba"``, ``"torch"`` (pure PyTorch everywhere), or ``"triton"`` (the Triton
    kernels for CUDA tensors, not yet checked on a GPU; CPU tensors as ``"auto"``).

    >>> set_backend("torch"); get_backend()
    'torch'
    >>> set_backend("auto")
    """
    global _backend
    _backend = _check(name)


def get_backend() -> str:
    """The backend setting now in force (see :func:`set_backend`)."""
    return _backend


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        if _backend == name:
            raise
        return None


def for_device(device: torch.device) -> ModuleType:
    """The backend module that computes masks for tensors on ``device``."""
    if device.type == "cuda" and _backend == "triton":
        return importlib.import_module(f"{__name__}.triton_cuda")
    if device.type == "cpu" and _backend != "torch":
        module = _load("numba_cpu")
        if module is not None:
            return module
    return importlib.import_module(f"{__name__}.torch_ref")
