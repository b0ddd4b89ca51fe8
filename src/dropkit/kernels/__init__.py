"""Backends of the mask engine, one file each, behind one small dispatcher.

* ``numba_cpu``: fused, parallel CPU kernels (used for CPU tensors when numba imports).
* ``triton_cuda`` (and ``triton_drop_block``): Triton kernels, used for CUDA tensors when
  triton imports. They are checked bit for bit in Triton's CPU interpreter; on a GPU, the first
  CUDA call also compares a Triton keep field with the pure-PyTorch one and falls back (with a
  warning) if they differ, so a code-generation problem cannot give wrong masks silently.
* ``torch_ref``: pure PyTorch, any device (CUDA tensors when triton is missing).

Each backend module exposes ``apply``, ``keep_field`` and ``normal_field`` with the same
signatures and the same bits; a backend may also offer ``gaussian(x, key, std)`` (fused Gaussian
dropout, ``None`` where it does not apply), which ``dropkit::gaussian_mul`` uses when present.
The choice is ``"auto"`` by default; ``DROPKIT_BACKEND`` in the environment or
:func:`set_backend` can force ``"numba"``, ``"torch"`` or ``"triton"``. Backends are imported on
first use, so ``import dropkit`` stays light (it never imports triton). Under ``"auto"``, a
backend that cannot load (package missing or broken, numba's JIT disabled) gives way to the
pure-PyTorch path, with a warning when the package is broken rather than missing; forced, the
error is raised.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

__all__ = ["BACKENDS", "for_device", "get_backend", "set_backend", "uses_triton"]

BACKENDS = ("auto", "numba", "torch", "triton")


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}.")
    return name


_backend = _check(os.environ.get("DROPKIT_BACKEND", "auto"))


def set_backend(name: str) -> None:
    """Choose the backend: ``"auto"`` (numba for CPU tensors, Triton for CUDA tensors, each when
    importable; pure PyTorch otherwise), ``"numba"`` or ``"triton"`` (as ``"auto"``, but a
    missing package is an error), or ``"torch"`` (pure PyTorch everywhere).

    >>> set_backend("torch"); get_backend()
    'torch'
    >>> set_backend("auto")
    """
    global _backend
    _backend = _check(name)


def get_backend() -> str:
    """The backend setting now in force (see :func:`set_backend`)."""
    return _backend


_load_errors: dict[str, Exception] = {}  # backend -> why one of its modules cannot be imported


def _load(name: str, backend: str) -> ModuleType | None:
    """Backend module ``name`` of ``backend`` ("numba" or "triton"), or ``None`` where it cannot
    load (its package is missing or broken, or numba's JIT is disabled) and the setting is not
    ``backend`` (then the error is raised): the caller then uses the pure-PyTorch path, which
    has the same bits. A failure is remembered, and warned about once unless an ImportError."""
    err = _load_errors.get(backend)
    if err is None:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except Exception as new:
            err = _load_errors[backend] = new
            if _backend != backend and not isinstance(err, ImportError):  # e.g. OSError: a
                warnings.warn(  # broken llvmlite library; torch still works, same bits
                    f"dropkit: the {backend} kernels cannot load ({type(err).__name__}: {err}); "
                    "using the pure-PyTorch backend.", stacklevel=3)
    if _backend == backend:
        raise err
    return None


_triton_ok: dict[int, bool] = {}  # CUDA device index -> the self-check passed


def _triton_checked(device: torch.device) -> bool:
    """Whether the Triton kernels may serve ``device``: triton imports and, once per device,
    a Triton keep field equals the pure-PyTorch one bit for bit (else: warn, use torch)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _triton_ok:
        module = _load("triton_cuda", "triton")
        ok = module is not None
        if ok:
            torch_ref = importlib.import_module(f"{__name__}.torch_ref")
            key, t, count = (0x243F6A88, 0x85A308D3), 30000, 8 * 1024 + 5
            got = module.keep_field(key, t, count, device=device)
            ok = bool(torch.equal(got, torch_ref.keep_field(key, t, count, device=device)))
            if not ok:
                if _backend == "triton":
                    raise RuntimeError("dropkit: the Triton keep field differs from the "
                                       "pure-PyTorch one on this GPU (docs/rng.md).")
                warnings.warn("dropkit: the Triton kernels disagree with the mask spec on "
                              f"{device}; using the pure-PyTorch backend there.", stacklevel=3)
        _triton_ok[index] = ok
    return _triton_ok[index]


def uses_triton(device: torch.device) -> bool:
    """Whether tensors on ``device`` go to the Triton kernels (CUDA only; see
    :func:`set_backend`)."""
    return device.type == "cuda" and _backend in ("auto", "triton") and _triton_checked(device)


_chosen: dict[tuple[str, int | None, str], ModuleType] = {}  # (type, index, setting) -> module


def for_device(device: torch.device) -> ModuleType:
    """The backend module that computes masks for tensors on ``device`` (decided once per
    device and backend setting: it is asked on every call)."""
    key = (device.type, device.index, _backend)
    module = _chosen.get(key)
    if module is None:
        module = _chosen[key] = _choose(device)
    return module


def _choose(device: torch.device) -> ModuleType:
    if uses_triton(device):
        return importlib.import_module(f"{__name__}.triton_cuda")
    if device.type == "cpu" and _backend != "torch":
        module = _load("numba_cpu", "numba")
        if module is not None:
            return module
    return importlib.import_module(f"{__name__}.torch_ref")
