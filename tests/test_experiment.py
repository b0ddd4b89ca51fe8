"""``dropkit experiment`` and :mod:`dropkit.experiment` on a tiny budget."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from dropkit.cli import main
from dropkit.experiment import MATRIX, METHODS, ExperimentConfig, run_experiment
from dropkit.experiment.data import load_mnist1d
from dropkit.experiment.report import CSV_COLUMNS

TINY = {"epochs": {"cnn1d": 1, "mlp": 1, "cnn2d": 1}, "mnist1d_samples": 400,
        "mc_samples": 2, "noise_images": 8}


def test_cli_writes_table_and_files(tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["experiment", "--quick", "--quiet", "--epochs", "1", "--seeds", "2",
                 "--methods", "none,droppath", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert captured.err == ""  # --quiet: no progress lines either
    assert "test acc % (mean ± std)" in printed and "MC dropout" in printed
    for name in ("runs.csv", "results.json", "accuracy.png", "curves.png", "masks.png",
                 "mc_entropy.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    # none on all three models, droppath only on the residual digits CNN; two seeds each.
    assert [(r["model"], r["method"], r["seed"]) for r in rows] == [
        (m, meth, s) for m, meth in (("cnn1d", "none"), ("mlp", "none"), ("cnn2d", "none"),
                                     ("cnn2d", "droppath")) for s in ("0", "1")]
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and r["epochs"] == "1"
        assert float(r["gap"]) == pytest.approx(float(r["train_acc"]) - float(r["test_acc"]))
    result = json.loads((out / "results.json").read_text())
    assert result["mc"]["method"] == "droppath"
    assert sum(result["mc"]["count"][k] for k in ("correct", "misclassified")) == 360
    assert result["mc"]["count"]["noise"] == 500
    assert len(result["summary"]) == 4


def test_one_run_off_a_terminal(tmp_path, capsys):
    # capsys' stderr is no terminal: one line per finished run instead of a (disabled) bar;
    # one seed and one thread are written in the singular, a single seed has no ± spread.
    out = tmp_path / "one"
    code = main(["experiment", "--quick", "--epochs", "1", "--methods", "droppath",
                 "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert re.fullmatch(r"\[1/1\] digits/cnn2d/droppath/seed 0: test acc \d+\.\d\d%, "
                        r"\d+\.\d s\n", captured.err), captured.err
    lines = captured.out.splitlines()
    row = next(line for line in lines if line.startswith("digits "))
    assert re.search(r" \d+\.\d\d \(n=1\) ", row), row
    assert "±" not in row
    assert re.fullmatch(r"dropkit experiment: 1 run in \d+ s on cpu \(1 torch thread\), "
                        rf"files in {re.escape(str(out))}", lines[-1]), lines[-1]
    with (out / "runs.csv").open() as f:
        (run,) = list(csv.DictReader(f))
    for key, decimals in (("train_acc", 6), ("test_acc", 6), ("gap", 6),
                          ("sec_per_epoch", 4)):
        assert len(run[key].partition(".")[2]) <= decimals, (key, run[key])
    full = json.loads((out / "results.json").read_text())["runs"][0]
    assert float(run["gap"]) == pytest.approx(full["train_acc"] - full["test_acc"], abs=2e-6)
    assert float(run["test_acc"]) == pytest.approx(full["test_acc"], abs=1e-6)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_leaves_no_copy_of_its_last_line():
    from dropkit.cli.experiment import _Progress

    stream = _Terminal()
    with _Progress(3, stream=stream) as step:
        for i in range(3):
            time.sleep(0.12)  # past tqdm's mininterval, so that each update is drawn
            step(f"run {i}", {"test_acc": 0.5})
    text = stream.getvalue()
    assert "3/3" in text and "run 2" in text  # the bar was drawn, with its label
    assert text.count("3/3") == 1  # not drawn again by close()
    assert "\n" not in text  # cleared at the end: the table starts on a clean line
    assert "test acc" not in text  # no per-run lines on a terminal


def test_progress_quiet_prints_nothing():
    from dropkit.cli.experiment import _Progress

    for stream in (_Terminal(), io.StringIO()):
        with _Progress(2, quiet=True, stream=stream) as step:
            step("a", {"test_acc": 0.5})
        assert stream.getvalue() == ""


def test_interrupted_experiment_removes_its_empty_output_folder(tmp_path, monkeypatch, capsys):
    import dropkit.experiment

    def interrupted(config, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(dropkit.experiment, "run_experiment", interrupted)
    assert main(["experiment", "--quick", "--out", str(tmp_path / "exp")]) == 130
    assert capsys.readouterr().err == "dropkit experiment: interrupted\n"
    assert not (tmp_path / "exp").exists()


def test_same_seed_same_accuracies():
    config = ExperimentConfig(seeds=1, methods=("dropblock-linear", "dropconnect"), **TINY)

    def accuracies() -> list[tuple[float, float]]:
        return [(r["train_acc"], r["test_acc"]) for r in run_experiment(config)["runs"]]

    first = accuracies()
    assert len(first) == 2 + 1 + 2  # cnn1d (both), mlp (dropconnect), cnn2d (both)
    assert accuracies() == first


def test_matrix_uses_known_methods():
    assert {m for methods in MATRIX.values() for m in methods} == set(METHODS)


def test_mnist1d_generated_offline_and_leaves_global_rng(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    split = load_mnist1d(seed=7, num_samples=200)
    assert np.random.rand() == expected
    assert split.x_train.shape == (160, 1, 40) and split.x_test.shape == (40, 1, 40)
    assert torch.equal(load_mnist1d(seed=7, num_samples=200).x_train, split.x_train)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "dropout,nope"], "none, dropout, vanilla"),
        (["--seeds", "0"], "`--seeds` must be in [1, 100]"),
        (["--epochs", "x"], "`--epochs` must be an int"),
        (["--device", "tpu"], "`--device` must be cpu or cuda"),
        (["--out", " "], "`--out`"),
    ],
)
def test_bad_arguments_one_line_exit_2(tmp_path, capsys, argv, message):
    assert main(["experiment", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line(capsys):
    assert main(["experiment", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1


def test_missing_extra_gives_install_hint(monkeypatch, capsys, tmp_path):
    import dropkit.cli.experiment as cli

    monkeypatch.setattr(cli, "_missing", lambda: ["mnist1d"])
    assert main(["experiment", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert 'pip install -e ".[experiment]" (run in the dropkit repository clone)' in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_import_stays_light():
    # torch itself may import tqdm: only what the dropkit imports add counts.
    code = ("import sys, torch; before = set(sys.modules); "
            "import dropkit, dropkit.experiment, dropkit.cli.experiment; "
            "print(sorted(m for m in ('mnist1d', 'sklearn', 'tqdm', 'matplotlib') "
            "if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_masks_png_row_drops_something():
    import dataclasses

    from dropkit.experiment.report import mask_rows

    config = dataclasses.asdict(ExperimentConfig())
    rows = mask_rows(config)
    assert len(rows) == 1 + len([m for m in METHODS if m != "none"])
    assert not rows[0][2].any()  # the input row
    for label, values, dropped in rows[1:]:
        assert values.shape == dropped.shape == (4, 8, 8), label
        if label.startswith("gaussian"):  # scales every element by noise, drops none
            assert not torch.equal(values, rows[0][1]), label
            continue
        assert dropped.any() and not dropped.all(), label
        assert bool((values[dropped] == 0).all()), label  # what is marked is a zero output
    spatial = next(r for r in rows if r[0].startswith("spatial"))
    per_channel = spatial[2].flatten(1)
    assert all(bool(c.all()) or not bool(c.any()) for c in per_channel)  # whole channels
    assert mask_rows(config)[1][0] == rows[1][0]  # the seed choice is deterministic


def _fake_result(methods_per_panel: dict[tuple[str, str], tuple[str, ...]],
                 epochs: int = 6) -> dict:
    from dropkit.experiment import summarize

    runs = []
    for (ds, model), methods in methods_per_panel.items():
        for k, method in enumerate(methods):
            curve = [0.1 + 0.1 * e + 0.01 * k for e in range(epochs)]
            runs.append({"dataset": ds, "model": model, "method": method, "seed": 0,
                         "p": 0.1, "epochs": epochs, "train_acc": curve[-1],
                         "test_acc": curve[-1], "gap": 0.0, "sec_per_epoch": 0.1,
                         "curve": curve})
    return {"runs": runs, "summary": summarize(runs)}


def test_curves_png_one_colour_per_method_integer_epochs_first_epochs_shown():
    from dropkit.experiment.report import _curves_figure

    # The same method sits at different positions in different panels.
    result = _fake_result({("a", "m1"): ("none", "dropout", "gaussian"),
                           ("b", "m2"): ("gaussian", "spatial", "dropout")})
    fig = _curves_figure(result)
    fig.canvas.draw()
    colours: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlim()[0] < 1  # epoch 1 is inside the axes
        low = min(min(line.get_ydata()) for line in ax.get_lines())
        assert ax.get_ylim()[0] <= low  # the first epochs' (low) accuracies are visible
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # distinct methods
