"""``dropkit bench``: dropkit's dropout against torch's on the same CPU tensors.

One run measures, for every requested dtype and on the same input tensors:

* plain dropout: :func:`dropkit.functional.dropout` against :func:`torch.nn.functional.dropout`,
  forward only and forward+backward, with ``x * 2.0`` (forward and forward+backward) and
  ``x.clone()`` as memory-bound floors;
* spatial dropout: :func:`dropkit.functional.spatial_dropout2d` against
  :func:`torch.nn.functional.dropout2d` on an ``(N, C, H, W)`` tensor of the same element count,
  forward and forward+backward;
* two clearly labelled references for the cost of producing a fresh output tensor:
  ``torch.empty_like(x).fill_(1)`` (new allocation: page faults included) and ``buf.fill_(1)``
  (a buffer reused across iterations: no page faults).

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

The module has no import-time side effects; torch and dropkit load when the command runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "Row", "add_parser", "check_targets", "derive_shape", "environment", "format_table", "run",
]

DEFAULT_NUMEL = 2**24
DEFAULT_SHAPE = (32, 256, 32, 64)  # 2**24 elements
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
BACKEND_NAMES = ("auto", "numba", "torch")
MIN_WARMUP = 2

# Project targets, checked for float32 (they are stated for 2 cores, 2**24 elements, p = 0.1).
TARGET_FWD_BWD_SPEEDUP = 5.0  # dropkit forward+backward at least 5x faster than F.dropout
TARGET_FWD_VS_FLOOR = 2.0  # dropkit forward within 2x the time of x * 2.0
TARGET_SAVED_PER_ELEMENT = 0.0  # no per-element state kept for backward (a fixed-size key)


@dataclass
class Row:
    """One measured line of the benchmark table."""

    op: str  # "dropout", "dropout2d" (the family the row belongs to)
    pass_: str  # "fwd" or "fwd+bwd"
    provider: str  # "dropkit", "torch", "floor" or "reference"
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


# --------------------------------------------------------------------------- argument checks


def _parse_dtypes(text: str) -> list[str]:
    """Split a comma list of dtype names, rejecting unknown ones (ValueError)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("bench: `--dtype` must name at least one dtype, got an empty list.")
    for name in names:
        if name not in DTYPE_NAMES:
            raise ValueError(
                f"bench: `--dtype` entries must be one of {', '.join(DTYPE_NAMES)}, "
                f"got {name!r}."
            )
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    """Parse ``N,C,H,W`` (or ``NxCxHxW``) into four positive ints (ValueError otherwise)."""
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"bench: `--shape` must be four integers N,C,H,W, got {text!r}.") from None
    if len(dims) != 4 or min(dims) <= 0:
        raise ValueError(f"bench: `--shape` must be four positive integers N,C,H,W, got {text!r}.")
    return dims  # type: ignore[return-value]


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
        raise ValueError(f"bench: `numel` must be positive, got {numel}.")
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


def _config(args: argparse.Namespace) -> _Config:
    """Validate the parsed arguments; every problem is a one-line ValueError."""
    if args.numel is not None and args.numel <= 0:
        raise ValueError(f"bench: `--numel` must be a positive integer, got {args.numel}.")
    shape = _parse_shape(args.shape) if args.shape is not None else None
    if shape is not None:
        numel = math.prod(shape)
        if args.numel is not None and args.numel != numel:
            raise ValueError(
                f"bench: `--shape` {args.shape} has {numel} elements but `--numel` is "
                f"{args.numel}."
            )
    else:
        numel = DEFAULT_NUMEL if args.numel is None else args.numel
        shape = DEFAULT_SHAPE if numel == DEFAULT_NUMEL else derive_shape(numel)
    if not (0.0 <= args.p <= 1.0):  # also rejects NaN
        raise ValueError(f"bench: `--p` must be in [0, 1], got {args.p}.")
    if args.repeat <= 0:
        raise ValueError(f"bench: `--repeat` must be a positive integer, got {args.repeat}.")
    if args.warmup < MIN_WARMUP:
        raise ValueError(f"bench: `--warmup` must be at least {MIN_WARMUP}, got {args.warmup}.")
    if args.threads is not None and args.threads <= 0:
        raise ValueError(f"bench: `--threads` must be a positive integer, got {args.threads}.")
    if args.backend not in BACKEND_NAMES:
        raise ValueError(
            f"bench: `--backend` must be one of {', '.join(BACKEND_NAMES)}, got {args.backend!r}."
        )
    return _Config(
        numel=numel,
        shape=shape,
        p=float(args.p),
        dtypes=_parse_dtypes(args.dtype),
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        backend=args.backend,
        json_path=args.json,
    )


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
    import torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.numel() * t.element_size())
        return t

    leaf = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(leaf, p)
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


def _cases(buf: torch.Tensor) -> list[_Case]:
    """Every timed expression, in table order; ``buf`` is the reused buffer of the fill row."""
    import torch
    import torch.nn.functional as F

    import dropkit.functional as DF

    def fresh_fill(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x).fill_(1)

    dk_dropout: Callable[..., torch.Tensor] = DF.dropout
    dk_spatial: Callable[..., torch.Tensor] = DF.spatial_dropout2d
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
    return cases


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


