"""Smoke tests of ``dropkit bench`` (tiny tensors, few repeats): table, JSON and argument errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import dropkit.cli
from dropkit.cli import bench

ROW_FIELDS = {
    "op", "pass", "provider", "impl", "dtype", "numel", "shape", "p", "threads", "median_ms",
    "min_ms", "traffic_bytes_per_element", "gb_per_s", "ratio_vs_torch", "saved_bytes",
    "saved_bytes_per_element",
}
TIMED = {  # (op, pass) -> providers that must appear
    ("dropout", "fwd"): {"dropkit", "torch", "floor", "reference"},
    ("dropout", "fwd+bwd"): {"dropkit", "torch", "floor"},
    ("dropout2d", "fwd"): {"dropkit", "torch"},
    ("dropout2d", "fwd+bwd"): {"dropkit", "torch"},
}


def test_bench_smoke(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["bench", "--numel", "4096", "--repeat", "3", "--warmup", "2", "--p", "0.25",
            "--dtype", "float32,bfloat16", "--threads", "1", "--json", str(path)]
    threads_before = torch.get_num_threads()
    assert dropkit.cli.main(argv) == 0
    assert torch.get_num_threads() == threads_before  # --threads is undone after the run

    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    for column in ("provider", "dtype", "numel", "median ms", "min ms", "GB/s", "torch/this",
                   "saved B/elem"):
        assert column in header
    for impl in ("dropkit.functional.dropout", "F.dropout", "x * 2.0", "x.clone()",
                 "empty_like(x).fill_(1) [fresh alloc]", "dropkit.functional.spatial_dropout2d",
                 "F.dropout2d"):
        assert impl in out
    assert "wrote " + str(path) in out

    report = json.loads(path.read_text())
    assert report["config"] == {
        "numel": 4096, "shape": [4, 32, 4, 8], "p": 0.25, "dtypes": ["float32", "bfloat16"],
        "threads": 1, "warmup": 2, "repeat": 3, "backend": "auto",
    }
    env = report["environment"]
    for key in ("date", "torch", "numba", "cpu_model", "torch_threads", "platform"):
        assert key in env
    assert env["torch"] == torch.__version__

    rows = report["rows"]
    for dtype in ("float32", "bfloat16"):
        element_size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        mine = [r for r in rows if r["dtype"] == dtype]
        for (op, pass_), providers in TIMED.items():
            assert {r["provider"] for r in mine if (r["op"], r["pass"]) == (op, pass_)} == (
                providers
            )
        for r in mine:
            assert set(r) == ROW_FIELDS
            assert r["numel"] == 4096 and r["p"] == 0.25 and r["threads"] == 1
            assert math.prod(r["shape"]) == 4096
            assert 0 < r["min_ms"] <= r["median_ms"]
            passes = 2 if r["pass"] == "fwd" else 4
            expected_traffic = element_size * (1 if r["provider"] == "reference" else passes)
            assert r["traffic_bytes_per_element"] == expected_traffic
            assert r["gb_per_s"] == pytest.approx(
                expected_traffic * 4096 / (r["median_ms"] * 1e-3) / 1e9
            )
            torch_row = next(
                t for t in mine
                if (t["op"], t["pass"], t["provider"]) == (r["op"], r["pass"], "torch")
            )
            if r["provider"] == "torch":
                assert r["ratio_vs_torch"] is None
            else:
                assert r["ratio_vs_torch"] == pytest.approx(
                    torch_row["median_ms"] / r["median_ms"]
                )
            if r["provider"] == "dropkit":
                # Measured with saved_tensors_hooks: only the 2 x int64 Philox key is kept.
                assert r["saved_bytes"] == 16
                assert r["saved_bytes_per_element"] == pytest.approx(16 / 4096)
            if r["provider"] == "reference":
                assert r["saved_bytes"] is None
        # torch's CPU dropout keeps a mask of the input's size for backward (measured too).
        torch_fb = next(r for r in mine if (r["op"], r["pass"], r["provider"]) ==
                        ("dropout", "fwd+bwd", "torch"))
        assert torch_fb["saved_bytes"] >= 4096 * element_size

    targets = report["targets"]
    assert {t["dtype"] for t in targets} == {"float32", "bfloat16"}
    assert all(isinstance(t["met"], bool) for t in targets)
    assert "Targets" in out and ("[met]" in out or "[MISSED]" in out)


def test_saved_bytes_measures_what_autograd_keeps():
    x = torch.randn(1000)
    assert bench._saved_bytes(lambda t, p: t * 2.0, x, 0.1) <= 8  # a scalar at most
    assert bench._saved_bytes(lambda t, p: t * t, x, 0.1) == 4000  # one tensor, deduplicated
    assert bench._saved_bytes(lambda t, p: t.exp() * t, x, 0.1) == 8000


def test_derive_shape_keeps_numel():
    for numel in (1, 7, 4096, 3 * 5 * 7 * 11, 2**24, 1000003):
        shape = bench.derive_shape(numel)
        assert len(shape) == 4 and math.prod(shape) == numel and min(shape) >= 1
    assert bench.derive_shape(2**24) == bench.DEFAULT_SHAPE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--numel", "0"], r"`--numel` must be a positive integer, got 0"),
        (["--numel", "-5"], r"`--numel` must be a positive integer, got -5"),
        (["--p", "1.5"], r"`--p` must be in \[0, 1\], got 1.5"),
        (["--p", "-0.1"], r"`--p` must be in \[0, 1\], got -0.1"),
        (["--p", "nan"], r"`--p` must be in \[0, 1\], got nan"),
        (["--dtype", "int8"], r"`--dtype` entries must be one of .*got 'int8'"),
        (["--dtype", "float32,float8"], r"got 'float8'"),
        (["--dtype", ","], r"`--dtype` must name at least one dtype"),
        (["--repeat", "0"], r"`--repeat` must be a positive integer, got 0"),
        (["--warmup", "1"], r"`--warmup` must be at least 2, got 1"),
        (["--threads", "0"], r"`--threads` must be a positive integer, got 0"),
        (["--backend", "cuda"], r"`--backend` must be one of auto, numba, torch, got 'cuda'"),
        (["--shape", "2,3,4"], r"`--shape` must be four positive integers"),
        (["--shape", "2,3,a,4"], r"`--shape` must be four integers"),
        (["--shape", "2,3,4,0"], r"`--shape` must be four positive integers"),
        (["--shape", "2,3,4,5", "--numel", "100"], r"has 120 elements but `--numel` is 100"),
    ],
)
def test_bad_arguments_exit_2(args, message, capsys):
    assert dropkit.cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err  # one line
    assert err.startswith("dropkit bench: error: bench: ")
    assert re.search(message, err), err


def test_unparsable_number_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        dropkit.cli.main(["bench", "--numel", "lots"])
    assert info.value.code == 2
    assert "invalid int value: 'lots'" in capsys.readouterr().err
