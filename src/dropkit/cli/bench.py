"""``dropkit bench``: dropkit's dropout against torch's and peers' on the same tensors.

On CPU (the default), one run measures, for every requested dtype and on the same input
tensors:

* plain dropout: :func:`dropkit.functional.dropout` against :func:`torch.nn.functional.dropout`,
  forward only and forward+backward, with ``x * 2.0`` (forward and forward+backward) and
  ``x.clone()`` as memory-bound floors;
* spatial dropout: :func:`dropkit.functional.spatial_dropout2d` against
  :func:`torch.nn.functional.dropout2d` on an ``(N, C, H, W)`` tensor of the same element count,
  forward and forward+backward;
* two clearly labelled references for the cost of producing a fresh output tensor:
  ``torch.empty_like(x).fill_(1)`` (new allocation: page faults included) and ``buf.fill_(1)``
  (a buffer reused across iterations: no page faults);
* DropBlock (op ``dropblock2d``) on its own ``(N, C, H, W)`` tensor (default
  ``(32, 256, 28, 28)``): :func:`dropkit.functional.drop_block2d` with ``per_channel=True`` at
  every ``--block-sizes`` entry and with ``per_channel=False`` at block 7, the floor ``x * 2.0``,
  and, when they are installed, the DropBlock of torchvision, timm and the ``dropblock`` package
  at block 7 (optional peers, never dependencies: a peer that is missing or whose call fails is
  a printed note, never a crash);
* DropPath (op ``drop_path``): :func:`dropkit.functional.drop_path` against a plain-torch
  reference of timm's ``drop_path`` on the ``2**24`` tensor viewed as ``(256, rest)``.

``--ops`` selects the ops (default: all).

Timing is wall clock (:func:`time.perf_counter`) around each call after ``--warmup`` untimed
calls (these also trigger numba's JIT compilation); each row reports the median and the minimum
of ``--repeat`` timed calls. Forward+backward times ``y = f(x); y.backward(g)`` with ``x`` a leaf
that requires grad (its ``.grad`` is reset to ``None`` before every call, outside the timed
region) and ``g`` one upstream gradient allocated once. Every call allocates its own outputs,
for every provider.

Effective bandwidth counts ``2 * element_size`` bytes per element per pass (read ``x``, write
``y``; backward reads the gradient and writes ``grad_x``), so forward+backward counts
``4 * element_size``; the fill references count one write. The bytes autograd keeps for backward
are measured, not assumed: :func:`torch.autograd.graph.saved_tensors_hooks` records the tensors
saved by one forward call on an input that requires grad (deduplicated by storage pointer).

``--device cuda[:N]`` runs the GPU suite instead (:func:`measure_gpu`, ``--ops`` selects among
``dropout``, ``sweep``, ``bias_dropout_add``, ``dropblock2d``), every row timed with CUDA events
around each call (:func:`cuda_event_timer`) after ``--warmup`` calls, median (and 10th/90th
percentiles) of ``--repeat`` calls (default 10 and 100), inputs requiring grad as in training:

* ``dropout``: on one tensor of ``--size`` MiB (default 256, at least 4x the H200's L2) per dtype
  (default float32, bfloat16, float16): ``y.copy_(x)`` (the same-run bandwidth reference), and
  forward, backward and forward+backward of :func:`dropkit.functional.dropout`,
  ``F.dropout`` and ``torch.compile``'d ``F.dropout``;
* ``sweep``: forward+backward of the same three (and the copy) at ``2**e`` elements for every
  ``--sweep`` exponent (default 10, 15, 20, 25, 30);
* ``bias_dropout_add``: ``dropkit.functional.bias_dropout_add(x, bias, residual, p)`` (when the
  build has it) against ``residual + F.dropout(x + bias, p)``, eager and compiled, on
  ``--bda-shape`` (default (16384, 8192));
* ``dropblock2d``: ``dropkit.functional.drop_block2d(x, p, 7)`` against torchvision's
  ``drop_block2d`` and timm's ``drop_block_2d`` (per channel, and its default coupled channels)
  on (64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14) and (64, 2048, 7, 7). When
  torchvision or timm does not import, the copies in :mod:`dropkit.cli._peers` are timed and
  the rows say "(copied code)".

Each row reports the effective GB/s on compulsory bytes, the percentage of the copy's GB/s on
the same tensor, the bytes kept for backward (total and per element) and, on peer rows,
dropkit's speed-up over the row; the issue's GPU targets are checked below the table. The
measuring functions take the device and the timer as arguments, so the tests run them on CPU
with tiny sizes; only :func:`cuda_event_timer` needs a GPU. ``--device cuda`` without CUDA is a
one-line error (exit code 2).

The module has no import-time side effects; torch and dropkit load when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._args import add_device, add_p, add_quick, add_repeat, check_writable_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "GpuConfig", "GpuRow", "Row", "add_parser", "check_gpu_targets", "check_targets",
    "cuda_event_timer", "derive_shape", "environment", "format_gpu_table", "format_table",
    "gpu_environment", "link_gpu_rows", "measure_gpu", "run", "timer_for",
]

DEFAULT_NUMEL = 2**24
DEFAULT_SHAPE = (32, 256, 32, 64)  # 2**24 elements
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
BACKEND_NAMES = ("auto", "numba", "torch")
OP_NAMES = ("dropout", "dropout2d", "dropblock2d", "drop_path")
MIN_WARMUP = 2
CPU_REPEAT, CPU_WARMUP = 15, 3  # --repeat and --warmup of the CPU benchmark
DEFAULT_DROPBLOCK_SHAPE = (32, 256, 28, 28)
DEFAULT_BLOCK_SIZES = (3, 5, 7, 9)
PEER_BLOCK_SIZE = 7  # per_channel=False and the peers are timed at this block size
DROP_PATH_ROWS = 256  # drop_path views the flat tensor as (gcd(numel, 256), rest)
PEER_PACKAGES = ("torchvision", "timm", "dropblock")
PER_CHANNEL_TAG = "[per-channel]"  # marks a peer row with one mask per channel
DEFAULT_TAG = "[default]"  # marks the peer row of timm's default DropBlock2d
# timm's drop_path in plain torch (timm is not a dependency):
# x * x.new_empty((N, 1)).bernoulli_(keep).div_(keep), keep = 1 - p.
DROP_PATH_REFERENCE = "torch reference (timm-style drop_path)"

# Project targets, checked for float32 (they are stated for 2 cores, 2**24 elements, p = 0.1).
TARGET_FWD_BWD_SPEEDUP = 5.0  # dropkit forward+backward at least 5x faster than F.dropout
TARGET_FWD_VS_FLOOR = 2.0  # dropkit forward within 2x the time of x * 2.0
TARGET_SAVED_PER_ELEMENT = 0.0  # no per-element state kept for backward (a fixed-size key)
# DropBlock targets: float32 (32, 256, 28, 28), p = 0.1, per_channel=True (peers: fwd+bwd).
TARGET_BLOCK_SPREAD = 1.25  # max/min median time over block sizes 3..9
TARGET_VS_TORCHVISION = 5.0  # at least 5x faster than torchvision.ops.drop_block2d (block 7)
TARGET_VS_TIMM_PER_CHANNEL = 2.0  # at least 2x faster than timm per-channel (block 7)
TARGET_VS_TIMM_DEFAULT = 1.0  # no slower than timm's default DropBlock2d (block 7)

# --device cuda: the GPU suite (GpuConfig, measure_gpu).
GPU_SUITES = ("dropout", "sweep", "bias_dropout_add", "dropblock2d")
GPU_DTYPES = ("float32", "bfloat16", "float16")  # --dtype with --device cuda
GPU_SIZE_MIB, GPU_QUICK_SIZE_MIB = 256.0, 16.0  # per tensor of the dropout rows (H200 L2: 50 MiB)
GPU_REPEAT, GPU_WARMUP = 100, 10
GPU_QUICK_REPEAT, GPU_QUICK_WARMUP = 50, 5
GPU_MIN_REPEAT = 50  # fewer timed calls are noted: not the measurement the targets ask for
GPU_SWEEP, GPU_QUICK_SWEEP = (10, 15, 20, 25, 30), (10, 15, 20)  # log2 of the element counts
SWEEP_MAX_EXPONENT = 32
GPU_BDA_SHAPE, GPU_QUICK_BDA_SHAPE = (16384, 8192), (2048, 4096)  # (batch * seq, hidden)
GPU_DROPBLOCK_SHAPES = ((64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14), (64, 2048, 7, 7))
GPU_QUICK_DROPBLOCK_BATCH = 8  # --quick: the same shapes with batch 8
GPU_COMPILE_BACKEND = "inductor"
GPU_ONLY_OPTIONS = ("size", "quick", "sweep", "bda_shape", "compile_backend")
CPU_ONLY_OPTIONS = ("numel", "shape", "threads", "backend", "block_sizes")
COPIED = "(copied code)"  # marks a peer row timed on dropkit.cli._peers, not on the package
GPU_PASSES = {  # the passes timed per suite (every suite also times y.copy_(x))
    "dropout": ("fwd", "bwd", "fwd+bwd"),
    "sweep": ("fwd+bwd",),
    "bias_dropout_add": ("fwd", "bwd", "fwd+bwd"),
    "dropblock2d": ("fwd", "fwd+bwd"),
}
# Compulsory bytes per element in units of the element size: read x, write y (and in backward
# read dy, write dx). bias_dropout_add's forward also reads the residual; its backward writes dx
# only (the residual's gradient is dy itself, the bias' a reduction).
GPU_TRAFFIC = {"copy": 2, "fwd": 2, "bwd": 2, "fwd+bwd": 4}
BDA_TRAFFIC = {"copy": 2, "fwd": 3, "bwd": 2, "fwd+bwd": 5}
# GPU targets (stated for an NVIDIA H200, the default sizes and p = 0.1).
TARGET_GPU_COPY_PCT = 90.0  # dropout fwd and bwd: >= 90% of the same-run copy bandwidth
TARGET_GPU_VS_TORCH = {"float32": 1.10, "bfloat16": 1.20, "float16": 1.20}  # fwd+bwd speed-up
TARGET_GPU_VS_COMPILE = 1.0  # never slower than torch.compile'd F.dropout
TARGET_GPU_BDA = 2.0  # bfloat16 bias_dropout_add vs the unfused eager expression
TARGET_GPU_VS_TORCHVISION = 3.0  # DropBlock fwd+bwd vs torchvision.ops.drop_block2d
TARGET_GPU_VS_TIMM = 2.0  # DropBlock fwd+bwd vs timm's per-channel drop_block_2d

# timer(call, reset, warmup, repeat) -> milliseconds of each of ``repeat`` timed calls.
Timer = Callable[[Callable[[], object], Callable[[], None], int, int], list[float]]


@dataclass
class Row:
    """One measured line of the benchmark table."""

    op: str  # "dropout", "dropout2d", "dropblock2d", "drop_path" (the family of the row)
    pass_: str  # "fwd" or "fwd+bwd"
    provider: str  # "dropkit", "torch", "floor", "reference", or a peer package's name
    impl: str  # the expression that was timed
    dtype: str
    numel: int
    shape: list[int]
    p: float
    threads: int
    median_ms: float
    min_ms: float
    traffic_bytes_per_element: int
    gb_per_s: float
    ratio_vs_torch: float | None  # torch median / this row's median (> 1: faster than torch)
    saved_bytes: int | None  # bytes autograd keeps for backward after one forward call
    saved_bytes_per_element: float | None
    block_size: int | None = None  # dropblock2d rows (dropkit and peers); None elsewhere


# --------------------------------------------------------------------------- argument checks


def _parse_dtypes(text: str) -> list[str]:
    """Split a comma list of dtype names, rejecting unknown ones (ValueError)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("`--dtype` must name at least one dtype, got an empty list.")
    for name in names:
        if name not in DTYPE_NAMES:
            raise ValueError(
                f"`--dtype` entries must be one of {', '.join(DTYPE_NAMES)}, "
                f"got {name!r}."
            )
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _parse_ops(text: str | None, choices: Sequence[str] = OP_NAMES) -> list[str]:
    """Split a comma list of names from ``choices`` (``all`` or None: every one), rejecting
    unknown ones; the result is in the order of ``choices`` (the table order)."""
    if text is None or text.strip() == "all":
        return list(choices)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("`--ops` must name at least one op, got an empty list.")
    for name in names:
        if name not in choices:
            raise ValueError(
                f"`--ops` entries must be one of {', '.join(choices)} (or all), "
                f"got {name!r}."
            )
    return [name for name in choices if name in names]


