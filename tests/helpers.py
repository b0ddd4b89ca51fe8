"""Assertions shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import contextlib
import io
import math
import re

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


# --- Triton tests: compiled on a GPU; elsewhere Triton's CPU interpreter (set in conftest.py) ---
ON_GPU = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if ON_GPU else "cpu"
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float64: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor, any_nan: bool = False) -> bool:
    """Same dtype, shape and bits; with ``any_nan`` a NaN only has to meet a NaN (the spec leaves
    the bits of a NaN made by arithmetic open: CPU, interpreter and GPU write other payloads)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.cpu().contiguous(), b.cpu().contiguous()
    if any_nan:
        nan = torch.isnan(a)
        if not torch.equal(nan, torch.isnan(b)):
            return False
        a, b = a.masked_fill(nan, 0), b.masked_fill(nan, 0)
    return torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


# --- the command line ---


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``dropkit`` in-process: ``(exit code, stdout, stderr)``; an argparse exit
    (``SystemExit``) counts as its exit code."""
    from dropkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_cli_error(result: tuple[int, str, str], command: str, message: str | None = None,
                     code: int = 2) -> None:
    """The CLI's error contract: exit ``code``, nothing on stdout, exactly one stderr line
    ``dropkit COMMAND: error: ...`` and no traceback; ``message``: a regex the line matches."""
    exit_code, out, err = result
    assert exit_code == code, err
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert err.startswith(f"dropkit {command}: error: "), err
    if message is not None:
        assert re.search(message, err), err
