"""The ``dropkit`` command line: thin argparse front ends over library functions.

Subcommands:
    gallery  PNG pictures of what each variant drops (``dropkit.cli.gallery``)
    bench    dropkit against torch's dropout on the same tensors (``dropkit.cli.bench``)
    audit    requested p against the realized drop fraction, for dropkit and installed peers
             (``dropkit.cli.audit``)
    info     versions, backends and threads

Every subcommand returns an exit code; bad arguments give a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    import dropkit
    from dropkit import kernels

    try:
        import numba

        numba_version = f"{numba.__version__} (threading layer chosen at first kernel call)"
    except ImportError:  # pragma: no cover - numba is a dependency
        numba_version = "not installed"
    rows = {
        "dropkit": dropkit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba_version,
        "backend setting": kernels.get_backend(),
        "CPU backend": kernels.for_device(torch.device("cpu")).__name__.rsplit(".", 1)[-1],
        "torch threads": str(torch.get_num_threads()),
        "CUDA": torch.cuda.get_device_name() if torch.cuda.is_available() else "not available",
    }
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import audit, bench, gallery

    parser = argparse.ArgumentParser(
        prog="dropkit",
        description=(
            "The dropout family for PyTorch: pictures, benchmarks, a calibration audit and "
            "environment info."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gallery.add_parser(sub)
    bench.add_parser(sub)
    audit.add_parser(sub)
    info = sub.add_parser("info", help="versions, backends found, threads",
                          description="Print versions, the backend in use and thread counts.")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 1 failure, 2 bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as err:
        print(f"dropkit {args.command}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError | TypeError) else 1
