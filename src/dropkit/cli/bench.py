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
  reference of timm's ``drop_path`` on the ``2**24`` tensor viewed as ``(256, rest)``;
* attention (op ``attention``): :func:`dropkit.functional.scaled_dot_product_attention` against
  :func:`torch.nn.functional.scaled_dot_product_attention` with the same ``dropout_p`` (``--p``)
  on the same ``q``, ``k``, ``v`` of every ``--attention-shapes`` entry ``(N, H, L, E)``
  (default ``(8, 12, 128, 64)``, ``(4, 8, 512, 64)``, ``(1, 8, 2048, 64)``), forward and
  forward+backward. Its bytes kept for backward sum the ``untyped_storage().nbytes()`` of the
  unique storages of the saved tensors (the inputs' storages included, for both).

``--ops`` selects the ops (default: all but ``attention``, which takes minutes at its default
shapes; ``--ops all`` or ``--ops attention`` runs it).

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

``--device cuda[:N]`` runs the GPU suite of :mod:`dropkit.cli.bench_gpu` instead (CUDA events,
copy bandwidth, ``torch.compile`` and DropBlock peers; its options are parsed here). That module
imports the shared pieces of this one (validation, wall-clock timer, saved bytes, table and JSON
writing); this one imports it only when ``--device cuda`` runs.

The module has no import-time side effects; torch and dropkit load when the command runs.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ._args import add_device, add_p, add_quick, add_repeat, check_writable_file, parse_p

if TYPE_CHECKING:
    import torch

__all__ = ["Row", "add_parser", "check_targets", "derive_shape", "environment", "format_table",
           "run"]

DEFAULT_NUMEL = 2**24
DEFAULT_SHAPE = (32, 256, 32, 64)  # 2**24 elements
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
BACKEND_NAMES = ("auto", "numba", "torch")
OP_NAMES = ("dropout", "dropout2d", "dropblock2d", "drop_path", "attention")
DEFAULT_OPS = OP_NAMES[:-1]  # attention (minutes at its default shapes) runs when named or all
MIN_WARMUP = 2
CPU_REPEAT, CPU_WARMUP = 15, 3  # --repeat and --warmup of the CPU benchmark
DEFAULT_DROPBLOCK_SHAPE = (32, 256, 28, 28)
DEFAULT_BLOCK_SIZES = (3, 5, 7, 9)
DEFAULT_ATTENTION_SHAPES = ((8, 12, 128, 64), (4, 8, 512, 64), (1, 8, 2048, 64))  # (N, H, L, E)
ATTENTION_SHAPE_NAMES = ("N", "H", "L", "E")
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
# Attention targets (CPU, p = 0.1): never slower than torch's SDPA with dropout, fwd+bwd at least
# 1.5x faster at (1, 8, 2048, 64), and O(L) bytes kept for backward beyond q, k, v and the output.
TARGET_ATTENTION_FWD_BWD_SPEEDUP = 1.5
TARGET_ATTENTION_SPEEDUP_SHAPE = (1, 8, 2048, 64)
TARGET_ATTENTION_SAVED_PER_ROW = 8  # bytes per query row (a float32 log-sum-exp: 4) ...
TARGET_ATTENTION_SAVED_FIXED = 64  # ... plus a fixed-size key

# Defaults of the options of --device cuda (dropkit.cli.bench_gpu), shown by --help.
GPU_SUITES = ("dropout", "sweep", "bias_dropout_add", "dropblock2d")
GPU_DTYPES = ("float32", "bfloat16", "float16")  # --dtype with --device cuda
GPU_SIZE_MIB, GPU_QUICK_SIZE_MIB = 256.0, 16.0  # per tensor of the dropout rows (H200 L2: 50 MiB)
GPU_REPEAT, GPU_WARMUP = 100, 10
GPU_QUICK_REPEAT, GPU_QUICK_WARMUP = 50, 5
GPU_SWEEP, GPU_QUICK_SWEEP = (10, 15, 20, 25, 30), (10, 15, 20)  # log2 of the element counts
GPU_BDA_SHAPE, GPU_QUICK_BDA_SHAPE = (16384, 8192), (2048, 4096)  # (batch * seq, hidden)
GPU_DROPBLOCK_SHAPES = ((64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14), (64, 2048, 7, 7))
GPU_QUICK_DROPBLOCK_BATCH = 8  # --quick: the same shapes with batch 8
GPU_COMPILE_BACKEND = "inductor"
GPU_ONLY_OPTIONS = ("size", "quick", "sweep", "bda_shape", "compile_backend")
CPU_ONLY_OPTIONS = ("numel", "shape", "threads", "backend", "block_sizes", "attention_shapes")

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


def _split_names(
    text: str, option: str, noun: str, choices: Sequence[str], also: str = ""
) -> list[str]:
    """The names of the comma list ``text``, each one of ``choices`` (ValueError otherwise).

    Args:
        text: What the option was given.
        option: The option, as it is typed (``--dtype``).
        noun: One entry in words, for the error of an empty list.
        choices: The names accepted.
        also: Said after the choices in the error (``" (or all)"``).
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"`{option}` must name at least one {noun}, got an empty list.")
    for name in names:
        if name not in choices:
            raise ValueError(
                f"`{option}` entries must be one of {', '.join(choices)}{also}, got {name!r}."
            )
    return names


def _parse_dtypes(text: str) -> list[str]:
    """Split a comma list of dtype names, rejecting unknown ones (ValueError)."""
    names = _split_names(text, "--dtype", "dtype", DTYPE_NAMES)
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _parse_ops(
    text: str | None, choices: Sequence[str] = OP_NAMES, default: Sequence[str] | None = None
) -> list[str]:
    """Split a comma list of names from ``choices`` (``all``: every one; None: ``default``,
    every one when that is None), rejecting unknown ones; the result is in the order of
    ``choices`` (the table order)."""
    if text is None and default is not None:
        return list(default)
    if text is None or text.strip() == "all":
        return list(choices)
    names = _split_names(text, "--ops", "op", choices, " (or all)")
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


def _parse_attention_shapes(text: str) -> list[tuple[int, ...]]:
    """Split a comma list of ``NxHxLxE`` shapes (ValueError otherwise), dropping repeats."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"`--attention-shapes` must name at least one NxHxLxE shape, got "
                         f"{text!r}.")
    return list(dict.fromkeys(
        _parse_shape(part, "--attention-shapes", ATTENTION_SHAPE_NAMES) for part in parts
    ))


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
    attention_shapes: list[tuple[int, ...]]


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
    p = parse_p(args.p)
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
        p=p,
        dtypes=_parse_dtypes("float32" if args.dtype is None else args.dtype),
        threads=args.threads,
        repeat=repeat,
        warmup=warmup,
        backend=backend,
        json_path=args.json,
        ops=_parse_ops(args.ops, OP_NAMES, DEFAULT_OPS),
        dropblock_shape=DEFAULT_DROPBLOCK_SHAPE if args.dropblock_shape is None
        else _parse_shape(args.dropblock_shape, "--dropblock-shape"),
        block_sizes=list(DEFAULT_BLOCK_SIZES) if args.block_sizes is None
        else _parse_block_sizes(args.block_sizes),
        attention_shapes=list(DEFAULT_ATTENTION_SHAPES) if args.attention_shapes is None
        else _parse_attention_shapes(args.attention_shapes),
    )


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