def _parse_block_sizes(text: str) -> list[int]:
    """Split a comma list of positive block sizes (ValueError otherwise)."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"`--block-sizes` must be a comma list of integers, got {text!r}."
        ) from None
    if not sizes or min(sizes) <= 0:
        raise ValueError(
            f"`--block-sizes` must be a comma list of positive integers, got {text!r}."
        )
    return list(dict.fromkeys(sizes))


def _parse_shape(
    text: str, option: str = "--shape", names: Sequence[str] = ("N", "C", "H", "W")
) -> tuple[int, ...]:
    """Parse ``N,C,H,W`` (or ``NxCxHxW``) into ``len(names)`` positive ints (ValueError
    otherwise)."""
    count = {2: "two", 4: "four"}.get(len(names), str(len(names)))
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(
            f"`{option}` must be {count} integers {','.join(names)}, got {text!r}."
        ) from None
    if len(dims) != len(names) or min(dims) <= 0:
        raise ValueError(
            f"`{option}` must be {count} positive integers {','.join(names)}, got {text!r}."
        )
    return dims


def _parse_sweep(text: str) -> list[int]:
    """Split a comma list of exponents ``e`` (sizes ``2**e``) or ranges ``a-b`` into sorted,
    distinct ints in ``[0, SWEEP_MAX_EXPONENT]`` (ValueError otherwise)."""
    message = (f"`--sweep` must be a comma list of exponents or ranges such as 10-30, each in "
               f"[0, {SWEEP_MAX_EXPONENT}], got {text!r}.")
    exponents: list[int] = []
    try:
        for part in (part.strip() for part in text.split(",")):
            low, _, high = part.partition("-")
            exponents += range(int(low), int(high or low) + 1)
    except ValueError:
        raise ValueError(message) from None
    if not exponents or min(exponents) < 0 or max(exponents) > SWEEP_MAX_EXPONENT:
        raise ValueError(message)
    return sorted(set(exponents))


def _largest_divisor_at_most(n: int, limit: float) -> int:
    """The largest divisor of ``n`` that is ``<= limit`` (at least 1)."""
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for cand in (d, n // d):
                if best < cand <= limit:
                    best = cand
    return best


def derive_shape(numel: int) -> tuple[int, int, int, int]:
    """An ``(N, C, H, W)`` shape with ``numel`` elements for the spatial-dropout rows.

    ``2**24`` gives the default ``(32, 256, 32, 64)``; other sizes are split the same way: a
    plane ``H * W`` near ``sqrt(numel / 4)``, ``N`` near ``sqrt(N * C / 8)``, ``H`` near
    ``sqrt(H * W / 2)``, each the largest divisor not above that target.

    >>> derive_shape(2**24)
    (32, 256, 32, 64)
    >>> derive_shape(4096)
    (4, 32, 4, 8)
    >>> derive_shape(7)
    (1, 7, 1, 1)
    """
    if numel <= 0:
        raise ValueError(f"`numel` must be positive, got {numel}.")
    plane = _largest_divisor_at_most(numel, math.sqrt(numel / 4))
    rows = numel // plane
    n = _largest_divisor_at_most(rows, math.sqrt(rows / 8))
    h = _largest_divisor_at_most(plane, math.sqrt(plane / 2))
    return n, rows // n, h, plane // h


@dataclass
class _Config:
    numel: int
    shape: tuple[int, int, int, int]
    p: float
    dtypes: list[str]
    threads: int | None
    repeat: int
    warmup: int
    backend: str
    json_path: str | None
    ops: list[str]
    dropblock_shape: tuple[int, int, int, int]
    block_sizes: list[int]


def _only_with(args: argparse.Namespace, options: Sequence[str], where: str) -> None:
    """A one-line ValueError if one of ``options`` (dest names) was given: they apply ``where``
    only (unset options are None or False)."""
    for dest in options:
        value = getattr(args, dest, None)
        if value is not None and value is not False:
            raise ValueError(f"`--{dest.replace('_', '-')}` applies {where}.")


def _config(args: argparse.Namespace) -> _Config:
    """Validate the parsed arguments of the CPU benchmark; every problem is a one-line
    ValueError."""
    _only_with(args, GPU_ONLY_OPTIONS, "only with --device cuda")
    repeat = CPU_REPEAT if args.repeat is None else args.repeat
    warmup = CPU_WARMUP if args.warmup is None else args.warmup
    backend = "auto" if args.backend is None else args.backend
    if args.numel is not None and args.numel <= 0:
        raise ValueError(f"`--numel` must be a positive integer, got {args.numel}.")
    shape = _parse_shape(args.shape) if args.shape is not None else None
    if shape is not None:
        numel = math.prod(shape)
        if args.numel is not None and args.numel != numel:
            raise ValueError(
                f"`--shape` {args.shape} has {numel} elements but `--numel` is "
                f"{args.numel}."
            )
    else:
        numel = DEFAULT_NUMEL if args.numel is None else args.numel
        shape = DEFAULT_SHAPE if numel == DEFAULT_NUMEL else derive_shape(numel)
    _check_p(args.p)
    _check_repeat_warmup(repeat, warmup)
    if args.threads is not None and args.threads <= 0:
        raise ValueError(f"`--threads` must be a positive integer, got {args.threads}.")
    if backend not in BACKEND_NAMES:
        raise ValueError(
            f"`--backend` must be one of {', '.join(BACKEND_NAMES)}, got {backend!r}."
        )
    return _Config(
        numel=numel,
        shape=shape,
        p=float(args.p),
        dtypes=_parse_dtypes("float32" if args.dtype is None else args.dtype),
        threads=args.threads,
        repeat=repeat,
        warmup=warmup,
        backend=backend,
        json_path=args.json,
        ops=_parse_ops(args.ops),
        dropblock_shape=DEFAULT_DROPBLOCK_SHAPE if args.dropblock_shape is None
        else _parse_shape(args.dropblock_shape, "--dropblock-shape"),
        block_sizes=list(DEFAULT_BLOCK_SIZES) if args.block_sizes is None
        else _parse_block_sizes(args.block_sizes),
    )


def _check_p(p: float) -> None:
    if not (0.0 <= p <= 1.0):  # also rejects NaN
        raise ValueError(f"`--p` must be in [0, 1], got {p}.")


def _check_repeat_warmup(repeat: int, warmup: int) -> None:
    if repeat <= 0:
        raise ValueError(f"`--repeat` must be a positive integer, got {repeat}.")
    if warmup < MIN_WARMUP:
        raise ValueError(f"`--warmup` must be at least {MIN_WARMUP}, got {warmup}.")


# ------------------------------------------------------------------------------ measurement


def _time_ms(
    call: Callable[[], object],
    reset: Callable[[], None],
    warmup: int,
    repeat: int,
) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``call`` after ``warmup`` untimed ones.

    ``reset`` runs before every call, outside the timed region. What ``call`` returns is
    released after the clock stops, so freeing the output is not part of any row.
    """
    for _ in range(warmup):
        reset()
        call()
    times = []
    for _ in range(repeat):
        reset()
        start = time.perf_counter()
        out = call()
        stop = time.perf_counter()
        del out
        times.append((stop - start) * 1e3)
    reset()
    return times


def _saved_bytes(
    fn: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, p: float
) -> int:
    """Bytes of the tensors autograd saves for backward during one ``fn(leaf, p)``, where
    ``leaf`` is ``x`` detached (same storage) and requiring grad.

    Tensors are deduplicated by data pointer; the output is dropped before returning.
    """
    leaf = x.detach().requires_grad_(True)
    return _saved_bytes_of(lambda: fn(leaf, p))


