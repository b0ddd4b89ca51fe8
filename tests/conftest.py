"""Shared test setup: deterministic global RNG, hypothesis profile, backend restoration."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import dropkit

if not torch.cuda.is_available():
    # Triton kernels run in Triton's CPU interpreter, which triton reads at import time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# numba compiles a kernel on its first call; no per-example deadline.
settings.register_profile(
    "dropkit", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("dropkit")


@pytest.fixture(autouse=True)
def _seed_and_restore():
    """Seed torch's global RNG and restore the backend and thread count after each test."""
    torch.manual_seed(1234)
    backend, threads = dropkit.get_backend(), torch.get_num_threads()
    yield
    dropkit.set_backend(backend)
    torch.set_num_threads(threads)