def _time_fwd_bwd(
    timer: Timer,
    forward: Callable[..., torch.Tensor],
    args: Sequence[Any],
    leaves: Sequence[torch.Tensor],
    grad: torch.Tensor,
    warmup: int,
    repeat: int,
) -> list[float]:
    """Milliseconds per call of ``forward(*args).backward(grad)``, timed by ``timer``.

    Args:
        timer: :func:`_time_ms`, or another function with its contract.
        forward: Computes the output from ``args``.
        args: Its arguments; the tensors among them that backward reaches are ``leaves``.
        leaves: Tensors that require grad; their ``.grad`` is reset to None before every call,
            outside the timed region.
        grad: The upstream gradient, of the output's shape.
        warmup: Untimed calls first.
        repeat: Timed calls.
    """

    def step() -> torch.Tensor:
        y = forward(*args)
        y.backward(grad)
        return y

    def reset() -> None:
        for leaf in leaves:
            leaf.grad = None

    return timer(step, reset, warmup, repeat)


def _gb_per_s(traffic: int, numel: int, median_ms: float) -> float:
    """Effective bandwidth of ``traffic`` bytes per element over ``numel`` elements in
    ``median_ms`` milliseconds (inf for a zero time)."""
    return traffic * numel / (median_ms * 1e-3) / 1e9 if median_ms > 0 else math.inf


