"""The bodies of tests/test_processes.py's subprocess runs: forks, threads, installs, JIT modes.

``python procs_worker.py SCENARIO SIZE`` prints one JSON object: ``digests`` maps each workload
name to the SHA-256 of its output bytes, as computed in that scenario (by a forked child, by
each of several threads, ...); the test process compares them with its own pure-PyTorch
results. A scenario whose process is killed (a signal, an abort) prints nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import warnings

import torch

import dropkit
import dropkit.functional as F

# "big" inputs exceed one parallel work item of every kernel used (131072 elements for dropout):
# the numba kernels launch in parallel; "small" ones run the serial kernels only.
SHAPES = {"big": (4, 80, 1000), "small": (2, 4, 250)}


def results(size: str) -> dict[str, torch.Tensor]:
    """The workload: each dropout variant's output on a fixed input of ``SHAPES[size]`` (only
    those named in ``DROPKIT_TEST_WORKLOAD``, comma-separated, where set: fewer compiles)."""
    n, c, length = SHAPES[size]
    x = torch.linspace(-3.0, 3.0, n * c * length).reshape(n, c, length)
    work = {
        "dropout": lambda: F.dropout(x, 0.3, seed=7),
        "spatial": lambda: F.spatial_dropout1d(x, 0.3, seed=7),
        "gaussian": lambda: F.gaussian_dropout(x, 0.3, seed=7),
        "bfloat16": lambda: F.dropout(x.bfloat16(), 0.3, seed=7),
        "float16": lambda: F.dropout(x.half(), 0.3, seed=7),
        "drop_block": lambda: F.drop_block2d(x.reshape(n, c, length // 25, 25), 0.2, 5, seed=7),
    }
    names = os.environ.get("DROPKIT_TEST_WORKLOAD")
    return {name: run() for name, run in work.items()
            if names is None or name in names.split(",")}


def digests(size: str) -> dict[str, str]:
    """SHA-256 of each workload output's bytes."""
    return {name: hashlib.sha256(out.contiguous().view(torch.uint8).numpy().tobytes())
            .hexdigest() for name, out in results(size).items()}


def _in_child(size: str) -> dict[str, str]:
    """The workload in a forked child, after torch.nn.Dropout on the same input (the reference:
    it works there). With one torch thread, as DataLoader workers run: torch's own parallel ops
    hang in a child forked after the parent ran them (GNU OpenMP)."""
    torch.set_num_threads(1)
    torch.nn.Dropout(0.3)(torch.ones(SHAPES[size]))
    return digests(size)


def _fork(size: str) -> dict:
    """The parent runs the workload (parallel kernels), then forked children run it: one from
    ``os.fork`` and a ``multiprocessing`` pool with the fork start method."""
    import multiprocessing

    parent = digests(size)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        os.write(write, json.dumps(_in_child(size)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read() or "null")
    _, status = os.waitpid(pid, 0)
    pooled = None
    if status == 0:  # else the pool would wait forever for its killed workers' results
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pooled = pool.map_async(_in_child, [size, size]).get(timeout=240)
    return {"digests": parent, "child": child, "status": status, "pool": pooled}


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, size: str) -> None:
        self.size = size

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> str:
        return json.dumps(digests(self.size))


def _dataloader(size: str) -> dict:
    """The parent runs the workload, then DataLoader workers (fork start method) run it."""
    parent = digests(size)
    loader = torch.utils.data.DataLoader(_Dataset(size), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    return {"digests": parent, "workers": [json.loads(item) for item in loader]}


def _threads(size: str) -> dict:
    """Four threads run the workload at the same time, five times each; then :func:`_fork`."""
    barrier = threading.Barrier(4)
    found: list[dict[str, str]] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            for _ in range(5):
                barrier.wait()
                found.append(digests(size))
        except BaseException as err:  # reported by the main thread
            errors.append(err)
            barrier.abort()

    workers = [threading.Thread(target=body) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return {"threads": found, **_fork(size)}  # and forked children after the threads


def _plain(size: str) -> dict:
    """The workload in this process as it is configured (read-only install, JIT disabled, ...),
    with what chose the CPU backend and whether numba caches the kernels."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = digests(size)
    report = {"digests": found, "warnings": [str(w.message) for w in caught],
              "dropkit": dropkit.__file__,
              "backend": dropkit.kernels.for_device(torch.device("cpu")).__name__}
    if report["backend"].endswith("numba_cpu"):
        from dropkit.kernels import numba_cpu

        report["cache"] = type(numba_cpu._philox._cache).__name__
    else:  # forcing the numba backend where it cannot load: calls raise, and say why
        dropkit.set_backend("numba")
        report["forced"] = None
        try:
            F.dropout(torch.ones(8), 0.5, seed=7)
        except Exception as err:
            report["forced"] = f"{type(err).__name__}: {err}"
    return report


def _broken_llvmlite(size: str) -> dict:
    """:func:`_plain` where importing llvmlite's library raises ``DROPKIT_TEST_LLVMLITE_ERROR``
    (``OSError``: it cannot load; ``ImportError``: it is missing)."""
    import importlib.abc

    error = {"OSError": OSError, "ImportError": ImportError}[
        os.environ["DROPKIT_TEST_LLVMLITE_ERROR"]]

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "llvmlite.binding":
                raise error("could not load libllvmlite.so (simulated)")
            return None

    sys.meta_path.insert(0, Broken())
    return _plain(size)


SCENARIOS = {"dataloader": _dataloader, "threads": _threads, "plain": _plain,
             "broken_llvmlite": _broken_llvmlite}

if __name__ == "__main__":
    scenario, size = sys.argv[1:]
    print(json.dumps(SCENARIOS[scenario](size)))
