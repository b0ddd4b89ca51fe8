"""The results table, the CSV and JSON files and the PNG plots of an experiment.

matplotlib is used through its Agg canvas (no pyplot), imported inside the plotting functions.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["CSV_COLUMNS", "table", "write_files"]

CSV_COLUMNS = ("dataset", "model", "method", "seed", "p", "epochs", "train_acc", "test_acc",
               "gap", "sec_per_epoch")


def table(result: dict[str, Any]) -> str:
    """A plain-text table: one row per (dataset, model, method), then the MC-dropout numbers."""
    head = (f"{'dataset':<8} {'model':<6} {'method':<17} {'p':>4} {'epochs':>6} {'seeds':>5} "
            f"{'test acc % (mean ± std)':>24} {'train-test gap %':>16} {'s/epoch':>8}")
    lines = [head, "-" * len(head)]
    for r in result["summary"]:
        acc = (f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}" if r["seeds"] > 1
               else f"{100 * r['test_acc']:.2f} (n=1)")  # no spread from a single seed
        lines.append(f"{r['dataset']:<8} {r['model']:<6} {r['method']:<17} {r['p']:>4.2f} "
                     f"{r['epochs']:>6} {r['seeds']:>5} {acc:>24} {100 * r['gap']:>16.2f} "
                     f"{r['sec_per_epoch']:>8.3f}")
    mc = result["mc"]
    if mc is not None:
        mean, count = mc["mean_entropy"], mc["count"]
        lines += ["", f"MC dropout (digits cnn2d, method {mc['method']}, {mc['samples']} passes, "
                  f"MC accuracy {100 * mc['mc_accuracy']:.2f}%): mean predictive entropy, nats "
                  f"(eval-mode entropy in brackets)"]
        for group in ("correct", "misclassified", "noise"):
            label = f"{group} ({count[group]})"
            lines.append(f"  {label:<22} {mean[group]:.3f}  "
                         f"[{mean[group + '_deterministic']:.3f}]")
    return "\n".join(lines)


def write_files(result: dict[str, Any], folder: Path, dpi: int = 100) -> list[Path]:
    """Write ``runs.csv``, ``results.json`` and the PNG plots into ``folder``; returns paths."""
    paths = [folder / "runs.csv", folder / "results.json"]
    with _opened(paths[0]) as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(_csv_row(run) for run in result["runs"])
    with _opened(paths[1]) as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    figures = [("accuracy.png", _accuracy_figure(result)),
               ("curves.png", _curves_figure(result)),
               ("masks.png", _masks_figure(result))]
    if result["mc"] is not None:
        figures.append(("mc_entropy.png", _mc_figure(result["mc"])))
    for name, fig in figures:
        path = folder / name
        try:
            fig.savefig(path, dpi=dpi)
        except OSError as err:
            raise OSError(f"cannot write {str(path)!r}: {err.strerror or err}.") from None
        paths.append(path)
    return paths


def _csv_row(run: dict[str, Any]) -> dict[str, Any]:
    """A run as a runs.csv row, rounded: accuracies are counts over at most a few thousand
    examples (6 decimals keep them to 1e-6 and drop float noise such as 0.10350000000000004),
    the gap is the difference of the rounded accuracies, seconds are kept to 0.1 ms.
    results.json keeps the full floats."""
    row = {key: run[key] for key in CSV_COLUMNS}
    row["train_acc"], row["test_acc"] = round(run["train_acc"], 6), round(run["test_acc"], 6)
    row["gap"] = round(row["train_acc"] - row["test_acc"], 6)
    row["sec_per_epoch"] = round(run["sec_per_epoch"], 4)
    return row


def _opened(path: Path) -> Any:
    try:
        return path.open("w", newline="", encoding="utf-8")
    except OSError as err:
        raise OSError(f"cannot write {str(path)!r}: {err.strerror or err}.") from None


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panels(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Summary rows grouped by (dataset, model), in order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in result["summary"]:
        groups.setdefault(f"{row['dataset']} / {row['model']}", []).append(row)
    return list(groups.items())


def _accuracy_figure(result: dict[str, Any]) -> Any:
    colors = method_colors()
    panels = _panels(result)
    fig = _figure(5.0 * max(len(panels), 1), 4.6)
    for ax, (title, rows) in zip(fig.subplots(1, max(len(panels), 1), squeeze=False)[0],
                                 panels, strict=False):
        acc = [100 * r["test_acc"] for r in rows]
        std = [100 * r["test_acc_std"] for r in rows]
        ax.errorbar(range(len(rows)), acc, yerr=std, fmt="none", capsize=4, color="#999999")
        ax.scatter(range(len(rows)), acc, c=[colors[r["method"]] for r in rows], zorder=3)
        ax.axhline(acc[0] if rows[0]["method"] == "none" else math.nan, color="grey",
                   linestyle=":", linewidth=1, label="none")
        ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=35, ha="right")
        ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
        seeds = rows[0]["seeds"]
        ax.set_title(f"{title} ({seeds} seed{'' if seeds == 1 else 's'})")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Test accuracy per dropout method")
    return fig


def method_colors() -> dict[str, str]:
    """One colour per method, the same in every panel and figure (tab10, then black)."""
    from dropkit.experiment import METHODS

    palette = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
               "#e377c2", "#17becf")
    return dict(zip(METHODS, palette, strict=True))


def curve_lines(result: dict[str, Any]) -> list[tuple[str, list[tuple[str, Any, Any]]]]:
    """The data behind ``curves.png``: per panel (dataset / model), ``(method, epochs,
    accuracy %)`` lines, epochs counted from 1 and accuracies the mean over seeds."""
    import numpy as np

    panels = []
    for title, rows in _panels(result):
        lines = []
        for row in rows:
            curves = np.array([r["curve"] for r in result["runs"]
                               if (r["dataset"], r["model"], r["method"])
                               == (row["dataset"], row["model"], row["method"])])
            lines.append((row["method"], np.arange(1, curves.shape[1] + 1),
                          100 * curves.mean(0)))
        panels.append((title, lines))
    return panels


def _curves_figure(result: dict[str, Any]) -> Any:
    from matplotlib.ticker import MaxNLocator

    colors = method_colors()
    panels = curve_lines(result)
    fig = _figure(5.0 * max(len(panels), 1), 4.4)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels, strict=False):
        for method, epochs, acc in lines:
            ax.plot(epochs, acc, label=method, color=colors[method], marker=".",
                    linestyle="-" if method != "none" else "--")
        last = max(len(epochs) for _, epochs, _ in lines)
        low = min(float(acc.min()) for _, _, acc in lines)  # the first epochs included
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylim(max(0.0, low - 5.0), 100.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy, % (mean over seeds)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves")
    return fig


#: Seeds tried per method for masks.png: the first that shows the method's pattern is drawn.
_MASK_SEED_TRIES = 100


def mask_rows(config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The data behind ``masks.png``: ``(label, output, dropped)`` per row, ``output`` and
    ``dropped`` (bool) of shape ``(4, 8, 8)``; the first row is the input.

    Each method acts on one digits test image broadcast to 4 channels (DropPath on 4 samples,
    DropConnect shows the weight mask of an 8x32 layer). Its seed is the first (from
    ``1000 * row``) whose draw shows the method's pattern: something dropped and something kept
    (a rate such as spatial's 0.1 on 4 channels keeps every channel for most seeds); Gaussian
    dropout drops nothing, it scales every element by its own noise. The label names the seed.
    """
    import torch

    import dropkit.nn as dnn

    from .data import load_digits
    from .models import BLOCK_SIZE, drop_layer

    image = load_digits(config["data_seed"]).x_test[0]  # (1, 8, 8)
    x = image.expand(4, 8, 8).unsqueeze(0).contiguous()  # (1, 4, 8, 8)
    rows = [("input (4 copies)", x[0], torch.zeros(4, 8, 8, dtype=torch.bool))]
    for i, method in enumerate(m for m in config["methods"] if m != "none"):
        p = config["p"][method]
        if method == "droppath":
            layer, inp, pick = dnn.DropPath(p), x.expand(4, 4, 8, 8), lambda t: t[:, 0]
            note = "4 samples of a batch"
        elif method == "dropconnect":
            layer = dnn.DropConnectLinear(8, 8 * 4, p=p, bias=False)
            layer.weight.data.fill_(1.0)
            inp, pick = torch.eye(8), lambda t: t.T.reshape(4, 8, 8)  # the weight mask
            note = "weight mask of an 8x32 layer"
        else:
            layer, inp, pick = drop_layer(method, p, 2), x, lambda t: t[0]
            note = ("at the end of the ramp" if method == "dropblock-linear"
                    else f"block {BLOCK_SIZE}" if method == "dropblock"
                    else "whole channels (columns)" if method == "spatial" else "")
        ones = inp if method == "dropconnect" else torch.ones_like(inp)
        for seed in range(1000 * (i + 1), 1000 * (i + 1) + _MASK_SEED_TRIES):
            # The same seed on ones gives the mask: the masks are a pure function of the seed.
            torch.manual_seed(seed)
            out = pick(layer(inp)).detach()
            torch.manual_seed(seed)
            dropped = pick(layer(ones)).detach() == 0
            if method == "gaussian" or (bool(dropped.any()) and not bool(dropped.all())):
                break
        label = f"{method}, p = {p}, seed {seed}" + (f"\n{note}" if note else "")
        rows.append((label, out, dropped))
    return rows