def _saved_bytes(
    fn: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, p: float
) -> int:
    """Bytes of the tensors autograd saves for backward during one ``fn(leaf, p)``, where
    ``leaf`` is ``x`` detached (same storage) and requiring grad.

    Tensors are deduplicated by data pointer; the output is dropped before returning.
    """
    leaf = x.detach().requires_grad_(True)
    return _saved_bytes_of(lambda: fn(leaf, p))


def _saved_bytes_of(forward: Callable[[], torch.Tensor], by_storage: bool = False) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward()`` runs (its inputs
    should require grad), deduplicated by data pointer; the output is dropped before returning.

    With ``by_storage``, the bytes are the ``untyped_storage().nbytes()`` of the unique storages
    the saved tensors view (what stays allocated), not the tensors' own sizes.
    """
    import torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if by_storage:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t
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


class _Peer(NamedTuple):
    """A DropBlock of another package, called as ``fn(x, p)`` at one block size."""

    provider: str  # the package
    impl: str  # what is called, tagged PER_CHANNEL_TAG and/or DEFAULT_TAG
    fn: Callable[[torch.Tensor, float], torch.Tensor]


def _torchvision_peer(drop_block2d: Callable[..., torch.Tensor], block: int,
                      suffix: str = "") -> _Peer:
    """torchvision's ``drop_block2d`` (one mask per channel) at ``block``; ``suffix`` ends the
    ``impl`` (the GPU suite marks its copy " (copied code)")."""
    return _Peer(
        "torchvision", f"torchvision.ops.drop_block2d(x, p, {block}) {PER_CHANNEL_TAG}{suffix}",
        lambda x, p: drop_block2d(x, p, block, inplace=False, eps=1e-06, training=True),
    )


def _timm_per_channel_peer(drop_block_2d: Callable[..., torch.Tensor], block: int,
                           suffix: str = "") -> _Peer:
    """timm's ``drop_block_2d`` with ``couple_channels=False`` (one mask per channel, timm
    releases with that parameter) at ``block``; ``suffix`` ends the ``impl``."""
    return _Peer(
        "timm",
        f"timm drop_block_2d(x, p, {block}, couple_channels=False) {PER_CHANNEL_TAG}{suffix}",
        lambda x, p: drop_block_2d(x, p, block, couple_channels=False),
    )


def _torchvision_peers(block: int) -> list[_Peer]:
    from torchvision.ops import drop_block2d

    return [_torchvision_peer(drop_block2d, block)]


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
        peers.append(_timm_per_channel_peer(drop_block_2d, block))
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
    return _time_fwd_bwd(_time_ms, fn, (leaf, p), [leaf], g, warmup, repeat)


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
            gb_per_s=_gb_per_s(traffic, numel, median),
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
    if "attention" in cfg.ops:
        rows += _attention_rows(cfg, dtype_name, threads)
    return rows


def _shape_label(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _attention_impl(name: str, shape: Sequence[int]) -> str:
    return f"{name}(q, k, v, dropout_p=p) {_shape_label(shape)}"


def _attention_rows(
    cfg: _Config, dtype_name: str, threads: int, timer: Timer = _time_ms
) -> list[Row]:
    """The attention rows of one dtype: for every ``cfg.attention_shapes`` entry, torch's and
    dropkit's SDPA with ``dropout_p = cfg.p`` on the same ``q, k, v`` (``(N, H, L, E)`` each)
    and one upstream gradient, forward and forward+backward, timed by ``timer``.

    ``numel`` is ``q``'s element count; the traffic counts the fewest tensor passes (forward:
    read q, k, v, write the output, 4; forward+backward: also read the gradient and write three
    input gradients, 8), so GB/s is only a lower bound for a compute-bound op. ``saved_bytes``
    sums the unique storages autograd keeps (:func:`_saved_bytes_of` with ``by_storage``).
    """
    import torch
    import torch.nn.functional as F

    import dropkit.functional as DF

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    providers: tuple[tuple[str, str, Callable[..., torch.Tensor]], ...] = (
        ("torch", "F.scaled_dot_product_attention", F.scaled_dot_product_attention),
        ("dropkit", "dropkit.functional.scaled_dot_product_attention",
         DF.scaled_dot_product_attention),
    )
    p = cfg.p
    rows: list[Row] = []
    for shape in cfg.attention_shapes:
        q, k, v, g = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        numel = q.numel()
        torch_ms: dict[str, float] = {}
        for pass_, traffic in (("fwd", 4), ("fwd+bwd", 8)):
            for provider, name, fn in providers:
                forward = functools.partial(fn, dropout_p=p)
                if pass_ == "fwd":
                    times = timer(functools.partial(forward, q, k, v), lambda: None,
                                  cfg.warmup, cfg.repeat)
                else:
                    times = _time_fwd_bwd(timer, forward, leaves, leaves, g, cfg.warmup,
                                          cfg.repeat)
                saved = _saved_bytes_of(functools.partial(forward, *leaves), by_storage=True)
                median = statistics.median(times)
                if provider == "torch":
                    torch_ms[pass_] = median
                ref = torch_ms.get(pass_)
                rows.append(Row(
                    op="attention", pass_=pass_, provider=provider,
                    impl=_attention_impl(name, shape), dtype=dtype_name, numel=numel,
                    shape=list(shape), p=p, threads=threads, median_ms=median,
                    min_ms=min(times), traffic_bytes_per_element=traffic * q.element_size(),
                    gb_per_s=_gb_per_s(traffic * q.element_size(), numel, median),
                    ratio_vs_torch=ref / median if provider != "torch" and ref and median > 0
                    else None,
                    saved_bytes=saved, saved_bytes_per_element=saved / numel,
                ))
    return rows


def _attention_checks(rows: Sequence[Row], dtype: str) -> list[dict[str, Any]]:
    """The attention targets for one dtype: dropkit never slower than torch's SDPA (each shape
    and pass), forward+backward >= 1.5x faster at (1, 8, 2048, 64) (not measured when that
    shape did not run), and bytes kept beyond q, k, v and the output O(L)."""
    mine = [r for r in rows if r.op == "attention" and r.dtype == dtype]
    checks: list[dict[str, Any]] = []
    if not mine:
        return checks

    def pair(pass_: str, shape: list[int]) -> tuple[Row | None, Row | None]:
        found = {r.provider: r for r in mine if r.pass_ == pass_ and r.shape == shape}
        return found.get("dropkit"), found.get("torch")

    shapes = list(dict.fromkeys(tuple(r.shape) for r in mine))
    for shape in shapes:
        label = _shape_label(shape)
        for pass_ in ("fwd", "fwd+bwd"):
            ours, theirs = pair(pass_, list(shape))
            checks.append(_speedup_check(
                dtype, f"attention {pass_} {label} never slower than torch's SDPA", ours,
                theirs, 1.0, "no row"))
    target = list(TARGET_ATTENTION_SPEEDUP_SHAPE)
    label = _shape_label(target)
    ours, theirs = pair("fwd+bwd", target)
    checks.append(_speedup_check(
        dtype, f"attention fwd+bwd {label} >= {TARGET_ATTENTION_FWD_BWD_SPEEDUP:g}x faster "
        "than torch's SDPA", ours, theirs, TARGET_ATTENTION_FWD_BWD_SPEEDUP,
        f"{label} not in --attention-shapes"))
    for shape in shapes:
        ours, _ = pair("fwd+bwd", list(shape))
        if ours is None or ours.saved_bytes is None:
            continue
        n, h, length, _e = shape
        inputs = 4 * ours.numel * _element_size(dtype)  # q, k, v and the output
        extra = ours.saved_bytes - inputs
        bound = TARGET_ATTENTION_SAVED_PER_ROW * n * h * length + TARGET_ATTENTION_SAVED_FIXED
        checks.append({
            "dtype": dtype,
            "target": f"attention {_shape_label(shape)}: bytes kept for backward beyond "
                      f"q, k, v and the output O(L): <= {TARGET_ATTENTION_SAVED_PER_ROW} B per "
                      f"query row + {TARGET_ATTENTION_SAVED_FIXED}",
            "measured": f"{ours.saved_bytes} B in total, {extra} B beyond q, k, v, output "
                        f"(bound {bound} B; L x S would be {n * h * length * length} "
                        "elements)",
            "met": extra <= bound,
        })
    return checks


def _element_size(dtype: str) -> int:
    """Bytes per element of the torch dtype named ``dtype``."""
    import torch

    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


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
        theirs = next((r for r in mine if r.provider == provider and r.pass_ == "fwd+bwd"
                       and tag in r.impl), None)
        missing = (peer_notes.get(provider, f"no {provider} row with {tag}") if theirs is None
                   else f"block {PEER_BLOCK_SIZE} not in --block-sizes")
        checks.append(_speedup_check(
            dtype, f"dropblock2d fwd+bwd (per_channel=True, block {PEER_BLOCK_SIZE}) {text}",
            ours, theirs, factor, missing))
    return checks


def _speedup_check(
    dtype: str, target: str, ours: Any, theirs: Any, factor: float, missing: str,
    digits: int = 2,
) -> dict[str, Any]:
    """One target check ``{"dtype", "target", "measured", "met"}`` comparing two rows.

    Args:
        dtype: The rows' dtype.
        target: What is checked, in words.
        ours: dropkit's row (a :class:`Row` or a GPU row: ``median_ms`` is read), or None.
        theirs: The peer's row (``median_ms`` and ``impl`` are read), or None.
        factor: ``met`` is ``theirs.median_ms / ours.median_ms >= factor``.
        missing: ``measured`` when a row is None; ``met`` is then None (not measured).
        digits: Decimals of the two medians in ``measured``.
    """
    check: dict[str, Any] = {"dtype": dtype, "target": target}
    if ours is None or theirs is None:
        return {**check, "measured": missing, "met": None}
    speedup = theirs.median_ms / ours.median_ms
    return {**check, "measured": f"{speedup:.2f}x ({ours.median_ms:.{digits}f} vs "
                                 f"{theirs.median_ms:.{digits}f} ms median, {theirs.impl})",
            "met": speedup >= factor}


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
        checks += _attention_checks(rows, dtype)
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





# ------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table, optionally write JSON.

    ``--device cuda[:N]`` runs the GPU suite (:func:`dropkit.cli.bench_gpu.run`); CPU (the
    default) the CPU benchmark.
    """
    device_name = getattr(args, "device", None) or "cpu"
    if device_name.strip() != "cpu":
        device = _bench_device(device_name.strip())
        if device.type == "cuda":
            from . import bench_gpu  # the one import of bench_gpu; it imports this module

            return bench_gpu.run(args, device)
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
            f"block sizes={','.join(map(str, cfg.block_sizes))} attention shapes="
            f"{','.join(_shape_label(s) for s in cfg.attention_shapes)} p={cfg.p:g} "
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
    legend = (
        "torch/this: torch's median over this row's median for the same op and pass "
        "(> 1: faster than torch).\n"
        "GB/s counts 2*element_size bytes per element per pass (fill references: 1; "
        "attention: 4 fwd, 8 fwd+bwd per element of q).\n"
        "Targets (stated for float32, 2 cores, p=0.1, 2**24 elements; "
        f"DropBlock: {DEFAULT_DROPBLOCK_SHAPE}, per_channel=True):"
    )
    config = {
        "numel": cfg.numel, "shape": list(cfg.shape), "p": cfg.p,
        "dtypes": cfg.dtypes, "threads": threads, "warmup": cfg.warmup,
        "repeat": cfg.repeat, "backend": cfg.backend, "ops": cfg.ops,
        "dropblock_shape": list(cfg.dropblock_shape), "block_sizes": cfg.block_sizes,
        "attention_shapes": [list(s) for s in cfg.attention_shapes],
    }
    return _report(format_table(rows), legend, rows, checks, cfg.json_path,
                   config, env, list(peer_notes.values()))


