"""The ``dropkit`` command line: thin argparse front ends over library functions.

Subcommands (``dropkit COMMAND --help`` explains each one):
    gallery     PNG pictures of what each variant drops (``dropkit.cli.gallery``)
    audit       requested p against the realized drop fraction, for dropkit and installed peers
                (``dropkit.cli.audit``)
    experiment  small models trained on MNIST-1D and digits with each dropout variant
                (``dropkit.cli.experiment``)
    bench       dropkit against torch's dropout on the same tensors (``dropkit.cli.bench``)
    info        versions, backends found, threads, CUDA and optional extras (``--json``)

Options that several subcommands share have one spelling, one meaning and one help phrasing
(registered by ``dropkit.cli._args``): ``--out DIR`` (the folder written, created if needed),
``--seed SEED`` (an int in [0, 2**64)), ``--p P`` (a drop probability in [0, 1]),
``--repeat N`` (an int >= 1), ``--quick`` (a smaller, faster run) and ``--device DEVICE`` (a torch
device name). ``dropkit --version`` prints the version.

Exit codes:
    0    success.
    1    failure: a missing optional dependency, an output folder or file that cannot be written,
         an audit row out of tolerance.
    2    bad arguments: a one-line ``dropkit COMMAND: error: ...`` on stderr (argparse's own
         errors, such as an unknown option, print the usage first, then one error line).
    130  interrupted (Ctrl-C): one line on stderr, no traceback.

A closed output pipe (``dropkit info | head -1``) ends the command quietly with exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
examples:
  dropkit gallery --out gallery --p 0.5 --seed 0   PNG pictures of every variant
  dropkit audit --quick                            realized drop rates, small grid
  dropkit experiment --quick --out runs            train and compare, under a minute
  dropkit bench --ops dropout --repeat 5           time dropout against torch's
  dropkit info --json                              environment for a bug report
  dropkit COMMAND --help                           the options of one command

shared options: --out DIR (folder written, created if needed), --seed SEED (an int in
[0, 2**64)), --p P (drop probability in [0, 1]), --repeat N (an int >= 1), --quick (a
smaller run), --device DEVICE (a torch device, e.g. cpu or cuda:0).

exit codes:
  0    success
  1    failure: a missing optional dependency, an unwritable output folder or file,
       an audit row out of tolerance
  2    bad arguments (one error line on stderr)
  130  interrupted (Ctrl-C)
"""

# Optional extras reported by `dropkit info`: (row name, distribution name, import name).
EXTRAS = (
    ("matplotlib", "matplotlib", "matplotlib"),
    ("mnist1d", "mnist1d", "mnist1d"),
    ("sklearn", "scikit-learn", "sklearn"),
    ("tqdm", "tqdm", "tqdm"),
    ("mkdocs", "mkdocs", "mkdocs"),
)


# ----------------------------------------------------------------------------- info


