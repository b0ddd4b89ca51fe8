"""``dropkit experiment``: train small models on two offline datasets, compare dropout variants.

MNIST-1D (generated locally by ``mnist1d``) with a 1-D CNN and an MLP, and scikit-learn's 8x8
digits with a residual 2-D CNN; every method of the matrix in :mod:`dropkit.experiment` over
several seeds. Prints a table (test accuracy mean ± std, train-test gap, seconds per epoch, the
MC-dropout entropies) and writes ``runs.csv``, ``results.json`` and PNG plots to ``--out``.

The optional packages are imported only inside :func:`run` (``pip install -e ".[experiment]"``
in the dropkit repository clone).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from ._args import add_device, add_out, add_quick, install_hint, make_folder, parse_int, parse_out

__all__ = ["add_parser", "run"]

DEFAULT_OUT = "experiment"
MAX_SEEDS = 100
_INSTALL_HINT = install_hint("experiment")
_NEEDED = ("mnist1d", "sklearn", "tqdm", "matplotlib")


def _epochs(epochs: dict[str, int]) -> str:
    return ", ".join(f"{model} {n}" for model, n in epochs.items())


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``experiment`` on argparse's subparsers object ``sub``."""
    from dropkit.experiment import DEFAULT_EPOCHS, DEFAULT_P, MATRIX, METHODS, QUICK_EPOCHS

    matrix = "; ".join(f"{ds}/{model}: {', '.join(methods)}"
                       for (ds, model), methods in MATRIX.items())
    rates = ", ".join(f"{m} {p}" for m, p in DEFAULT_P.items() if m != "none")
    parser = sub.add_parser(
        "experiment",
        help="train small models on MNIST-1D and digits, compare dropout variants",
        description=(
            "Train small models on two offline datasets and compare dropout variants: MNIST-1D "
            "(generated locally) with a 1-D CNN and an MLP, scikit-learn's 8x8 digits with a "
            f"residual 2-D CNN. Matrix: {matrix}. Activation methods (dropout, vanilla, "
            "spatial, dropblock, dropblock-linear = DropBlock with a linear rate ramp, "
            "gaussian) act after every ReLU; droppath on residual branches; dropconnect on the "
            f"CNN heads and the MLP's hidden layers. Rates: {rates}. Epochs: "
            f"{_epochs(DEFAULT_EPOCHS)} ({_epochs(QUICK_EPOCHS)} with --quick). Writes "
            "runs.csv, results.json, accuracy.png, curves.png, masks.png and mc_entropy.png "
            "(MC-dropout predictive entropy on digits: correct, misclassified, noise). "
            f"Needs {_INSTALL_HINT}."
        ),
    )
    # Values are parsed in run(), so that a bad value is a one-line error (exit code 2).
    add_out(parser, DEFAULT_OUT, "the CSV, JSON and PNG files")
    parser.add_argument("--seeds", default=None, metavar="N",
                        help=f"seeds per method, an int in [1, {MAX_SEEDS}] "
                        "(default: 3, 1 with --quick)")
    parser.add_argument("--epochs", default=None, metavar="N",
                        help="epochs for every model, an int in [1, 10000] (default: per "
                        "model, see above; the no-dropout cnn1d reaches ~93%% at 150)")
    parser.add_argument("--methods", default="all", metavar="A,B",
                        help=f"comma-separated methods among {', '.join(METHODS)} "
                        "(default: all)")
    add_device(parser, what="device the models train on (cpu or cuda)")
    add_quick(parser, "one seed and a few epochs, under a minute")
    parser.add_argument("--quiet", action="store_true",
                        help="print no progress (without it: a bar on a terminal, else one "
                        "line per finished run on stderr)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the experiment, print the table, write the files; returns 0, or 1 when an optional
    package is missing.

    Raises:
        ValueError: A bad option, or ``--device cuda`` without CUDA (exit code 2).
        OSError: The output folder cannot be created or written (exit code 1).
    """
    from dropkit.experiment import MATRIX, ExperimentConfig, _device, parse_methods

    folder = parse_out(args.out)
    methods = parse_methods(args.methods)
    seeds = (None if args.seeds is None
             else parse_int("--seeds", args.seeds, 1, MAX_SEEDS, f"[1, {MAX_SEEDS}]"))
    epochs = (None if args.epochs is None
              else parse_int("--epochs", args.epochs, 1, 10000, "[1, 10000]"))
    _device(args.device)
    missing = _missing()
    if missing:
        print(f"dropkit experiment: error: missing {', '.join(missing)}; install with: "
              f"{_INSTALL_HINT}", file=sys.stderr)
        return 1
    models = [model for _, model in MATRIX]
    make = ExperimentConfig.quick if args.quick else ExperimentConfig
    config = make(methods=methods, device=args.device,
                  **({} if seeds is None else {"seeds": seeds}),
                  **({} if epochs is None else {"epochs": dict.fromkeys(models, epochs)}))
    make_folder(folder)


    from dropkit.experiment import run_experiment
    from dropkit.experiment.report import table, write_files

    total = config.seeds * sum(m in methods for ms in MATRIX.values() for m in ms)
    start = time.perf_counter()
    with _Progress(total, quiet=args.quiet) as step:
        result = run_experiment(config, progress=step)
    seconds = time.perf_counter() - start
    print(table(result))
    for path in write_files(result, folder):
        print(path)
    threads = result["torch_threads"]
    print(f"dropkit experiment: {plural(len(result['runs']), 'run')} in {seconds:.0f} s on "
          f"{result['device']} ({plural(threads, 'torch thread')}), files in {folder}")
    return 0


class _Progress:
    """What the user sees while the runs train, as a ``progress`` callback of
    :func:`~dropkit.experiment.run_experiment`.

    On a terminal (stderr is a TTY): a tqdm bar, removed when the runs are done (``leave=False``:
    the table follows, and no second copy of the bar's last line is left above it). Off a
    terminal (stderr redirected to a file or a pipe): one line per finished run, ``[i/total]
    what: test acc X%, S s``, flushed at once. ``quiet``: nothing.
    """

    def __init__(self, total: int, *, quiet: bool = False,
                 stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.bar: Any = None
        self.last = time.perf_counter()

    def __enter__(self) -> _Progress:
        if not self.quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="run", file=self.stream,
                            dynamic_ncols=True, leave=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, label: str, run: dict[str, Any]) -> None:
        self.done += 1
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update()
        elif not self.quiet:
            width = len(str(self.total))
            print(f"[{self.done:>{width}}/{self.total}] {label}: test acc "
                  f"{100 * run['test_acc']:.2f}%, {seconds:.1f} s", file=self.stream, flush=True)


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _missing() -> list[str]:
    from importlib.util import find_spec

    return [name for name in _NEEDED if find_spec(name) is None]
