"""dropkit in forked children, DataLoader workers, threads, read-only installs and JIT modes.

Each scenario runs in a fresh interpreter (tests/procs_worker.py), which reports the SHA-256 of
every workload output; these must equal the pure-PyTorch path's results computed here (that path
equals the NumPy reference: tests/test_kernels.py). "big" inputs launch the numba kernels in
parallel, which is what forks and threads can break.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dropkit
import procs_worker

_TESTS = Path(__file__).resolve().parent
_SRC = Path(dropkit.__file__).resolve().parent.parent  # the dropkit under test


def _expected(size: str, workload: str | None = None) -> dict[str, str]:
    """The workload's digests from the pure-PyTorch path, in this process (``workload``: the
    worker's ``DROPKIT_TEST_WORKLOAD``)."""
    dropkit.set_backend("torch")
    with pytest.MonkeyPatch.context() as patch:
        if workload is not None:
            patch.setenv("DROPKIT_TEST_WORKLOAD", workload)
        return procs_worker.digests(size)


def _run(scenario: str, size: str, src: Path = _SRC, **env: str | None) -> dict:
    """Run a worker scenario with ``src`` first on the path and ``env`` set (``None``: unset)."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join((str(src), str(_TESTS)))}
    for name in ("DROPKIT_BACKEND", "DROPKIT_TEST_WORKLOAD"):
        environ.pop(name, None)
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    result = subprocess.run([sys.executable, str(_TESTS / "procs_worker.py"), scenario, size],
                            capture_output=True, text=True, env=environ, timeout=300,
                            check=False)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def test_dataloader_workers_with_fork_give_the_parents_bits():
    report = _run("dataloader", "big")
    expected = _expected("big")
    assert report["digests"] == expected
    assert report["workers"] == [expected] * 4


@pytest.mark.parametrize("layer", [None, "workqueue"])
def test_threads_then_forked_children_give_the_spec_bits(layer):
    # Four threads launch parallel kernels at once, then the process forks. numba's workqueue
    # layer (where neither OpenMP nor TBB is available) aborts the process on concurrent
    # launches: they take a lock. GNU OpenMP (numba's default "omp" layer here) kills a forked
    # child that launches a parallel kernel once the parent has: the child runs the serial
    # kernels. workqueue is fork-safe: its children launch in parallel.
    report = _run("threads", "big", NUMBA_THREADING_LAYER=layer)
    expected = _expected("big")
    assert report["threads"] == [expected] * 20
    assert report["digests"] == expected
    assert report["status"] == 0, f"the forked child ended with wait status {report['status']}"
    assert report["child"] == expected
    assert report["pool"] == [expected, expected]


def _read_only_copy(root: Path) -> Path:
    """A copy of the dropkit under test where numba cannot cache: each package directory's
    ``__pycache__`` is a file (even root cannot create a directory there)."""
    site = root / "site"
    shutil.copytree(_SRC / "dropkit", site / "dropkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for init in (site / "dropkit").rglob("__init__.py"):
        (init.parent / "__pycache__").write_text("")
    return site


def test_read_only_install_compiles_uncached(tmp_path):
    # numba finds no cache locator: no writable __pycache__, HOME's cache directory cannot
    # exist (HOME is under a file), no NUMBA_CACHE_DIR. Two variants keep the compile short.
    (tmp_path / "file").write_text("")
    workload = "dropout,gaussian"
    report = _run("plain", "small", src=_read_only_copy(tmp_path),
                  HOME=str(tmp_path / "file" / "home"), NUMBA_CACHE_DIR=None,
                  XDG_CACHE_HOME=None, PYTHONDONTWRITEBYTECODE="1",
                  DROPKIT_TEST_WORKLOAD=workload)
    assert report["dropkit"].startswith(str(tmp_path))
    assert report["backend"] == "dropkit.kernels.numba_cpu"
    assert report["cache"] == "NullCache"  # compiled, not cached
    assert report["warnings"] == []
    assert report["digests"] == _expected("small", workload)


def test_numba_disable_jit_uses_the_torch_path():
    # Interpreted, the kernels' intrinsics raise NotImplementedError (Gaussian, 16-bit).
    report = _run("plain", "small", NUMBA_DISABLE_JIT="1")
    assert report["backend"] == "dropkit.kernels.torch_ref"
    assert report["warnings"] == []
    assert report["digests"] == _expected("small")
    assert report["forced"].startswith("ImportError: ")  # set_backend("numba") says why
    assert "NUMBA_DISABLE_JIT" in report["forced"]


@pytest.mark.parametrize("error", ["OSError", "ImportError"])
def test_a_broken_or_missing_compiler_falls_back_to_the_torch_path(error):
    # llvmlite (numba's compiler) whose library cannot load raises OSError: one warning; a
    # missing one raises ImportError: none (numba is optional). Forcing numba raises the error.
    report = _run("broken_llvmlite", "small", DROPKIT_TEST_LLVMLITE_ERROR=error)
    assert report["backend"] == "dropkit.kernels.torch_ref"
    assert report["digests"] == _expected("small")
    if error == "OSError":
        assert len(report["warnings"]) == 1
        assert "numba kernels cannot load (OSError" in report["warnings"][0]
    else:
        assert report["warnings"] == []
    assert report["forced"].startswith(f"{error}: ")


@pytest.mark.parametrize("size", ["small", "big"])
def test_the_worker_workload_agrees_across_backends_here(size):
    # The reference itself: numba (serial and parallel kernels) equals the torch path.
    dropkit.set_backend("numba")
    found = procs_worker.digests(size)
    assert found == _expected(size)