def _dist_version(dist: str, module: str) -> str | None:
    """The installed version of ``dist`` (None if absent), without importing it."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed (version unknown)"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def info_report() -> dict[str, Any]:
    """What ``dropkit info`` prints, as a JSON-ready dict (None: not installed / not available).

    Triton is imported here, never by ``import dropkit``; numba's thread pool is started (it
    would be at the first kernel call anyway) to learn its threading layer.
    """
    import platform

    import numpy
    import torch

    import dropkit
    from dropkit import kernels

    report: dict[str, Any] = {
        "dropkit": dropkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import numba

        report["numba"] = numba.__version__
    except ImportError:  # pragma: no cover - numba is a dependency
        numba = None
        report["numba"] = None
    report["backend_setting"] = kernels.get_backend()
    try:
        importlib.import_module("dropkit.kernels.numba_cpu")
        report["numba_cpu_kernels"] = "available"
    except ImportError as err:  # pragma: no cover - numba is a dependency
        report["numba_cpu_kernels"] = f"not available ({_first_line(err)})"
    report["torch_reference"] = "available (any device)"
    try:
        cpu = kernels.for_device(torch.device("cpu")).__name__.rsplit(".", 1)[-1]
    except ImportError as err:  # pragma: no cover - backend forced to a missing numba
        cpu = f"none ({_first_line(err)})"
    report["cpu_backend"] = cpu
    version = _dist_version("triton", "triton")
    if version is not None:
        try:
            importlib.import_module("triton")
        except Exception as err:  # a broken install must not break `info`
            version = f"{version} (import fails: {_first_line(err)})"
    report["triton"] = version
    report["torch_threads"] = torch.get_num_threads()
    if numba is not None:
        report["numba_threads"] = numba.get_num_threads()
        try:
            report["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # pragma: no cover - get_num_threads starts the layer
            report["numba_threading_layer"] = None
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        report["cuda"] = f"{count} device(s): {', '.join(names)} (CUDA {torch.version.cuda})"
        # Runs the Triton self-check once: shows "torch_ref" if the kernels failed it.
        report["cuda_backend"] = kernels.for_device(torch.device("cuda")).__name__.rsplit(".")[-1]
    else:
        report["cuda"] = report["cuda_backend"] = None
    for name, dist, module in EXTRAS:
        report[name] = _dist_version(dist, module)
    return report


_LABELS = {
    "backend_setting": "backend setting",
    "numba_cpu_kernels": "numba CPU kernels",
    "torch_reference": "torch reference",
    "cpu_backend": "CPU tensors use",
    "torch_threads": "torch threads",
    "numba_threads": "numba threads",
    "numba_threading_layer": "numba threading layer",
    "cuda": "CUDA",
    "cuda_backend": "CUDA tensors use",
}
_MISSING = {"cuda": "not available", "cuda_backend": "no CUDA device",
            "numba_threading_layer": "not started"}


def format_info(report: dict[str, Any]) -> str:
    """The report as one aligned two-column table."""
    extras = {name for name, _, _ in EXTRAS}
    rows = []
    for key, value in report.items():
        label = _LABELS.get(key, key)
        if key in extras:
            label = f"extra: {key}"
        if value is None:
            value = _MISSING.get(key, "not installed")
        rows.append((label, str(value)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _info(args: argparse.Namespace) -> int:
    report = info_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_info(report))
    return EXIT_OK


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; a help column wide enough for ``experiment``."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)
        # argparse sizes the help column from the options only, not from the command names.
        self._action_max_length = max(self._action_max_length, 4 + len("experiment"))


def _parser() -> argparse.ArgumentParser:
    from . import audit, bench, experiment, gallery

    parser = argparse.ArgumentParser(
        prog="dropkit",
        description=(
            "The dropout family for PyTorch: experiments, pictures, a calibration audit,\n"
            "benchmarks and environment info. `dropkit COMMAND --help` explains a command."
        ),
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"dropkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    # Listed in this order by --help.
    gallery.add_parser(sub)
    audit.add_parser(sub)
    experiment.add_parser(sub)
    bench.add_parser(sub)
    info = sub.add_parser(
        "info", help="versions, backends found, threads, CUDA and optional extras",
        description=(
            "Print one aligned table: the versions of dropkit, python, torch, numpy and numba; "
            "the backends found (numba CPU kernels, the torch reference, triton) and the "
            "backend setting; torch and numba threads and numba's threading layer; the CUDA "
            "device (or 'not available'); the optional extras installed (matplotlib, mnist1d, "
            "sklearn, tqdm, mkdocs). Paste it into bug reports."
        ),
        epilog="Examples: dropkit info; dropkit info --json. Exit status: 0.",
    )
    info.add_argument("--json", action="store_true",
                      help="print the same fields as a JSON object (null: not installed or not "
                           "available)")
    info.set_defaults(func=_info)
    return parser


def _version() -> str:
    from dropkit import __version__

    return __version__


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _quiet_stdout() -> None:
    """After a broken pipe: send what is left in stdout to /dev/null (no error at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    0 success, 1 failure (a missing optional dependency, an unwritable output, an audit row out
    of tolerance), 2 bad arguments (argparse's own errors raise ``SystemExit(2)``), 130
    interrupted. An output folder the command created and left empty (interrupted or failed
    before writing) is removed.
    """
    from . import _args

    code = EXIT_FAILURE
    try:
        code = _main(argv)
        return code
    finally:
        _args.forget_created_folders(remove_empty=code != EXIT_OK)


def _main(argv: Sequence[str] | None) -> int:
    name = "dropkit"
    try:
        args = _parser().parse_args(argv)
        name = f"dropkit {args.command}"
        try:
            code = int(args.func(args) or 0)
        except (ValueError, TypeError) as err:
            print(f"{name}: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_USAGE
        except ImportError as err:
            print(f"{name}: error: an optional dependency is missing: {_one_line(err)}",
                  file=sys.stderr)
            return EXIT_FAILURE
        except BrokenPipeError:
            raise
        except OSError as err:
            print(f"{name}: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_FAILURE
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_FAILURE