def _row_json(row: Any) -> dict[str, Any]:
    """A measured row (a :class:`Row` or a GPU row, both dataclasses) as a JSON object; the
    field ``pass_`` is named ``pass``."""
    data = asdict(row)
    data["pass"] = data.pop("pass_")
    return data


def _report(
    table: str,
    legend: str,
    rows: Sequence[Any],
    checks: Sequence[dict[str, Any]],
    json_path: str | None,
    config: dict[str, Any],
    env: dict[str, Any],
    notes: list[str],
) -> int:
    """Print the end of a benchmark's output; with ``json_path``, also write the JSON report.

    Args:
        table: The formatted rows.
        legend: Printed after a blank line; its last line introduces the target checks.
        rows: The measured rows (dataclasses, see :func:`_row_json`).
        checks: The target checks, printed by :func:`format_checks`.
        json_path: Where the report goes (its folder was checked before timing), or None.
        config, env, notes: The report's ``config``, ``environment`` and ``notes``.

    Returns:
        The exit status, 0.
    """
    print(table)
    print()
    print(legend)
    print(format_checks(checks))
    if json_path is not None:
        report = {"config": config, "environment": env, "rows": [_row_json(r) for r in rows],
                  "targets": checks, "notes": notes}
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        print(f"wrote {json_path}")
    return 0


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
                        help=f"comma list of {', '.join(OP_NAMES)}, or all (default: all but "
                             f"attention); {gpu}of {', '.join(GPU_SUITES)} (default: all)")
    parser.add_argument("--dropblock-shape", default=None, metavar="N,C,H,W",
                        help="dropblock2d input shape (default: "
                             f"{','.join(map(str, DEFAULT_DROPBLOCK_SHAPE))}; {gpu}the four "
                             "shapes (64,256,56,56) .. (64,2048,7,7))")
    parser.add_argument("--block-sizes", default=None, metavar="LIST",
                        help="CPU: dropblock2d block sizes for per_channel=True (default: "
                             f"{','.join(map(str, DEFAULT_BLOCK_SIZES))}; per_channel=False and "
                             f"the peers use {PEER_BLOCK_SIZE}, as does the GPU suite)")
    parser.add_argument("--attention-shapes", default=None, metavar="LIST",
                        help="CPU: comma list of NxHxLxE shapes of q, k and v for the attention "
                             "op (default: "
                             f"{','.join(_shape_label(s) for s in DEFAULT_ATTENTION_SHAPES)})")
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
