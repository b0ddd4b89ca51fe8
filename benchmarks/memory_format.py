"""dropkit vs torch on channels_last inputs, and dropkit channels_last vs dropkit contiguous.

Medians of ``torch.utils.benchmark.Timer`` (blocked_autorange), one process, one run::

    PYTHONPATH=src python benchmarks/memory_format.py [--shape 32,256,28,28] [--threads N]
        [--dtype float32|bfloat16|float16|float64]

Rows: plain dropout (full field) and spatial dropout (one decision per (N, C)), in ``--dtype``,
forward and forward+backward, for torch (``F.dropout`` / ``F.dropout2d``) and dropkit, each on a
``torch.channels_last`` and a contiguous input. Every output is checked to keep the input's
memory format.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import dropkit.functional as DF

CL = torch.channels_last
OPS = {
    "dropout": {"torch": lambda x: F.dropout(x, 0.1), "dropkit": lambda x: DF.dropout(x, 0.1)},
    "dropout2d": {"torch": lambda x: F.dropout2d(x, 0.1),
                  "dropkit": lambda x: DF.spatial_dropout2d(x, 0.1)},
}


def _median_ms(stmt, min_run_time: float) -> float:
    return Timer(stmt="f()", globals={"f": stmt}).blocked_autorange(
        min_run_time=min_run_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,256,28,28")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16", "float16", "float64"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    base = torch.randn(shape).to(dtype)
    grad = torch.randn(shape).to(dtype)
    print(f"shape {shape} {args.dtype}, {torch.get_num_threads()} threads; median ms")
    print(f"{'op':10} {'pass':8} {'provider':8} {'channels_last':>14} {'contiguous':>11}")
    for op, providers in OPS.items():
        for provider, fn in providers.items():
            for pass_ in ("fwd", "fwd+bwd"):
                times = []
                for fmt in (CL, torch.contiguous_format):
                    x = base.clone(memory_format=fmt).requires_grad_(pass_ != "fwd")
                    g = grad.contiguous(memory_format=fmt)
                    y = fn(x)
                    assert y.is_contiguous(memory_format=fmt), (op, provider, fmt)
                    if pass_ == "fwd":
                        stmt = lambda f=fn, x=x: f(x)  # noqa: E731
                    else:
                        stmt = lambda f=fn, x=x, g=g: torch.autograd.grad(f(x), x, g)  # noqa: E731
                    times.append(_median_ms(stmt, args.min_run_time))
                print(f"{op:10} {pass_:8} {provider:8} {times[0]:14.3f} {times[1]:11.3f}")


if __name__ == "__main__":
    main()