def _saved_bytes_of(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward()`` runs (its inputs
    should require grad), deduplicated by data pointer; the output is dropped before returning.
    """
    import torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward()
    del y
    return sum(seen.values())


@dataclass
class _Case:
    op: str
    pass_: str
    provider: str
    impl: str
    fn: Callable[[torch.Tensor, float], torch.Tensor]  # (x, p) -> output
    traffic: int  # bytes per element moved by one call, in units of element_size
    saved: bool  # measure what autograd keeps (not for the fill references)
    block_size: int | None = None
    peer: bool = False  # another package's code: a failing call is a note, not a crash


@dataclass
class _Peer:
    """A DropBlock of another package, called as ``fn(x, p)`` at ``PEER_BLOCK_SIZE``."""

    provider: str  # the package
    impl: str  # what is called, tagged PER_CHANNEL_TAG and/or DEFAULT_TAG
    fn: Callable[[torch.Tensor, float], torch.Tensor]


def _torchvision_peers(block: int) -> list[_Peer]:
    from torchvision.ops import drop_block2d

    def fn(x: torch.Tensor, p: float) -> torch.Tensor:
        return drop_block2d(x, p, block, inplace=False, eps=1e-06, training=True)

    return [_Peer("torchvision", f"torchvision.ops.drop_block2d(x, p, {block}) "
                                 f"{PER_CHANNEL_TAG}", fn)]


def _timm_peers(block: int) -> list[_Peer]:
    """timm's per-channel variant and its default ``DropBlock2d``, adapted to its version.

    Newer timm: ``drop_block_2d(..., couple_channels=False)`` is per-channel and the default
    couples channels. Older timm (``batchwise``/``fast``): ``drop_block_2d`` with
    ``batchwise=False`` is per-channel and the module's default (``fast=True``) is too.
    """
    import inspect

    try:
        from timm.layers import DropBlock2d, drop_block_2d
    except ImportError:  # timm before 0.9
        from timm.models.layers import DropBlock2d, drop_block_2d
    params = inspect.signature(drop_block_2d).parameters
    peers = []
    if "couple_channels" in params:
        peers.append(_Peer(
            "timm", f"timm drop_block_2d(x, p, {block}, couple_channels=False) {PER_CHANNEL_TAG}",
            lambda x, p: drop_block_2d(x, p, block, couple_channels=False),
        ))
    elif "batchwise" in params:
        peers.append(_Peer(
            "timm", f"timm drop_block_2d(x, p, {block}, batchwise=False) {PER_CHANNEL_TAG}",
            lambda x, p: drop_block_2d(x, p, block, batchwise=False),
        ))

    def default(x: torch.Tensor, p: float) -> torch.Tensor:
        return DropBlock2d(drop_prob=p, block_size=block).train()(x)

    peers.append(_Peer("timm", f"timm DropBlock2d(p, {block}).train() {DEFAULT_TAG}", default))
    return peers


def _dropblock_package_peers(block: int) -> list[_Peer]:
    from dropblock import DropBlock2D

    def fn(x: torch.Tensor, p: float) -> torch.Tensor:
        return DropBlock2D(drop_prob=p, block_size=block).train()(x)

    return [_Peer("dropblock", f"dropblock.DropBlock2D(p, {block}).train() [shared channels]",
                  fn)]


def _dropblock_peers(
    block: int = PEER_BLOCK_SIZE,
) -> tuple[list[_Peer], dict[str, str], dict[str, str | None]]:
    """The installed DropBlock peers: ``(peers, absent, versions)``.

    ``absent`` maps each package that gives no row to the reason (not installed, or its import
    or adaptation failed); ``versions`` maps each importable package to its ``__version__``.
    """
    import importlib
    import importlib.util

    builders = {
        "torchvision": _torchvision_peers,
        "timm": _timm_peers,
        "dropblock": _dropblock_package_peers,
    }
    peers: list[_Peer] = []
    absent: dict[str, str] = {}
    versions: dict[str, str | None] = {}
    for name in PEER_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent[name] = f"{name} not installed"
            continue
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", None)
            peers += builders[name](block)
        except Exception as err:  # a broken or changed peer is a note, never a crash
            absent[name] = f"{name} unusable: {type(err).__name__}: {err}"
    return peers, absent, versions


def _dropkit_block_impl(block: int, per_channel: bool) -> str:
    return f"dropkit.functional.drop_block2d(x, p, {block}, per_channel={per_channel})"


def _cases(buf: torch.Tensor | None, cfg: _Config, peers: Sequence[_Peer] = ()) -> list[_Case]:
    """Every timed expression of ``cfg.ops``, in table order; ``buf`` is the reused buffer of
    the fill row (needed for the ``dropout`` op only)."""
    import torch
    import torch.nn.functional as F

    import dropkit.functional as DF

    def fresh_fill(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x).fill_(1)

    def drop_block(block: int, per_channel: bool) -> Callable[..., torch.Tensor]:
        return lambda x, p: DF.drop_block2d(x, p, block, per_channel=per_channel)

    def timm_style_drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
        # timm.layers.drop_path(x, p, training=True), written out in plain torch.
        if p == 0.0:
            return x
        keep = 1.0 - p
        noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0:
            noise.div_(keep)
        return x * noise

    dk_dropout: Callable[..., torch.Tensor] = DF.dropout
    dk_spatial: Callable[..., torch.Tensor] = DF.spatial_dropout2d
    dk_drop_path: Callable[..., torch.Tensor] = DF.drop_path
    cases = []
    for pass_, traffic in (("fwd", 2), ("fwd+bwd", 4)):
        cases += [
            _Case("dropout", pass_, "dropkit", "dropkit.functional.dropout", dk_dropout,
                  traffic, True),
            _Case("dropout", pass_, "torch", "F.dropout", F.dropout, traffic, True),
            _Case("dropout", pass_, "floor", "x * 2.0", lambda x, p: x * 2.0, traffic, True),
        ]
        if pass_ == "fwd":
            cases += [
                _Case("dropout", pass_, "floor", "x.clone()", lambda x, p: x.clone(), 2, True),
                _Case("dropout", pass_, "reference", "empty_like(x).fill_(1) [fresh alloc]",
                      lambda x, p: fresh_fill(x), 1, False),
                _Case("dropout", pass_, "reference", "buf.fill_(1) [reused buffer]",
                      lambda x, p: buf.fill_(1), 1, False),
            ]
    for pass_, traffic in (("fwd", 2), ("fwd+bwd", 4)):
        cases += [
            _Case("dropout2d", pass_, "dropkit", "dropkit.functional.spatial_dropout2d",
                  dk_spatial, traffic, True),
            _Case("dropout2d", pass_, "torch", "F.dropout2d", F.dropout2d, traffic, True),
        ]
    for pass_, traffic in (("fwd", 2), ("fwd+bwd", 4)):
        cases += [
            _Case("dropblock2d", pass_, "dropkit", _dropkit_block_impl(block, True),
                  drop_block(block, True), traffic, True, block)
            for block in cfg.block_sizes
        ]
        cases += [
            _Case("dropblock2d", pass_, "dropkit", _dropkit_block_impl(PEER_BLOCK_SIZE, False),
                  drop_block(PEER_BLOCK_SIZE, False), traffic, True, PEER_BLOCK_SIZE),
            _Case("dropblock2d", pass_, "floor", "x * 2.0", lambda x, p: x * 2.0, traffic, True),
        ]
        cases += [
            _Case("dropblock2d", pass_, peer.provider, peer.impl, peer.fn, traffic, True,
                  PEER_BLOCK_SIZE, peer=True)
            for peer in peers
        ]
    for pass_, traffic in (("fwd", 2), ("fwd+bwd", 4)):
        cases += [
            _Case("drop_path", pass_, "dropkit", "dropkit.functional.drop_path", dk_drop_path,
                  traffic, True),
            _Case("drop_path", pass_, "torch", DROP_PATH_REFERENCE, timm_style_drop_path,
                  traffic, True),
            _Case("drop_path", pass_, "floor", "x * 2.0", lambda x, p: x * 2.0, traffic, True),
        ]
    return [case for case in cases if case.op in cfg.ops]


def _time_case(
    case: _Case, x: torch.Tensor, g: torch.Tensor, p: float, warmup: int, repeat: int
) -> list[float]:
    """Milliseconds per call of one case: ``fn(x, p)``, or ``fn(leaf, p).backward(g)``."""
    fn = case.fn
    if case.pass_ == "fwd":
        return _time_ms(lambda: fn(x, p), lambda: None, warmup, repeat)
    leaf = x.detach().requires_grad_(True)

    def step() -> torch.Tensor:
        y = fn(leaf, p)
        y.backward(g)
        return y

    def reset() -> None:
        leaf.grad = None

    return _time_ms(step, reset, warmup, repeat)


def _measure(
    cfg: _Config,
    dtype_name: str,
    threads: int,
    peers: Sequence[_Peer] = (),
    notes: dict[str, str] | None = None,
) -> list[Row]:
    """All rows for one dtype, on one input tensor and one upstream gradient per shape.

    A peer whose call raises gets no row: the reason goes to ``notes`` (keyed by the peer's
    package) and is printed.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    buf = None
    if {"dropout", "dropout2d", "drop_path"} & set(cfg.ops):
        flat = torch.randn(cfg.numel, generator=gen).to(dtype)
        grad = torch.randn(cfg.numel, generator=gen).to(dtype)
        path_rows = math.gcd(cfg.numel, DROP_PATH_ROWS)
        for op, shape in (("dropout", (cfg.numel,)), ("dropout2d", cfg.shape),
                          ("drop_path", (path_rows, cfg.numel // path_rows))):
            inputs[op], grads[op] = flat.reshape(shape), grad.reshape(shape)
        if "dropout" in cfg.ops:
            buf = torch.empty_like(flat)
    if "dropblock2d" in cfg.ops:
        inputs["dropblock2d"] = torch.randn(cfg.dropblock_shape, generator=gen).to(dtype)
        grads["dropblock2d"] = torch.randn(cfg.dropblock_shape, generator=gen).to(dtype)
    rows: list[Row] = []
    for case in _cases(buf, cfg, peers):
        x = inputs[case.op]
        numel = x.numel()
        try:
            times = _time_case(case, x, grads[case.op], cfg.p, cfg.warmup, cfg.repeat)
            saved = _saved_bytes(case.fn, x, cfg.p) if case.saved else None
        except Exception as err:
            if not case.peer:
                raise
            note = f"{case.impl} failed ({dtype_name}, {case.pass_}): {type(err).__name__}: {err}"
            note = " ".join(note.split())  # one line
            print(f"note: {note}; row skipped", flush=True)
            if notes is not None:
                notes.setdefault(case.provider, note)
            continue
        median, best = statistics.median(times), min(times)
        traffic = case.traffic * x.element_size()
        rows.append(Row(
            op=case.op,
            pass_=case.pass_,
            provider=case.provider,
            impl=case.impl,
            dtype=dtype_name,
            numel=numel,
            shape=list(x.shape),
            p=cfg.p,
            threads=threads,
            median_ms=median,
            min_ms=best,
            traffic_bytes_per_element=traffic,
            gb_per_s=traffic * numel / (median * 1e-3) / 1e9 if median > 0 else math.inf,
            ratio_vs_torch=None,
            saved_bytes=saved,
            saved_bytes_per_element=None if saved is None else saved / numel,
            block_size=case.block_size,
        ))
    torch_ms = {(r.op, r.pass_): r.median_ms for r in rows if r.provider == "torch"}
    for r in rows:
        ref = torch_ms.get((r.op, r.pass_))
        if r.provider != "torch" and ref is not None and r.median_ms > 0:
            r.ratio_vs_torch = ref / r.median_ms
    return rows


# ----------------------------------------------------------------------------- targets


def _find(rows: Sequence[Row], **key: str) -> Row | None:
    for r in rows:
        if all(getattr(r, name) == value for name, value in key.items()):
            return r
    return None


def _dropblock_checks(
    rows: Sequence[Row], dtype: str, peer_notes: dict[str, str]
) -> list[dict[str, Any]]:
    """The DropBlock targets for one dtype; a peer without a row gives a check whose ``met`` is
    None ("not measured") and whose ``measured`` says why (never a made-up number)."""
    mine = [r for r in rows if r.op == "dropblock2d" and r.dtype == dtype]
    checks: list[dict[str, Any]] = []
    if not mine:
        return checks

    def per_channel(pass_: str) -> list[Row]:
        return [r for r in mine if r.provider == "dropkit" and r.pass_ == pass_
                and r.block_size is not None and r.impl == _dropkit_block_impl(r.block_size, True)]

    for pass_ in ("fwd", "fwd+bwd"):
        by_block = per_channel(pass_)
        if len(by_block) >= 2:
            fastest = min(by_block, key=lambda r: r.median_ms)
            slowest = max(by_block, key=lambda r: r.median_ms)
            spread = slowest.median_ms / fastest.median_ms
            blocks = ",".join(str(r.block_size) for r in by_block)
            checks.append({
                "dtype": dtype,
                "target": f"dropblock2d {pass_} (per_channel=True) time nearly independent of "
                          f"block size: max/min <= {TARGET_BLOCK_SPREAD:g}",
                "measured": f"{spread:.2f} over block sizes {blocks} "
                            f"({fastest.median_ms:.2f} ms at {fastest.block_size} .. "
                            f"{slowest.median_ms:.2f} ms at {slowest.block_size}, median)",
                "met": spread <= TARGET_BLOCK_SPREAD,
            })
    ours = next((r for r in per_channel("fwd+bwd") if r.block_size == PEER_BLOCK_SIZE), None)
    peer_targets = (
        ("torchvision", PER_CHANNEL_TAG, TARGET_VS_TORCHVISION,
         f">= {TARGET_VS_TORCHVISION:g}x faster than torchvision.ops.drop_block2d"),
        ("timm", PER_CHANNEL_TAG, TARGET_VS_TIMM_PER_CHANNEL,
         f">= {TARGET_VS_TIMM_PER_CHANNEL:g}x faster than timm's per-channel drop_block_2d "
         "(couple_channels=False)"),
        ("timm", DEFAULT_TAG, TARGET_VS_TIMM_DEFAULT,
         "never slower than timm's default DropBlock2d"),
    )
    for provider, tag, factor, text in peer_targets:
        check: dict[str, Any] = {
            "dtype": dtype,
            "target": f"dropblock2d fwd+bwd (per_channel=True, block {PEER_BLOCK_SIZE}) {text}",
        }
        theirs = next((r for r in mine if r.provider == provider and r.pass_ == "fwd+bwd"
                       and tag in r.impl), None)
        if theirs is None:
            reason = peer_notes.get(provider, f"no {provider} row with {tag}")
            check.update(measured=reason, met=None)
        elif ours is None:
            check.update(measured=f"block {PEER_BLOCK_SIZE} not in --block-sizes", met=None)
        else:
            speedup = theirs.median_ms / ours.median_ms
            check.update(
                measured=f"{speedup:.2f}x ({ours.median_ms:.2f} vs {theirs.median_ms:.2f} ms "
                         f"median, {theirs.impl})",
                met=speedup >= factor,
            )
        checks.append(check)
    return checks


def check_targets(
    rows: Sequence[Row], peer_notes: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The project's targets, evaluated per dtype on the measured rows (no tuning, just reading).

    The targets are stated for float32 on 2 cores with 2**24 elements (DropBlock: on
    (32, 256, 28, 28)) and p = 0.1; they are evaluated for whatever configuration ran, and the
    report says which one that was. ``peer_notes`` maps a DropBlock peer package without rows to
    the reason (e.g. "torchvision not installed"); its targets are then "not measured"
    (``met`` None).
    """
    checks: list[dict[str, Any]] = []
    for dtype in dict.fromkeys(r.dtype for r in rows):

        def get(op: str, pass_: str, provider: str, impl: str | None = None,
                dtype: str = dtype) -> Row | None:
            key = {"op": op, "pass_": pass_, "provider": provider, "dtype": dtype}
            if impl is not None:
                key["impl"] = impl
            return _find(rows, **key)

        dk_fb, t_fb = get("dropout", "fwd+bwd", "dropkit"), get("dropout", "fwd+bwd", "torch")
        if dk_fb and t_fb:
            speedup = t_fb.median_ms / dk_fb.median_ms
            checks.append({
                "dtype": dtype,
                "target": f"dropout fwd+bwd >= {TARGET_FWD_BWD_SPEEDUP:g}x faster than F.dropout",
                "measured": f"{speedup:.2f}x",
                "met": speedup >= TARGET_FWD_BWD_SPEEDUP,
            })
        dk_f, floor = get("dropout", "fwd", "dropkit"), get("dropout", "fwd", "floor", "x * 2.0")
        if dk_f and floor:
            factor = dk_f.median_ms / floor.median_ms
            checks.append({
                "dtype": dtype,
                "target": f"dropout fwd <= {TARGET_FWD_VS_FLOOR:g}x the time of x * 2.0",
                "measured": f"{factor:.2f}x",
                "met": factor <= TARGET_FWD_VS_FLOOR,
            })
        if dk_fb and dk_fb.saved_bytes is not None:
            checks.append({
                "dtype": dtype,
                "target": "0 bytes per element kept for backward (fixed-size key only)",
                "measured": f"{dk_fb.saved_bytes} B in total = "
                            f"{dk_fb.saved_bytes_per_element:.3g} B/element",
                # Per-element state would be >= numel bytes; a fixed-size key is O(1).
                "met": dk_fb.saved_bytes < dk_fb.numel
                and dk_fb.saved_bytes <= 64,
            })
        for pass_ in ("fwd", "fwd+bwd"):
            dk_s, t_s = get("dropout2d", pass_, "dropkit"), get("dropout2d", pass_, "torch")
            if dk_s and t_s:
                checks.append({
                    "dtype": dtype,
                    "target": f"spatial_dropout2d {pass_} never slower than F.dropout2d",
                    "measured": f"{t_s.median_ms / dk_s.median_ms:.2f}x "
                                f"({dk_s.median_ms:.2f} vs {t_s.median_ms:.2f} ms median)",
                    "met": dk_s.median_ms <= t_s.median_ms,
                })
        checks += _dropblock_checks(rows, dtype, peer_notes or {})
    return checks


# ------------------------------------------------------------------------------ reporting


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes compete for the cores)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment() -> dict[str, Any]:
    """Date, versions, CPU and thread counts of the machine the benchmark ran on."""
    import torch

    import dropkit
    from dropkit import kernels

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dropkit": dropkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_after_run": _load_average(),
        "torch_threads": torch.get_num_threads(),
        "dropkit_backend_setting": kernels.get_backend(),
        "dropkit_cpu_backend": kernels.for_device(torch.device("cpu")).__name__.rsplit(".")[-1],
        # glibc allocator settings: they decide whether a fresh output page-faults.
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }
    try:
        import numba

        env["numba"] = numba.__version__
        env["numba_threads"] = numba.get_num_threads()
        try:
            env["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            env["numba_threading_layer"] = None
    except ImportError:  # pragma: no cover - numba is a dependency
        env["numba"] = None
    return env


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = (
    ("op", "<"), ("pass", "<"), ("provider", "<"), ("impl", "<"), ("dtype", "<"),
    ("numel", ">"), ("p", ">"), ("thr", ">"), ("median ms", ">"), ("min ms", ">"),
    ("GB/s", ">"), ("torch/this", ">"), ("saved B", ">"), ("saved B/elem", ">"),
)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a plain-text table (one header line, a rule, one line per row)."""
    cells = [
        [
            r.op, r.pass_, r.provider, r.impl, r.dtype, str(r.numel), f"{r.p:g}", str(r.threads),
            f"{r.median_ms:.3f}", f"{r.min_ms:.3f}", f"{r.gb_per_s:.2f}",
            _fmt(r.ratio_vs_torch, ".2f"), _fmt(r.saved_bytes, "d"),
            _fmt(r.saved_bytes_per_element, ".3g"),
        ]
        for r in rows
    ]
    return _render(COLUMNS, cells, [(r.dtype, r.op, r.pass_) for r in rows])


def _render(
    columns: Sequence[tuple[str, str]], cells: Sequence[Sequence[str]], groups: Sequence[object]
) -> str:
    """A plain-text table: the header, a rule, then one line per row of ``cells``, with a blank
    line wherever the row's entry of ``groups`` changes. ``columns`` holds (name, alignment)."""
    names = [name for name, _ in columns]
    widths = [max(len(c[i]) for c in [names, *cells]) for i in range(len(names))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            f"{v:{align}{w}}" for v, (_, align), w in zip(values, columns, widths, strict=True)
        ).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    previous = None
    for group, c in zip(groups, cells, strict=True):
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(line(c))
    return "\n".join(out)


def format_checks(checks: Sequence[dict[str, Any]]) -> str:
    """The target checks, one per line (``met`` None: "[not measured] ... (reason)")."""
    return "\n".join(
        f"[not measured] {c['dtype']}: {c['target']} ({c['measured']})" if c["met"] is None
        else f"[{'met' if c['met'] else 'MISSED'}] {c['dtype']}: {c['target']}: {c['measured']}"
        for c in checks
    )


# ---------------------------------------------------------------- GPU suite (--device cuda)


@dataclass
class GpuRow:
    """One measured line of the GPU suite (``dropkit bench --device cuda``)."""

    suite: str  # "dropout", "sweep", "bias_dropout_add" or "dropblock2d"
    pass_: str  # "copy", "fwd", "bwd" or "fwd+bwd"
    provider: str  # "copy", "dropkit", "torch", "torch.compile", "torchvision" or "timm"
    impl: str  # the expression that was timed
    dtype: str
    shape: list[int]  # of x (bias_dropout_add: of x and residual; the bias is (hidden,))
    numel: int
    p: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeat: int  # timed calls
    traffic_bytes_per_element: int  # compulsory bytes counted for GB/s
    gb_per_s: float
    pct_of_copy: float | None = None  # 100 * GB/s over the same-run y.copy_(x) on this tensor
    saved_bytes: int | None = None  # bytes autograd keeps for backward after one forward
    saved_bytes_per_element: float | None = None
    # dropkit rows: impl of each peer -> peer median / this median (> 1: dropkit is faster)
    speedup: dict[str, float] = field(default_factory=dict)
    dropkit_speedup: float | None = None  # peer rows: this median / dropkit's median


@dataclass
class GpuConfig:
    """What the GPU suite measures; every size is explicit, so tests can run it on CPU."""

    device: str
    dtypes: list[str]
    size_bytes: int  # per tensor of the "dropout" suite (numel = size_bytes // element size)
    p: float = 0.1
    warmup: int = GPU_WARMUP
    repeat: int = GPU_REPEAT
    suites: list[str] = field(default_factory=lambda: list(GPU_SUITES))
    sweep: list[int] = field(default_factory=lambda: list(GPU_SWEEP))  # exponents: 2**e elements
    bda_shape: tuple[int, int] = GPU_BDA_SHAPE
    dropblock_shapes: list[tuple[int, ...]] = field(
        default_factory=lambda: list(GPU_DROPBLOCK_SHAPES))
    block_size: int = PEER_BLOCK_SIZE
    compile_backend: str | None = GPU_COMPILE_BACKEND  # None: no torch.compile rows
    json_path: str | None = None


@dataclass
class _GpuCase:
    provider: str
    impl: str
    forward: Callable[..., torch.Tensor]  # forward(*inputs) -> output
    peer: bool = True  # another implementation: a failing call is a note, not a crash


def _gpu_config(args: argparse.Namespace) -> GpuConfig:
    """Validate the parsed arguments of ``--device cuda``; every problem is a one-line
    ValueError."""
    _only_with(args, CPU_ONLY_OPTIONS, "only to the CPU benchmark (not with --device cuda)")
    quick = bool(args.quick)
    size = (GPU_QUICK_SIZE_MIB if quick else GPU_SIZE_MIB) if args.size is None else args.size
    if not (math.isfinite(size) and size * 2**20 >= 8):
        raise ValueError(f"`--size` must be a finite number of MiB, at least 8 bytes, got "
                         f"{size}.")
    _check_p(args.p)
    repeat = args.repeat if args.repeat is not None else (
        GPU_QUICK_REPEAT if quick else GPU_REPEAT)
    warmup = args.warmup if args.warmup is not None else (
        GPU_QUICK_WARMUP if quick else GPU_WARMUP)
    _check_repeat_warmup(repeat, warmup)
    if args.dropblock_shape is not None:
        dropblock_shapes = [_parse_shape(args.dropblock_shape, "--dropblock-shape")]
    else:
        batch = GPU_QUICK_DROPBLOCK_BATCH if quick else None
        dropblock_shapes = [(batch or n, c, h, w) for n, c, h, w in GPU_DROPBLOCK_SHAPES]
    if args.bda_shape is not None:
        rows, hidden = _parse_shape(args.bda_shape, "--bda-shape", ("ROWS", "HIDDEN"))
    else:
        rows, hidden = GPU_QUICK_BDA_SHAPE if quick else GPU_BDA_SHAPE
    backend = GPU_COMPILE_BACKEND if args.compile_backend is None else args.compile_backend
    return GpuConfig(
        device=args.device,
        dtypes=_parse_dtypes(",".join(GPU_DTYPES) if args.dtype is None else args.dtype),
        size_bytes=int(size * 2**20),
        p=float(args.p),
        warmup=warmup,
        repeat=repeat,
        suites=_parse_ops(args.ops, GPU_SUITES),
        sweep=_parse_sweep(args.sweep) if args.sweep is not None
        else list(GPU_QUICK_SWEEP if quick else GPU_SWEEP),
        bda_shape=(rows, hidden),
        dropblock_shapes=dropblock_shapes,
        compile_backend=None if backend == "none" else backend,
        json_path=args.json,
    )


def _bench_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; a one-line ValueError for anything
    else and for CUDA when it is not available (exit code 2)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"`--device` must be cpu or cuda[:N], got {name!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`--device {name}` was asked, but CUDA is not available (torch "
                         f"{torch.__version__}); the GPU benchmark needs a CUDA GPU, use "
                         "--device cpu for the CPU one.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"`--device {name}`: there are only {torch.cuda.device_count()} CUDA "
                         "device(s).")
    return device


def cuda_event_timer(
    call: Callable[[], object], reset: Callable[[], None], warmup: int, repeat: int
) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``call`` after ``warmup`` untimed ones, each timed
    with a pair of CUDA events recorded on the current stream around it (the contract of the
    wall-clock :func:`_time_ms`).

    ``reset`` runs before every call, outside the timed region. The host synchronizes only
    after the warm-up and after the last call (never between timed calls); for tiny tensors the
    events therefore also measure launch overhead whenever the GPU waits for the host. Only
    exercised on a GPU (the tests replace the events with stand-ins).
    """
    import torch

    for _ in range(warmup):
        reset()
        call()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeat)]
    for start, stop in events:
        reset()
        start.record()
        out = call()
        stop.record()
        del out
    torch.cuda.synchronize()
    reset()
    return [start.elapsed_time(stop) for start, stop in events]


def timer_for(device: torch.device) -> Timer:
    """CUDA events on a CUDA device, the wall clock (:func:`_time_ms`) elsewhere."""
    return cuda_event_timer if device.type == "cuda" else _time_ms


def _nothing() -> None:
    pass


def _note(notes: list[str], text: str) -> None:
    """Print ``text`` as a note and keep it (once) for the JSON report."""
    text = " ".join(text.split())  # one line
    if text not in notes:
        notes.append(text)
        print(f"note: {text}", flush=True)


def _package_version(*names: str) -> str | None:
    """The installed version of the first distribution of ``names`` found (None if none)."""
    import importlib.metadata

    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _installed(module: str, attr: str, needs: str | None = None) -> tuple[Any, str]:
    """``(module.attr, "package version")`` when it imports (and takes the parameter
    ``needs``); else ``(None, why not)``."""
    import importlib
    import importlib.util
    import inspect

    package = module.split(".")[0]
    try:
        if importlib.util.find_spec(package) is None:
            return None, f"{package} not installed"
        fn = getattr(importlib.import_module(module), attr)
        if needs is not None and needs not in inspect.signature(fn).parameters:
            return None, f"{package}'s {attr} has no `{needs}` parameter (an older release)"
        version = getattr(importlib.import_module(package), "__version__", None)
        return fn, f"{package} {version}"
    except Exception as err:  # a broken peer is a copy's row, never a crash
        return None, f"{package} unusable: {type(err).__name__}: {err}"


def _gpu_dropblock_peers(
    block: int,
) -> tuple[list[tuple[str, str, Callable[..., torch.Tensor]]], dict[str, str]]:
    """``([(provider, impl, fn(x, p)), ...], sources)``: torchvision's ``drop_block2d``, timm's
    ``drop_block_2d`` with one mask per channel and with its default coupled channels.

    The installed packages are used when they import (timm: a release with
    ``couple_channels``); otherwise the copies of :mod:`dropkit.cli._peers`, with ``impl``
    ending in "(copied code)". ``sources`` says, per package, what is timed and why.
    """
    from . import _peers

    tv, tv_source = _installed("torchvision.ops", "drop_block2d")
    timm, timm_source = _installed("timm.layers", "drop_block_2d", "couple_channels")
    tv_fn = tv or _peers.torchvision_drop_block2d
    timm_fn = timm or _peers.timm_drop_block_2d
    tv_tag = "" if tv else f" {COPIED}"
    timm_tag = "" if timm else f" {COPIED}"
    sources = {
        "torchvision": tv_source if tv else f"{COPIED} dropkit.cli._peers ({tv_source})",
        "timm": timm_source if timm else f"{COPIED} dropkit.cli._peers ({timm_source})",
    }
    peers = [
        ("torchvision", f"torchvision.ops.drop_block2d(x, p, {block}) {PER_CHANNEL_TAG}{tv_tag}",
         lambda x, p: tv_fn(x, p, block, inplace=False, eps=1e-06, training=True)),
        ("timm", f"timm drop_block_2d(x, p, {block}, couple_channels=False) "
                 f"{PER_CHANNEL_TAG}{timm_tag}",
         lambda x, p: timm_fn(x, p, block, couple_channels=False)),
        ("timm", f"timm drop_block_2d(x, p, {block}) {DEFAULT_TAG}{timm_tag}",
         lambda x, p: timm_fn(x, p, block)),
    ]
    return peers, sources


def _compiled(fn: Callable[..., torch.Tensor], backend: str) -> Callable[..., torch.Tensor]:
    """``torch.compile(fn)`` with static shapes, after resetting dynamo's caches (every size and
    dtype gets its own specialized graph; no recompile limit is reached over the sweep)."""
    import torch

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, dynamic=False)


def _suite_cases(
    suite: str,
    cfg: GpuConfig,
    peers: Sequence[tuple[str, str, Callable[..., torch.Tensor]]],
    notes: list[str],
) -> list[_GpuCase]:
    """dropkit's case (first) and its peers' for one suite; built anew for every tensor (the
    compiled peers are compiled for it)."""
    import torch.nn.functional as F

    import dropkit.functional as DF

    p, backend = cfg.p, cfg.compile_backend
    cases: list[_GpuCase] = []
    if suite in ("dropout", "sweep"):
        def torch_dropout(x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x, p, training=True)

        cases += [
            _GpuCase("dropkit", "dropkit.functional.dropout(x, p)", lambda x: DF.dropout(x, p),
                     peer=False),
            _GpuCase("torch", "F.dropout(x, p)", torch_dropout),
        ]
        if backend is not None:
            cases.append(_GpuCase("torch.compile", f"torch.compile(F.dropout) [{backend}]",
                                  _compiled(torch_dropout, backend)))
    elif suite == "bias_dropout_add":
        fused = getattr(DF, "bias_dropout_add", None)
        if fused is None:
            _note(notes, "dropkit.functional.bias_dropout_add is not available in this build: "
                         "no dropkit bias_dropout_add row (its target is not measured)")
        else:
            cases.append(_GpuCase(
                "dropkit", "dropkit.functional.bias_dropout_add(x, bias, residual, p)",
                lambda x, b, r: fused(x, b, r, p, True), peer=False))

        def unfused(x: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return r + F.dropout(x + b, p, training=True)

        cases.append(_GpuCase("torch", "residual + F.dropout(x + bias, p) [eager]", unfused))
        if backend is not None:
            cases.append(_GpuCase(
                "torch.compile", f"torch.compile(residual + F.dropout(x + bias, p)) [{backend}]",
                _compiled(unfused, backend)))
    elif suite == "dropblock2d":
        block = cfg.block_size
        cases.append(_GpuCase("dropkit", f"dropkit.functional.drop_block2d(x, p, {block})",
                              lambda x: DF.drop_block2d(x, p, block), peer=False))
        cases += [_GpuCase(provider, impl, lambda x, fn=fn: fn(x, p))
                  for provider, impl, fn in peers]
    else:
        raise ValueError(f"unknown GPU suite {suite!r}")
    return cases


def _suite_shapes(suite: str, cfg: GpuConfig, element_size: int) -> list[tuple[int, ...]]:
    """The shapes of x a suite is measured on, for one element size."""
    if suite == "dropout":
        return [(max(1, cfg.size_bytes // element_size),)]
    if suite == "sweep":
        return [(2**e,) for e in cfg.sweep]
    if suite == "bias_dropout_add":
        return [tuple(cfg.bda_shape)]
    return [tuple(shape) for shape in cfg.dropblock_shapes]


def _gpu_inputs(
    suite: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(inputs, upstream gradient)``: ``[x]``, or ``[x, bias, residual]`` for
    bias_dropout_add (``bias`` of shape ``(hidden,)``), standard normal, seeded."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, device=device, dtype=dtype)

    inputs = [randn(*shape)]
    if suite == "bias_dropout_add":
        inputs += [randn(shape[-1]), randn(*shape)]
    return inputs, randn(*shape)


def _time_gpu_pass(
    forward: Callable[..., torch.Tensor],
    leaves: Sequence[torch.Tensor],
    grad: torch.Tensor,
    pass_: str,
    timer: Timer,
    warmup: int,
    repeat: int,
) -> list[float]:
    """Milliseconds per call of one pass on ``leaves`` (inputs that require grad, as in
    training): ``fwd`` times ``forward(*leaves)``; ``bwd`` times
    ``torch.autograd.grad(y, leaves, grad, retain_graph=True)`` on one forward's ``y``;
    ``fwd+bwd`` times ``forward(*leaves).backward(grad)`` (``.grad`` reset outside the timing).
    """
    import torch

    if pass_ == "fwd":
        return timer(lambda: forward(*leaves), _nothing, warmup, repeat)
    if pass_ == "bwd":
        y = forward(*leaves)
        return timer(lambda: torch.autograd.grad(y, leaves, grad, retain_graph=True), _nothing,
                     warmup, repeat)

    def step() -> torch.Tensor:
        y = forward(*leaves)
        y.backward(grad)
        return y

    def reset() -> None:
        for leaf in leaves:
            leaf.grad = None

    return timer(step, reset, warmup, repeat)


def _gpu_row(
    suite: str, pass_: str, case: _GpuCase | None, dtype: str, x: torch.Tensor, p: float,
    times: Sequence[float], saved: int | None,
) -> GpuRow:
    """A row from the timed milliseconds (``case`` None: the copy row)."""
    median = statistics.median(times)
    if len(times) >= 2:
        deciles = statistics.quantiles(times, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = times[0]
    units = (BDA_TRAFFIC if suite == "bias_dropout_add" else GPU_TRAFFIC)[pass_]
    traffic = units * x.element_size()
    numel = x.numel()
    return GpuRow(
        suite=suite, pass_=pass_,
        provider="copy" if case is None else case.provider,
        impl="y.copy_(x)" if case is None else case.impl,
        dtype=dtype, shape=list(x.shape), numel=numel, p=p,
        median_ms=median, p10_ms=p10, p90_ms=p90, repeat=len(times),
        traffic_bytes_per_element=traffic,
        gb_per_s=traffic * numel / (median * 1e-3) / 1e9 if median > 0 else math.inf,
        saved_bytes=saved,
        saved_bytes_per_element=None if saved is None else saved / numel,
    )


def _measure_gpu_group(
    suite: str,
    dtype: str,
    inputs: Sequence[torch.Tensor],
    grad: torch.Tensor,
    cases: Sequence[_GpuCase],
    cfg: GpuConfig,
    timer: Timer,
    notes: list[str],
) -> list[GpuRow]:
    """The rows of one suite on one set of tensors: ``y.copy_(x)`` first (the bandwidth the
    ``% copy`` column divides by), then every case and pass, on the same tensors.

    A peer whose call raises gets no row for this tensor; the reason is a note.
    """
    import torch

    x = inputs[0]
    out = torch.empty_like(x)
    times = timer(functools.partial(out.copy_, x), _nothing, cfg.warmup, cfg.repeat)
    del out
    rows = [_gpu_row(suite, "copy", None, dtype, x, cfg.p, times, None)]
    where = f"{dtype}, shape {tuple(x.shape)}"
    for case in cases:
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        try:
            timed = [(pass_, _time_gpu_pass(case.forward, leaves, grad, pass_, timer,
                                            cfg.warmup, cfg.repeat))
                     for pass_ in GPU_PASSES[suite]]
        except Exception as err:
            if not case.peer:
                raise
            _note(notes, f"{case.impl} failed ({where}): {type(err).__name__}: {err}; "
                         "row skipped")
            continue
        try:  # after the timing: hooks must not change what is timed
            saved: int | None = _saved_bytes_of(functools.partial(case.forward, *leaves))
        except Exception as err:
            if not case.peer:
                raise
            _note(notes, f"{case.impl}: saved bytes not measured ({where}): "
                         f"{type(err).__name__}: {err}")
            saved = None
        rows += [_gpu_row(suite, pass_, case, dtype, x, cfg.p, times, saved)
                 for pass_, times in timed]
    return rows


def link_gpu_rows(rows: Sequence[GpuRow]) -> None:
    """Fill in, in place, the columns that compare rows of one run.

    ``pct_of_copy``: ``100 * gb_per_s`` over the GB/s of the copy row of the same suite, dtype
    and shape. ``dropkit_speedup`` (peer rows) and ``speedup`` (dropkit rows, one entry per
    peer ``impl``): the peer's median over dropkit's for the same suite, dtype, shape and pass.
    """
    def key(r: GpuRow) -> tuple[Any, ...]:
        return r.suite, r.dtype, tuple(r.shape)

    copies = {key(r): r for r in rows if r.provider == "copy"}
    ours = {(*key(r), r.pass_): r for r in rows if r.provider == "dropkit"}
    for r in rows:
        copy = copies.get(key(r))
        if copy is not None and 0 < copy.gb_per_s < math.inf:
            r.pct_of_copy = 100.0 * r.gb_per_s / copy.gb_per_s
        mine = ours.get((*key(r), r.pass_))
        if mine is not None and r.provider not in ("dropkit", "copy") and mine.median_ms > 0:
            r.dropkit_speedup = r.median_ms / mine.median_ms
            mine.speedup[r.impl] = r.dropkit_speedup


def measure_gpu(
    cfg: GpuConfig,
    timer: Timer,
    notes: list[str] | None = None,
    peers: Sequence[tuple[str, str, Callable[..., torch.Tensor]]] | None = None,
) -> list[GpuRow]:
    """Every row of the GPU suite on ``cfg.device``, timed by ``timer``
    (:func:`cuda_event_timer` on a GPU; :func:`_time_ms` or a stand-in on CPU).

    Order: suite, dtype, shape; within one shape the copy row, then dropkit, then its peers,
    every pass of a case on the same tensors. ``peers`` defaults to
    :func:`_gpu_dropblock_peers`; notes (skipped rows, missing functions) go to ``notes``.
    """
    import torch

    notes = [] if notes is None else notes
    device = torch.device(cfg.device)
    if peers is None:
        peers = _gpu_dropblock_peers(cfg.block_size)[0] if "dropblock2d" in cfg.suites else []
    rows: list[GpuRow] = []
    for suite in cfg.suites:
        for dtype_name in cfg.dtypes:
            dtype = getattr(torch, dtype_name)
            element_size = torch.empty((), dtype=dtype).element_size()
            for shape in _suite_shapes(suite, cfg, element_size):
                inputs, grad = _gpu_inputs(suite, shape, dtype, device)
                cases = _suite_cases(suite, cfg, peers, notes)
                rows += _measure_gpu_group(suite, dtype_name, inputs, grad, cases, cfg, timer,
                                           notes)
                del inputs, grad, cases
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    link_gpu_rows(rows)
    return rows


def _speedup_check(
    dtype: str, target: str, ours: GpuRow | None, theirs: GpuRow | None, factor: float,
    peer: str,
) -> dict[str, Any]:
    """``met`` is ``theirs / ours >= factor`` on the medians; None (not measured) when a row is
    missing (``peer`` names the missing peer)."""
    check: dict[str, Any] = {"dtype": dtype, "target": target}
    if ours is None or theirs is None:
        missing = "dropkit" if ours is None else peer
        return {**check, "measured": f"no {missing} row (not run, or see the notes)",
                "met": None}
    speedup = theirs.median_ms / ours.median_ms
    return {**check, "measured": f"{speedup:.2f}x ({ours.median_ms:.4f} vs "
                                 f"{theirs.median_ms:.4f} ms median, {theirs.impl})",
            "met": speedup >= factor}


def check_gpu_targets(rows: Sequence[GpuRow]) -> list[dict[str, Any]]:
    """The issue's GPU targets, evaluated on the measured rows (reading only, per dtype).

    dropout fwd and bwd >= 90% of the copy bandwidth; fwd+bwd >= 1.10x (float32) / 1.20x
    (bfloat16, float16) faster than ``F.dropout`` and never slower than ``torch.compile``d
    dropout, at the main size and (never slower than either) at every swept size;
    bias_dropout_add (bfloat16) >= 2x the unfused eager expression; DropBlock fwd+bwd >= 3x
    torchvision and >= 2x timm's per-channel DropBlock at every shape. A check whose rows are
    missing has ``met`` None.
    """
    checks: list[dict[str, Any]] = []
    names = {"torch": "F.dropout", "torch.compile": "torch.compile(F.dropout)"}
    for dtype in dict.fromkeys(r.dtype for r in rows):
        mine = [r for r in rows if r.dtype == dtype]

        def get(suite: str, pass_: str, provider: str, tag: str = "",
                shape: list[int] | None = None, mine: list[GpuRow] = mine) -> GpuRow | None:
            return next((r for r in mine if (r.suite, r.pass_, r.provider) == (suite, pass_,
                         provider) and tag in r.impl and shape in (None, r.shape)), None)

        for pass_ in ("fwd", "bwd"):
            ours = get("dropout", pass_, "dropkit")
            if ours is not None and ours.pct_of_copy is not None:
                checks.append({
                    "dtype": dtype,
                    "target": f"dropout {pass_} >= {TARGET_GPU_COPY_PCT:g}% of the same-run "
                              "y.copy_(x) bandwidth (2 x element size bytes per element)",
                    "measured": f"{ours.pct_of_copy:.1f}% ({ours.gb_per_s:.1f} GB/s)",
                    "met": ours.pct_of_copy >= TARGET_GPU_COPY_PCT,
                })
        for provider, name in names.items():
            factor = TARGET_GPU_VS_TORCH.get(dtype, 1.0) if provider == "torch" \
                else TARGET_GPU_VS_COMPILE
            ours, theirs = get("dropout", "fwd+bwd", "dropkit"), get("dropout", "fwd+bwd",
                                                                        provider)
            if ours is not None or theirs is not None:
                checks.append(_speedup_check(
                    dtype, f"dropout fwd+bwd >= {factor:g}x faster than {name}", ours, theirs,
                    factor, provider))
            pairs = [(r, get("sweep", "fwd+bwd", provider, shape=r.shape)) for r in mine
                     if (r.suite, r.pass_, r.provider) == ("sweep", "fwd+bwd", "dropkit")]
            pairs = [(a, b) for a, b in pairs if b is not None]
            if pairs:
                worst_ours, worst = min(pairs, key=lambda ab: ab[1].median_ms / ab[0].median_ms)
                sizes = ",".join(f"2^{int(math.log2(a.numel))}" for a, _ in pairs)
                check = _speedup_check(dtype, f"dropout fwd+bwd never slower than {name} at any "
                                              f"swept size ({sizes})", worst_ours, worst, 1.0,
                                       provider)
                check["measured"] = f"min {check['measured']} at 2^{int(math.log2(worst.numel))}"
                checks.append(check)
        ours, theirs = get("bias_dropout_add", "fwd+bwd", "dropkit"), get(
            "bias_dropout_add", "fwd+bwd", "torch")
        if dtype == "bfloat16" and (ours is not None or theirs is not None):
            checks.append(_speedup_check(
                dtype, f"bias_dropout_add fwd+bwd >= {TARGET_GPU_BDA:g}x faster than "
                       "residual + F.dropout(x + bias, p) (eager)", ours, theirs,
                TARGET_GPU_BDA, "eager"))
        shapes = [r.shape for r in mine if (r.suite, r.provider) == ("dropblock2d", "copy")]
        for shape in shapes:
            ours = get("dropblock2d", "fwd+bwd", "dropkit", shape=shape)
            for provider, factor in (("torchvision", TARGET_GPU_VS_TORCHVISION),
                                     ("timm", TARGET_GPU_VS_TIMM)):
                theirs = get("dropblock2d", "fwd+bwd", provider, PER_CHANNEL_TAG, shape)
                checks.append(_speedup_check(
                    dtype, f"drop_block2d fwd+bwd {tuple(shape)} >= {factor:g}x faster than "
                           f"{provider}'s per-channel DropBlock", ours, theirs, factor,
                    provider))
    return checks


def gpu_environment(device: torch.device) -> dict[str, Any]:
    """Date, GPU, torch, triton and dropkit versions of the machine the GPU suite ran on."""
    import torch

    import dropkit
    from dropkit import kernels

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": None,
        "gpu_capability": None,
        "gpu_memory_gib": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _package_version("triton", "pytorch-triton"),
        "dropkit": dropkit.__version__,
        "dropkit_kernels": kernels.for_device(device).__name__.rsplit(".")[-1],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return env


GPU_COLUMNS = (
    ("suite", "<"), ("pass", "<"), ("provider", "<"), ("impl", "<"), ("dtype", "<"),
    ("shape", "<"), ("median ms", ">"), ("p10 ms", ">"), ("p90 ms", ">"), ("GB/s", ">"),
    ("% copy", ">"), ("saved B", ">"), ("saved B/elem", ">"), ("dropkit x", ">"),
)


def format_gpu_table(rows: Sequence[GpuRow]) -> str:
    """The GPU rows as a plain-text table, a blank line between suites, dtypes and shapes."""
    cells = [
        [
            r.suite, r.pass_, r.provider, r.impl, r.dtype, "x".join(map(str, r.shape)),
            f"{r.median_ms:.4f}", f"{r.p10_ms:.4f}", f"{r.p90_ms:.4f}", f"{r.gb_per_s:.1f}",
            _fmt(r.pct_of_copy, ".1f"), _fmt(r.saved_bytes, "d"),
            _fmt(r.saved_bytes_per_element, ".3g"), _fmt(r.dropkit_speedup, ".2f"),
        ]
        for r in rows
    ]
    return _render(GPU_COLUMNS, cells, [(r.suite, r.dtype, tuple(r.shape)) for r in rows])


GPU_LEGEND = (
    "GB/s counts compulsory bytes per element: 2 x element size per pass (copy, fwd, bwd), 4x "
    "for fwd+bwd; bias_dropout_add 3x (fwd), 2x (bwd), 5x (fwd+bwd).\n"
    "% copy: this row's GB/s over y.copy_(x) on the same tensor in this run. dropkit x: this "
    "row's median over dropkit's (same suite, dtype, shape, pass; > 1: dropkit is faster).\n"
    "saved: bytes autograd keeps for backward after one forward (saved_tensors_hooks). Timing: "
    "CUDA events around each call after warm-up; inputs require grad, as in training."
)


def _gpu_header(cfg: GpuConfig, env: dict[str, Any]) -> str:
    sweep = ",".join(f"2^{e}" for e in cfg.sweep)
    blocks = " ".join("x".join(map(str, s)) for s in cfg.dropblock_shapes)
    return (
        f"dropkit bench --device {cfg.device}: date={env['date']} gpu={env['gpu']} "
        f"torch={env['torch']} triton={env['triton']} cuda={env['cuda']} "
        f"dropkit={env['dropkit']} ({env['dropkit_kernels']} kernels)\n"
        f"suites={','.join(cfg.suites)} dtypes={','.join(cfg.dtypes)} p={cfg.p:g} "
        f"warmup={cfg.warmup} repeat={cfg.repeat} dropout tensors={cfg.size_bytes / 2**20:g} MiB "
        f"sweep={sweep} bias_dropout_add shape={'x'.join(map(str, cfg.bda_shape))} "
        f"dropblock shapes={blocks} block={cfg.block_size} "
        f"torch.compile={cfg.compile_backend}"
    )


def _run_gpu(args: argparse.Namespace, device: torch.device) -> int:
    """``dropkit bench --device cuda``: measure, print the table and targets, write JSON.

    ``device`` may also be the CPU (the tests do that: wall-clock timing, no GPU name).
    """
    import torch

    cfg = _gpu_config(args)
    if cfg.json_path is not None:  # fail before minutes of timing, not after
        check_writable_file(Path(cfg.json_path))
    notes: list[str] = []
    peers: list[tuple[str, str, Callable[..., torch.Tensor]]] = []
    env = gpu_environment(device)
    if "dropblock2d" in cfg.suites:
        peers, env["dropblock_peers"] = _gpu_dropblock_peers(cfg.block_size)
    print(_gpu_header(cfg, env), flush=True)
    for package, source in env.get("dropblock_peers", {}).items():
        if source.startswith(COPIED):
            _note(notes, f"{package} rows time {source}")
    if cfg.repeat < GPU_MIN_REPEAT:
        _note(notes, f"--repeat {cfg.repeat} is below {GPU_MIN_REPEAT}: the targets ask for "
                     f"the median of at least {GPU_MIN_REPEAT} calls")
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        rows = measure_gpu(cfg, timer_for(device), notes, peers)
    checks = check_gpu_targets(rows)
    print(format_gpu_table(rows))
    print()
    print(GPU_LEGEND)
    print("Targets (stated for an NVIDIA H200 at the default sizes, p=0.1):")
    print(format_checks(checks))
    if cfg.json_path is not None:
        config = asdict(cfg)
        del config["json_path"]
        report = {"config": config, "environment": env, "rows": [_row_json(r) for r in rows],
                  "targets": checks, "notes": notes}
        with open(cfg.json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        print(f"wrote {cfg.json_path}")
    return 0



# ------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table, optionally write JSON.

    ``--device cuda[:N]`` runs the GPU suite (:func:`_run_gpu`); CPU (the default) the CPU
    benchmark.
    """
    device_name = getattr(args, "device", None) or "cpu"
    if device_name.strip() != "cpu":
        device = _bench_device(device_name.strip())
        if device.type == "cuda":
            return _run_gpu(args, device)
    cfg = _config(args)
    if cfg.json_path is not None:  # fail before minutes of timing, not after
        check_writable_file(Path(cfg.json_path))
    import torch

    import dropkit

    load_before = _load_average()
    old_threads, old_backend = torch.get_num_threads(), dropkit.get_backend()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        dropkit.set_backend(cfg.backend)
        threads = torch.get_num_threads()
        print(
            f"dropkit bench: ops={','.join(cfg.ops)} numel={cfg.numel} "
            f"spatial shape={tuple(cfg.shape)} dropblock shape={tuple(cfg.dropblock_shape)} "
            f"block sizes={','.join(map(str, cfg.block_sizes))} p={cfg.p:g} "
            f"threads={threads} dtypes={','.join(cfg.dtypes)} warmup={cfg.warmup} "
            f"repeat={cfg.repeat} backend={cfg.backend} load average before={load_before}",
            flush=True,
        )
        peers: list[_Peer] = []
        peer_notes: dict[str, str] = {}
        peer_versions: dict[str, str | None] = {}
        if "dropblock2d" in cfg.ops:
            peers, peer_notes, peer_versions = _dropblock_peers(PEER_BLOCK_SIZE)
            missing = [name for name, why in peer_notes.items() if why.endswith("not installed")]
            if missing:
                print(f"note: dropblock2d peers not installed (no rows, targets not measured): "
                      f"{', '.join(missing)}", flush=True)
            for name, why in peer_notes.items():
                if name not in missing:
                    print(f"note: {why}", flush=True)
        rows: list[Row] = []
        for dtype_name in cfg.dtypes:
            rows += _measure(cfg, dtype_name, threads, peers, peer_notes)
        env = environment()
        env["load_average_before_run"] = load_before
        if "dropblock2d" in cfg.ops:
            env["dropblock_peers"] = peer_versions
    finally:
        torch.set_num_threads(old_threads)
        dropkit.set_backend(old_backend)
    checks = check_targets(rows, peer_notes)
    print(format_table(rows))
    print()
    print("torch/this: torch's median over this row's median for the same op and pass "
          "(> 1: faster than torch).")
    print("GB/s counts 2*element_size bytes per element per pass (fill references: 1).")
    print("Targets (stated for float32, 2 cores, p=0.1, 2**24 elements; "
          f"DropBlock: {DEFAULT_DROPBLOCK_SHAPE}, per_channel=True):")
    print(format_checks(checks))
    if cfg.json_path is not None:
        report = {
            "config": {
                "numel": cfg.numel, "shape": list(cfg.shape), "p": cfg.p,
                "dtypes": cfg.dtypes, "threads": threads, "warmup": cfg.warmup,
                "repeat": cfg.repeat, "backend": cfg.backend, "ops": cfg.ops,
                "dropblock_shape": list(cfg.dropblock_shape), "block_sizes": cfg.block_sizes,
            },
            "environment": env,
            "rows": [_row_json(r) for r in rows],
            "targets": checks,
            "notes": list(peer_notes.values()),
        }
        with open(cfg.json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        print(f"wrote {cfg.json_path}")
    return 0


def _row_json(row: Row | GpuRow) -> dict[str, Any]:
    data = asdict(row)
    data["pass"] = data.pop("pass_")
    return data


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on argparse's subparsers object ``sub``."""
    gpu = "with --device cuda: "
    parser = sub.add_parser(
        "bench",
        help="time dropkit against torch's dropout and peers on the same tensors (CPU or GPU)",
        description=(
            "Time dropkit's dropout and spatial_dropout2d against torch.nn.functional's on the "
            "same CPU tensors (forward, forward+backward), with memory-bound floors, and "
            "measure the bytes autograd keeps for backward; also DropBlock (against "
            "torchvision, timm and the dropblock package when installed) and DropPath. With "
            "--device cuda: the GPU suite (CUDA events; dropout against the same-run copy "
            "bandwidth, F.dropout and torch.compile over a size sweep; bias_dropout_add "
            "against the unfused expression; DropBlock against torchvision and timm)."
        ),
        epilog=(
            "Examples: dropkit bench --ops dropout --dtype float32,bfloat16 --threads 2; "
            "dropkit bench --numel 65536 --repeat 5 --json bench.json; "
            "dropkit bench --device cuda --json bench-gpu.json; dropkit bench --device cuda "
            "--quick. Exit status: 0 when the table is printed, 1 when --json cannot be "
            "written, 2 for bad arguments (also --device cuda without CUDA)."
        ),
    )
    add_device(parser, what="where to run: cpu (the CPU benchmark) or cuda[:N] (the GPU suite)")
    parser.add_argument("--numel", type=int, default=None, metavar="N",
                        help=f"CPU: elements per tensor, an int >= 1 (default: {DEFAULT_NUMEL} "
                             "= 2**24, or the product of --shape)")
    parser.add_argument("--shape", default=None, metavar="N,C,H,W",
                        help="CPU: spatial-dropout shape (default: (32, 256, 32, 64) for 2**24 "
                             "elements, else derived from --numel)")
    add_p(parser, 0.1, type=float)
    parser.add_argument("--dtype", default=None, metavar="LIST",
                        help=f"comma list of {', '.join(DTYPE_NAMES)} (default: float32; "
                             f"{gpu}{','.join(GPU_DTYPES)})")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU: torch.set_num_threads for the run, an int >= 1; dropkit's "
                             "kernels follow it (default: torch's current count)")
    add_repeat(parser, CPU_REPEAT,
               f"timed calls per row ({gpu}{GPU_REPEAT}, --quick {GPU_QUICK_REPEAT})", type=int)
    parser.set_defaults(repeat=None)  # resolved per device
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help=f"untimed calls per row, an int >= {MIN_WARMUP} (default: "
                             f"{CPU_WARMUP}; {gpu}{GPU_WARMUP}, --quick {GPU_QUICK_WARMUP})")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help=f"CPU: dropkit's CPU backend: {', '.join(BACKEND_NAMES)} "
                             "(default: auto)")
    parser.add_argument("--ops", default=None, metavar="LIST",
                        help=f"comma list of {', '.join(OP_NAMES)}; {gpu}of "
                             f"{', '.join(GPU_SUITES)} (default: all)")
    parser.add_argument("--dropblock-shape", default=None, metavar="N,C,H,W",
                        help="dropblock2d input shape (default: "
                             f"{','.join(map(str, DEFAULT_DROPBLOCK_SHAPE))}; {gpu}the four "
                             "shapes (64,256,56,56) .. (64,2048,7,7))")
    parser.add_argument("--block-sizes", default=None, metavar="LIST",
                        help="CPU: dropblock2d block sizes for per_channel=True (default: "
                             f"{','.join(map(str, DEFAULT_BLOCK_SIZES))}; per_channel=False and "
                             f"the peers use {PEER_BLOCK_SIZE}, as does the GPU suite)")
    parser.add_argument("--size", type=float, default=None, metavar="MIB",
                        help=f"{gpu}MiB per tensor of the dropout rows, fwd, bwd and fwd+bwd "
                             f"(default: {GPU_SIZE_MIB:g}; --quick {GPU_QUICK_SIZE_MIB:g})")
    parser.add_argument("--sweep", default=None, metavar="LIST",
                        help=f"{gpu}log2 of the element counts of the dropout fwd+bwd size "
                             "sweep, a comma list of exponents or ranges, 10-30 for every size "
                             f"(default: {','.join(map(str, GPU_SWEEP))}; --quick "
                             f"{','.join(map(str, GPU_QUICK_SWEEP))})")
    parser.add_argument("--bda-shape", default=None, metavar="ROWS,HIDDEN",
                        help=f"{gpu}shape of x and residual of bias_dropout_add (default: "
                             f"{','.join(map(str, GPU_BDA_SHAPE))}; --quick "
                             f"{','.join(map(str, GPU_QUICK_BDA_SHAPE))})")
    parser.add_argument("--compile-backend", default=None, metavar="NAME",
                        help=f"{gpu}torch.compile backend of the compiled peers, none for no "
                             f"such rows (default: {GPU_COMPILE_BACKEND})")
    add_quick(parser, f"{gpu}{GPU_QUICK_SIZE_MIB:g} MiB dropout tensors, sweep "
                      f"{','.join(map(str, GPU_QUICK_SWEEP))}, bias_dropout_add "
                      f"{','.join(map(str, GPU_QUICK_BDA_SHAPE))}, DropBlock batch "
                      f"{GPU_QUICK_DROPBLOCK_BATCH}, {GPU_QUICK_REPEAT} timed calls")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write every row and an environment block as JSON to the "
                             "file PATH (its folder must exist)")
    parser.set_defaults(func=run)
    return parser
