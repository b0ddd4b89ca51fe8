"""``dropkit bench --device cuda[:N]``: the GPU suite of ``dropkit bench``.

:func:`dropkit.cli.bench.run` hands ``--device cuda`` to :func:`run` here. The command line is
parsed by :mod:`dropkit.cli.bench`, and this module shares its validation, timing and reporting
helpers: it imports :mod:`dropkit.cli.bench`, which imports this module only when the GPU suite
runs.

``--ops`` selects among ``dropout``, ``sweep``, ``bias_dropout_add``, ``dropblock2d``. Every row
is timed with CUDA events around each call (:func:`cuda_event_timer`) after ``--warmup`` calls,
median (and 10th/90th percentiles) of ``--repeat`` calls (default 10 and 100), inputs requiring
grad as in training:

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
one-line error (exit code 2, raised by :func:`dropkit.cli.bench.run` before this module loads).

The module has no import-time side effects; torch and dropkit load when the suite runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._args import check_writable_file, parse_p
from .bench import (
    CPU_ONLY_OPTIONS,
    DEFAULT_TAG,
    GPU_BDA_SHAPE,
    GPU_COMPILE_BACKEND,
    GPU_DROPBLOCK_SHAPES,
    GPU_DTYPES,
    GPU_QUICK_BDA_SHAPE,
    GPU_QUICK_DROPBLOCK_BATCH,
    GPU_QUICK_REPEAT,
    GPU_QUICK_SIZE_MIB,
    GPU_QUICK_SWEEP,
    GPU_QUICK_WARMUP,
    GPU_REPEAT,
    GPU_SIZE_MIB,
    GPU_SUITES,
    GPU_SWEEP,
    GPU_WARMUP,
    PEER_BLOCK_SIZE,
    PER_CHANNEL_TAG,
    Timer,
    _check_repeat_warmup,
    _fmt,
    _gb_per_s,
    _only_with,
    _parse_dtypes,
    _parse_ops,
    _parse_shape,
    _Peer,
    _render,
    _report,
    _saved_bytes_of,
    _speedup_check,
    _time_fwd_bwd,
    _time_ms,
    _timm_per_channel_peer,
    _torchvision_peer,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "GpuConfig", "GpuRow", "check_gpu_targets", "cuda_event_timer", "format_gpu_table",
    "gpu_environment", "link_gpu_rows", "measure_gpu", "run", "timer_for",
]

GPU_MIN_REPEAT = 50  # fewer timed calls are noted: not the measurement the targets ask for
SWEEP_MAX_EXPONENT = 32
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


# ----------------------------------------------------------------------- rows and configuration


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


# ------------------------------------------------------------------------------ argument checks


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


def _gpu_config(args: argparse.Namespace) -> GpuConfig:
    """Validate the parsed arguments of ``--device cuda``; every problem is a one-line
    ValueError."""
    _only_with(args, CPU_ONLY_OPTIONS, "only to the CPU benchmark (not with --device cuda)")
    quick = bool(args.quick)
    size = (GPU_QUICK_SIZE_MIB if quick else GPU_SIZE_MIB) if args.size is None else args.size
    if not (math.isfinite(size) and size * 2**20 >= 8):
        raise ValueError(f"`--size` must be a finite number of MiB, at least 8 bytes, got "
                         f"{size}.")
    p = parse_p(args.p)
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
        p=p,
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


# --------------------------------------------------------------------------------------- timing


def cuda_event_timer(
    call: Callable[[], object], reset: Callable[[], None], warmup: int, repeat: int
) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``call`` after ``warmup`` untimed ones, each timed
    with a pair of CUDA events recorded on the current stream around it (the contract of the
    wall-clock :func:`dropkit.cli.bench._time_ms`).

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
    """CUDA events on a CUDA device, the wall clock (:func:`dropkit.cli.bench._time_ms`)
    elsewhere."""
    return cuda_event_timer if device.type == "cuda" else _time_ms


def _nothing() -> None:
    pass


def _note(notes: list[str], text: str) -> None:
    """Print ``text`` as a note and keep it (once) for the JSON report."""
    text = " ".join(text.split())  # one line
    if text not in notes:
        notes.append(text)
        print(f"note: {text}", flush=True)


# ------------------------------------------------------------------------------ peers and cases


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


def _gpu_dropblock_peers(block: int) -> tuple[list[_Peer], dict[str, str]]:
    """``([_Peer(provider, impl, fn(x, p)), ...], sources)``: torchvision's ``drop_block2d``,
    timm's ``drop_block_2d`` with one mask per channel and with its default coupled channels.

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
        _torchvision_peer(tv_fn, block, tv_tag),
        _timm_per_channel_peer(timm_fn, block, timm_tag),
        _Peer("timm", f"timm drop_block_2d(x, p, {block}) {DEFAULT_TAG}{timm_tag}",
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
    peers: Sequence[_Peer],
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


# ---------------------------------------------------------------------------------- measurement


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
    return _time_fwd_bwd(timer, forward, leaves, leaves, grad, warmup, repeat)


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
        gb_per_s=_gb_per_s(traffic, numel, median),
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
    peers: Sequence[_Peer] | None = None,
) -> list[GpuRow]:
    """Every row of the GPU suite on ``cfg.device``, timed by ``timer``
    (:func:`cuda_event_timer` on a GPU; :func:`dropkit.cli.bench._time_ms` or a stand-in on
    CPU).

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


# -------------------------------------------------------------------------------------- targets


def _gpu_speedup_check(
    dtype: str, target: str, ours: GpuRow | None, theirs: GpuRow | None, factor: float,
    peer: str,
) -> dict[str, Any]:
    """:func:`dropkit.cli.bench._speedup_check` with 4 decimals: ``met`` is
    ``theirs / ours >= factor`` on the medians; None (not measured) when a row is missing
    (``peer`` names the missing peer)."""
    missing = "dropkit" if ours is None else peer
    return _speedup_check(dtype, target, ours, theirs, factor,
                          f"no {missing} row (not run, or see the notes)", digits=4)


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
                checks.append(_gpu_speedup_check(
                    dtype, f"dropout fwd+bwd >= {factor:g}x faster than {name}", ours, theirs,
                    factor, provider))
            pairs = [(r, get("sweep", "fwd+bwd", provider, shape=r.shape)) for r in mine
                     if (r.suite, r.pass_, r.provider) == ("sweep", "fwd+bwd", "dropkit")]
            pairs = [(a, b) for a, b in pairs if b is not None]
            if pairs:
                worst_ours, worst = min(pairs, key=lambda ab: ab[1].median_ms / ab[0].median_ms)
                sizes = ",".join(f"2^{int(math.log2(a.numel))}" for a, _ in pairs)
                check = _gpu_speedup_check(
                    dtype, f"dropout fwd+bwd never slower than {name} at any swept size "
                           f"({sizes})", worst_ours, worst, 1.0, provider)
                check["measured"] = f"min {check['measured']} at 2^{int(math.log2(worst.numel))}"
                checks.append(check)
        ours, theirs = get("bias_dropout_add", "fwd+bwd", "dropkit"), get(
            "bias_dropout_add", "fwd+bwd", "torch")
        if dtype == "bfloat16" and (ours is not None or theirs is not None):
            checks.append(_gpu_speedup_check(
                dtype, f"bias_dropout_add fwd+bwd >= {TARGET_GPU_BDA:g}x faster than "
                       "residual + F.dropout(x + bias, p) (eager)", ours, theirs,
                TARGET_GPU_BDA, "eager"))
        shapes = [r.shape for r in mine if (r.suite, r.provider) == ("dropblock2d", "copy")]
        for shape in shapes:
            ours = get("dropblock2d", "fwd+bwd", "dropkit", shape=shape)
            for provider, factor in (("torchvision", TARGET_GPU_VS_TORCHVISION),
                                     ("timm", TARGET_GPU_VS_TIMM)):
                theirs = get("dropblock2d", "fwd+bwd", provider, PER_CHANNEL_TAG, shape)
                checks.append(_gpu_speedup_check(
                    dtype, f"drop_block2d fwd+bwd {tuple(shape)} >= {factor:g}x faster than "
                           f"{provider}'s per-channel DropBlock", ours, theirs, factor,
                    provider))
    return checks


# ------------------------------------------------------------------------------------ reporting


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


def run(args: argparse.Namespace, device: torch.device) -> int:
    """``dropkit bench --device cuda``: measure, print the table and targets, write JSON.

    Args:
        args: The parsed ``dropkit bench`` arguments (:func:`dropkit.cli.bench.add_parser`).
        device: A CUDA device checked by :func:`dropkit.cli.bench.run`; may also be the CPU
            (the tests do that: wall-clock timing, no GPU name).

    Returns:
        The exit status, 0.

    Raises:
        ValueError: A bad argument (one line; exit code 2).
        OSError: ``--json`` cannot be written (checked before timing; exit code 1).
    """
    import torch

    cfg = _gpu_config(args)
    if cfg.json_path is not None:  # fail before minutes of timing, not after
        check_writable_file(Path(cfg.json_path))
    notes: list[str] = []
    peers: list[_Peer] = []
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
    config = asdict(cfg)
    del config["json_path"]
    legend = f"{GPU_LEGEND}\nTargets (stated for an NVIDIA H200 at the default sizes, p=0.1):"
    return _report(format_gpu_table(rows), legend, rows, check_gpu_targets(rows),
                   cfg.json_path, config, env, notes)
