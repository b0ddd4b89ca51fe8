"""Train small models on two offline datasets and compare dropout variants (``dropkit experiment``).

Datasets (nothing is downloaded):

* MNIST-1D (Greydanus, 2020, "Scaling Down Deep Learning"), generated locally with
  ``mnist1d.data.make_dataset`` (5000 signals of length 40, 4000 train / 1000 test, dataset
  seed ``data_seed``).
* scikit-learn's bundled 8x8 digits (``sklearn.datasets.load_digits``, 1797 images; a stratified
  80/20 split with ``random_state=data_seed``).

The matrix of (dataset, model) and methods (a method runs where it has a place to act):

======== ======= ====================================================================
dataset  model   methods
======== ======= ====================================================================
mnist1d  cnn1d   none, dropout, vanilla, spatial, dropblock, dropblock-linear,
                 dropconnect, gaussian
mnist1d  mlp     none, dropout, vanilla, dropconnect, gaussian
digits   cnn2d   none, dropout, vanilla, spatial, dropblock, dropblock-linear,
                 droppath, dropconnect, gaussian
======== ======= ====================================================================

Methods: ``none``; ``dropout`` (:class:`dropkit.nn.Dropout`, inverted) and ``vanilla``
(``mode="vanilla"``: no training-time scale, outputs times ``1 - p`` at eval);
``spatial`` (:class:`~dropkit.nn.SpatialDropout1d` / ``2d``: whole channels); ``dropblock``
(:class:`~dropkit.nn.DropBlock1d` / ``2d``, block size 3) and ``dropblock-linear`` (the same
with the rate ramped linearly from 0 by :class:`dropkit.schedules.Linear` and
:class:`~dropkit.schedules.RateScheduler`, as in the DropBlock paper); ``gaussian``
(:class:`~dropkit.nn.GaussianDropout`). These act on activations, after every ReLU of the
feature extractor (and of the MLP). ``droppath`` (:class:`~dropkit.nn.DropPath`) drops the
residual branches of the digits CNN; ``dropconnect`` (:class:`~dropkit.nn.DropConnectLinear`)
drops weights of the CNN heads and of the MLP's hidden layers. See
:mod:`dropkit.experiment.models` for the networks.

Every (dataset, model, method) runs over ``seeds`` seeds; a seed fixes the initialization, the
minibatch order and the masks (torch's default generator), so the same config gives the same
accuracies. Training: Adam, learning rate ``lr`` with a cosine decay to 0, batch 100.

The MC-dropout section (:func:`dropkit.mc.mc_predict`) takes the digits CNN trained with
``dropout`` (seed 0; else the first trained digits method that has masks to sample) and compares
the predictive entropy of correctly and wrongly classified test images and of uniform noise
images.

The optional packages (``mnist1d``, ``scikit-learn``, ``tqdm``, ``matplotlib``; ``pip install -e
".[experiment]"`` in the dropkit repository clone) are imported only when an experiment runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_EPOCHS", "MATRIX", "METHODS", "QUICK_EPOCHS", "ExperimentConfig",
           "parse_methods", "run_experiment"]

METHODS = ("none", "dropout", "vanilla", "spatial", "dropblock", "dropblock-linear",
           "droppath", "dropconnect", "gaussian")
MATRIX: dict[tuple[str, str], tuple[str, ...]] = {
    ("mnist1d", "cnn1d"): ("none", "dropout", "vanilla", "spatial", "dropblock",
                           "dropblock-linear", "dropconnect", "gaussian"),
    ("mnist1d", "mlp"): ("none", "dropout", "vanilla", "dropconnect", "gaussian"),
    ("digits", "cnn2d"): ("none", "dropout", "vanilla", "spatial", "dropblock",
                          "dropblock-linear", "droppath", "dropconnect", "gaussian"),
}
#: Drop rate of each method (structured methods drop more per decision, so lower rates).
DEFAULT_P = {"none": 0.0, "dropout": 0.1, "vanilla": 0.1, "spatial": 0.1, "dropblock": 0.1,
             "dropblock-linear": 0.1, "droppath": 0.1, "dropconnect": 0.2, "gaussian": 0.1}
DEFAULT_EPOCHS = {"cnn1d": 40, "mlp": 20, "cnn2d": 20}
QUICK_EPOCHS = {"cnn1d": 6, "mlp": 4, "cnn2d": 6}


def parse_methods(text: str | None) -> tuple[str, ...]:
    """``"a,b,c"`` -> a tuple of method names (``None`` or ``"all"``: every method).

    Raises:
        ValueError: An unknown or missing name (the message names the valid ones).
    """
    if text is None or text.strip() == "all":
        return METHODS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise ValueError(f"`--methods` must be a comma-separated list of {', '.join(METHODS)} "
                         f"(or all), got unknown {', '.join(map(repr, bad or [text]))}.")
    return names


@dataclass
class ExperimentConfig:
    """What to run. ``epochs`` maps a model (``cnn1d``, ``mlp``, ``cnn2d``) to its epochs.

    ``threads``: torch threads (dropkit's numba kernels follow them) while the experiment
    runs, restored afterwards (``None``: leave them). One thread is the default: these models
    are too small for intra-op parallelism to pay, and extra threads only contend on a busy
    machine.
    """

    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    epochs: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EPOCHS))
    p: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_P))
    device: str = "cpu"
    lr: float = 1e-2
    batch_size: int = 100
    data_seed: int = 42
    mnist1d_samples: int = 5000
    mc_samples: int = 30
    noise_images: int = 500
    threads: int | None = 1

    @classmethod
    def quick(cls, **changes: Any) -> ExperimentConfig:
        """The ``--quick`` budget: one seed, a few epochs."""
        return cls(**{"seeds": 1, "epochs": dict(QUICK_EPOCHS), "mc_samples": 10, **changes})


def run_experiment(
    config: ExperimentConfig,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every (dataset, model, method, seed) of ``config``; returns a JSON-ready dict.

    ``progress`` is called after each run with a label (``"mnist1d/cnn1d/dropout/seed 0"``) and
    that run's dict (the CLI drives a tqdm bar, or prints one line per run, with them).
    The result holds ``config``, ``runs`` (one dict per run: dataset, model, method, seed, p,
    epochs, train_acc, test_acc, gap, sec_per_epoch, curve), ``summary`` (mean and std over
    seeds) and ``mc`` (the MC-dropout section, ``None`` if no digits method with masks ran).

    Raises:
        ValueError: A bad config, or ``device="cuda"`` without CUDA.
    """
    device = _device(config.device)
    bad = [m for m in config.methods if m not in METHODS]
    if bad or config.seeds < 1:
        raise ValueError(f"run_experiment: bad methods {bad} or seeds {config.seeds}.")
    previous = _set_threads(config.threads)
    try:
        return _run(config, device, progress)
    finally:
        _set_threads(previous)


def _run(config: ExperimentConfig, device: Any,
         progress: Callable[[str, dict[str, Any]], None] | None) -> dict[str, Any]:
    import torch

    from .data import load_digits, load_mnist1d
    from .mc import mc_section
    from .models import build_model
    from .train import train

    loaders = {"mnist1d": lambda: load_mnist1d(config.data_seed, config.mnist1d_samples),
               "digits": lambda: load_digits(config.data_seed)}
    plan = [(ds, model, method) for (ds, model), methods in MATRIX.items()
            for method in methods if method in config.methods]
    runs, kept_for_mc = [], None
    datasets: dict[str, Any] = {}
    for ds, model_name, method in plan:
        data = datasets.setdefault(ds, loaders[ds]())
        p = config.p[method]
        for seed in range(config.seeds):
            torch.manual_seed(seed)
            model = build_model(model_name, method, p).to(device)
            result = train(model, data, epochs=config.epochs[model_name], seed=seed,
                           lr=config.lr, batch_size=config.batch_size, device=device,
                           ramp_p=p if method == "dropblock-linear" else None)
            runs.append({"dataset": ds, "model": model_name, "method": method, "seed": seed,
                         "p": p, "epochs": config.epochs[model_name],
                         "train_acc": result.train_acc, "test_acc": result.test_acc,
                         "gap": result.gap, "sec_per_epoch": result.sec_per_epoch,
                         "curve": result.curve})
            if ds == "digits" and seed == 0 and _mc_rank(method) < _mc_rank(kept_for_mc):
                kept_for_mc, mc_model = method, model
            if progress is not None:
                progress(f"{ds}/{model_name}/{method}/seed {seed}", runs[-1])
    mc = None
    if kept_for_mc is not None:
        data = datasets["digits"]
        mc = {"method": kept_for_mc, "model": "cnn2d", "dataset": "digits",
              **mc_section(mc_model, data.x_test.to(device), data.y_test.to(device),
                           samples=config.mc_samples, noise_images=config.noise_images,
                           seed=config.data_seed)}
    return {"config": dataclasses.asdict(config), "device": str(device),
            "torch_threads": torch.get_num_threads(), "runs": runs,
            "summary": summarize(runs), "mc": mc}


_MC_ORDER = ("dropout", "gaussian", "spatial", "vanilla", "dropblock", "droppath")


def _mc_rank(method: str | None) -> int:
    """Preference of a method's model for MC dropout (``none`` and unknown: never)."""
    return _MC_ORDER.index(method) if method in _MC_ORDER else len(_MC_ORDER)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each (dataset, model, method), in run order."""
    import statistics

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["model"], run["method"]), []).append(run)
    rows = []
    for (ds, model, method), group in groups.items():
        row: dict[str, Any] = {"dataset": ds, "model": model, "method": method,
                               "p": group[0]["p"], "epochs": group[0]["epochs"],
                               "seeds": len(group)}
        for key in ("test_acc", "train_acc", "gap", "sec_per_epoch"):
            values = [r[key] for r in group]
            row[key] = statistics.fmean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def _set_threads(threads: int | None) -> int | None:
    """Set torch's thread count (dropkit's numba kernels follow it); returns the previous one."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return previous


def _device(name: str) -> Any:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device (a ValueError for anything else, and
    for CUDA when it is not available)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"`--device` must be cpu or cuda, got {name!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`--device {name}` was asked, but CUDA is not available "
                         f"(torch {torch.__version__}); use --device cpu.")
    return device