def _measure(cfg: _Config, dtype_name: str, threads: int) -> list[Row]:
    """All rows for one dtype, on one input tensor and one upstream gradient."""
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(cfg.numel, generator=gen).to(dtype)
    grad = torch.randn(cfg.numel, generator=gen).to(dtype)
    inputs = {"dropout": flat, "dropout2d": flat.reshape(cfg.shape)}
    grads = {"dropout": grad, "dropout2d": grad.reshape(cfg.shape)}
    element_size = flat.element_size()
    rows: list[Row] = []
    for case in _cases(torch.empty_like(flat)):
        x = inputs[case.op]
        times = _time_case(case, x, grads[case.op], cfg.p, cfg.warmup, cfg.repeat)
        saved = _saved_bytes(case.fn, x, cfg.p) if case.saved else None
        median, best = statistics.median(times), min(times)
        traffic = case.traffic * element_size
        rows.append(Row(
            op=case.op,
            pass_=case.pass_,
            provider=case.provider,
            impl=case.impl,
            dtype=dtype_name,
            numel=cfg.numel,
            shape=list(x.shape),
            p=cfg.p,
            threads=threads,
            median_ms=median,
            min_ms=best,
            traffic_bytes_per_element=traffic,
            gb_per_s=traffic * cfg.numel / (median * 1e-3) / 1e9 if median > 0 else math.inf,
            ratio_vs_torch=None,
            saved_bytes=saved,
            saved_bytes_per_element=None if saved is None else saved / cfg.numel,
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


def check_targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The project's targets, evaluated per dtype on the measured rows (no tuning, just reading).

    The targets are stated for float32 on 2 cores with 2**24 elements and p = 0.1; they are
    evaluated for whatever configuration ran, and the report says which one that was.
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
    names = [name for name, _ in COLUMNS]
    widths = [max(len(c[i]) for c in [names, *cells]) for i in range(len(names))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            f"{v:{align}{w}}" for v, (_, align), w in zip(values, COLUMNS, widths, strict=True)
        ).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    previous = None
    for r, c in zip(rows, cells, strict=True):
        group = (r.dtype, r.op, r.pass_)
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(line(c))
    return "\n".join(out)


def format_checks(checks: Sequence[dict[str, Any]]) -> str:
    """The target checks, one per line."""
    return "\n".join(
        f"[{'met' if c['met'] else 'MISSED'}] {c['dtype']}: {c['target']}: {c['measured']}"
        for c in checks
    )


# ------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table, optionally write JSON."""
    cfg = _config(args)
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
            f"dropkit bench: numel={cfg.numel} spatial shape={tuple(cfg.shape)} p={cfg.p:g} "
            f"threads={threads} dtypes={','.join(cfg.dtypes)} warmup={cfg.warmup} "
            f"repeat={cfg.repeat} backend={cfg.backend} load average before={load_before}",
            flush=True,
        )
        rows: list[Row] = []
        for dtype_name in cfg.dtypes:
            rows += _measure(cfg, dtype_name, threads)
        env = environment()
        env["load_average_before_run"] = load_before
    finally:
        torch.set_num_threads(old_threads)
        dropkit.set_backend(old_backend)
    checks = check_targets(rows)
    print(format_table(rows))
    print()
    print("torch/this: torch's median over this row's median for the same op and pass "
          "(> 1: faster than torch).")
    print("GB/s counts 2*element_size bytes per element per pass (fill references: 1).")
    print("Targets (stated for float32, 2 cores, 2**24 elements, p=0.1):")
    print(format_checks(checks))
    if cfg.json_path is not None:
        report = {
            "config": {
                "numel": cfg.numel, "shape": list(cfg.shape), "p": cfg.p,
                "dtypes": cfg.dtypes, "threads": threads, "warmup": cfg.warmup,
                "repeat": cfg.repeat, "backend": cfg.backend,
            },
            "environment": env,
            "rows": [_row_json(r) for r in rows],
            "targets": checks,
        }
        with open(cfg.json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        print(f"wrote {cfg.json_path}")
    return 0


def _row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    data["pass"] = data.pop("pass_")
    return data


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on argparse's subparsers object ``sub``."""
    parser = sub.add_parser(
        "bench",
        help="time dropkit against torch's dropout on the same CPU tensors",
        description=(
            "Time dropkit's dropout and spatial_dropout2d against torch.nn.functional's on the "
            "same CPU tensors (forward, forward+backward), with memory-bound floors, and "
            "measure the bytes autograd keeps for backward."
        ),
    )
    parser.add_argument("--numel", type=int, default=None,
                        help=f"elements per tensor (default {DEFAULT_NUMEL} = 2**24, or the "
                             "product of --shape)")
    parser.add_argument("--shape", default=None, metavar="N,C,H,W",
                        help="spatial-dropout shape (default (32, 256, 32, 64) for 2**24 "
                             "elements, else derived from --numel)")
    parser.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    parser.add_argument("--dtype", default="float32",
                        help=f"comma list of {', '.join(DTYPE_NAMES)} (default float32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (dropkit's kernels follow it; "
                             "default: torch's current count)")
    parser.add_argument("--repeat", type=int, default=15,
                        help="timed iterations per row (default 15)")
    parser.add_argument("--warmup", type=int, default=3,
                        help=f"untimed iterations per row, at least {MIN_WARMUP} (default 3)")
    parser.add_argument("--backend", default="auto",
                        help=f"dropkit's CPU backend: {', '.join(BACKEND_NAMES)} (default auto)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write every row and an environment block as JSON")
    parser.set_defaults(func=run)
    return parser