def _masks_figure(result: dict[str, Any]) -> Any:
    """Each method's noise on one digits test image, broadcast to 4 channels (columns)."""
    import numpy as np

    rows = mask_rows(result["config"])
    fig = _figure(8.0, 1.9 * len(rows))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, (label, values, dropped) in enumerate(rows):
        for c in range(4):
            ax = axes[r, c]
            ax.imshow(np.asarray(values[c]), cmap="Greys", vmin=0.0,
                      vmax=max(float(values.max()), 1e-6), interpolation="nearest")
            ax.imshow(np.ma.masked_array(np.ones((8, 8)), mask=~np.asarray(dropped[c])),
                      cmap="autumn", vmin=0.0, vmax=1.0, alpha=0.8, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("What each method drew on a digits test image (grey: the output, yellow: "
                 "dropped)", fontsize=10)
    return fig


def _mc_figure(mc: dict[str, Any]) -> Any:
    import numpy as np

    fig = _figure(7.0, 4.4)
    ax = fig.subplots()
    bins = np.linspace(0.0, math.log(10), 31)
    for group, color in (("correct", "#2c7fb8"), ("misclassified", "#d95f0e"),
                         ("noise", "#7f7f7f")):
        values = mc["entropies"][group]
        ax.hist(values, bins=bins, density=True, alpha=0.55, color=color,
                label=f"{group} (n = {len(values)}, mean {mc['mean_entropy'][group]:.3f})")
    ax.set_xlabel("predictive entropy, nats (max ln 10 = 2.303)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(f"MC dropout on digits (cnn2d, {mc['method']}, {mc['samples']} passes): "
                 "test images vs uniform noise", fontsize=10)
    return fig
