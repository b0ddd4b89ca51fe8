"""Smoke tests of ``dropkit bench`` (tiny tensors, few repeats): table, JSON and argument errors.

The DropBlock peers (torchvision, timm, the dropblock package) are not dependencies and are not
installed here: their adaptation and the peer targets are tested with stand-in modules placed in
``sys.modules``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import re
import sys
import types

import pytest
import torch

import dropkit.cli
from dropkit.cli import bench

ROW_FIELDS = {
    "op", "pass", "provider", "impl", "dtype", "numel", "shape", "p", "threads", "median_ms",
    "min_ms", "traffic_bytes_per_element", "gb_per_s", "ratio_vs_torch", "saved_bytes",
    "saved_bytes_per_element", "block_size",
}
TIMED = {  # (op, pass) -> providers that must appear
    ("dropout", "fwd"): {"dropkit", "torch", "floor", "reference"},
    ("dropout", "fwd+bwd"): {"dropkit", "torch", "floor"},
    ("dropout2d", "fwd"): {"dropkit", "torch"},
    ("dropout2d", "fwd+bwd"): {"dropkit", "torch"},
    ("dropblock2d", "fwd"): {"dropkit", "floor"},
    ("dropblock2d", "fwd+bwd"): {"dropkit", "floor"},
    ("drop_path", "fwd"): {"dropkit", "torch", "floor"},
    ("drop_path", "fwd+bwd"): {"dropkit", "torch", "floor"},
}
SMALL = ["--numel", "4096", "--dropblock-shape", "2,4,8,8", "--block-sizes", "3,4",
         "--repeat", "2", "--warmup", "2"]
NO_PEERS = {name: f"{name} not installed" for name in ("torchvision", "timm", "dropblock")}


@pytest.fixture
def no_peers(monkeypatch):
    """Whatever is installed, the run sees none of the DropBlock peers."""
    monkeypatch.setattr(bench, "_dropblock_peers", lambda block=7: ([], dict(NO_PEERS), {}))


def test_bench_smoke(tmp_path, capsys, no_peers):
    path = tmp_path / "bench.json"
    argv = ["bench", "--numel", "4096", "--repeat", "3", "--warmup", "2", "--p", "0.25",
            "--dtype", "float32,bfloat16", "--threads", "1", "--json", str(path),
            "--dropblock-shape", "2,4,8,8", "--block-sizes", "3,4"]
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
                 "F.dropout2d", "dropkit.functional.drop_block2d(x, p, 3, per_channel=True)",
                 "dropkit.functional.drop_block2d(x, p, 4, per_channel=True)",
                 "dropkit.functional.drop_block2d(x, p, 7, per_channel=False)",
                 "dropkit.functional.drop_path", "torch reference (timm-style drop_path)"):
        assert impl in out
    assert "wrote " + str(path) in out
    assert ("note: dropblock2d peers not installed (no rows, targets not measured): "
            "torchvision, timm, dropblock") in out

    report = json.loads(path.read_text())
    assert report["config"] == {
        "numel": 4096, "shape": [4, 32, 4, 8], "p": 0.25, "dtypes": ["float32", "bfloat16"],
        "threads": 1, "warmup": 2, "repeat": 3, "backend": "auto",
        "ops": ["dropout", "dropout2d", "dropblock2d", "drop_path"],
        "dropblock_shape": [2, 4, 8, 8], "block_sizes": [3, 4],
    }
    env = report["environment"]
    for key in ("date", "torch", "numba", "cpu_model", "torch_threads", "platform"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert env["dropblock_peers"] == {}
    assert report["notes"] == list(NO_PEERS.values())

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
            numel = 2 * 4 * 8 * 8 if r["op"] == "dropblock2d" else 4096
            assert r["numel"] == numel and r["p"] == 0.25 and r["threads"] == 1
            assert math.prod(r["shape"]) == numel
            expected_shape = {"dropout": [4096], "dropout2d": [4, 32, 4, 8],
                              "dropblock2d": [2, 4, 8, 8], "drop_path": [256, 16]}
            assert r["shape"] == expected_shape[r["op"]]
            assert 0 < r["min_ms"] <= r["median_ms"]
            passes = 2 if r["pass"] == "fwd" else 4
            expected_traffic = element_size * (1 if r["provider"] == "reference" else passes)
            assert r["traffic_bytes_per_element"] == expected_traffic
            assert r["gb_per_s"] == pytest.approx(
                expected_traffic * numel / (r["median_ms"] * 1e-3) / 1e9
            )
            torch_row = next(
                (t for t in mine
                 if (t["op"], t["pass"], t["provider"]) == (r["op"], r["pass"], "torch")),
                None,
            )
            if r["provider"] == "torch" or torch_row is None:  # no torch DropBlock
                assert r["ratio_vs_torch"] is None
                assert r["op"] == "dropblock2d" or r["provider"] == "torch"
            else:
                assert r["ratio_vs_torch"] == pytest.approx(
                    torch_row["median_ms"] / r["median_ms"]
                )
            if r["provider"] == "dropkit":
                # Measured with saved_tensors_hooks: only the 2 x int64 Philox key is kept.
                assert r["saved_bytes"] == 16
                assert r["saved_bytes_per_element"] == pytest.approx(16 / numel)
            if r["provider"] == "reference":
                assert r["saved_bytes"] is None
            if r["op"] == "dropblock2d" and r["provider"] == "dropkit":
                per_channel = r["block_size"] in (3, 4)
                assert r["impl"] == (f"dropkit.functional.drop_block2d(x, p, {r['block_size']}, "
                                     f"per_channel={per_channel})")
            else:
                assert r["block_size"] is None
        for pass_ in ("fwd", "fwd+bwd"):
            blocks = [(r["block_size"], r["impl"].endswith("per_channel=True)")) for r in mine
                      if (r["op"], r["pass"], r["provider"]) == ("dropblock2d", pass_, "dropkit")]
            assert blocks == [(3, True), (4, True), (7, False)]
        # torch's CPU dropout keeps a mask of the input's size for backward (measured too).
        torch_fb = next(r for r in mine if (r["op"], r["pass"], r["provider"]) ==
                        ("dropout", "fwd+bwd", "torch"))
        assert torch_fb["saved_bytes"] >= 4096 * element_size

    targets = report["targets"]
    assert {t["dtype"] for t in targets} == {"float32", "bfloat16"}
    assert "Targets" in out and ("[met]" in out or "[MISSED]" in out)
    for dtype in ("float32", "bfloat16"):
        mine = [t for t in targets if t["dtype"] == dtype]
        spread = [t for t in mine if "independent of block size" in t["target"]]
        assert len(spread) == 2  # fwd and fwd+bwd
        for t in spread:
            pass_ = "fwd+bwd" if "fwd+bwd" in t["target"] else "fwd"
            times = [r["median_ms"] for r in rows if r["dtype"] == dtype
                     and (r["op"], r["pass"], r["provider"]) == ("dropblock2d", pass_, "dropkit")
                     and r["block_size"] in (3, 4)]
            ratio = max(times) / min(times)
            assert t["measured"].startswith(f"{ratio:.2f} over block sizes 3,4 ")
            assert t["met"] is (ratio <= 1.25)
        # The peers are absent: their targets are reported as not measured, never as numbers.
        unmeasured = [t for t in mine if t["met"] is None]
        assert [t["measured"] for t in unmeasured] == [
            "torchvision not installed", "timm not installed", "timm not installed"
        ]
        assert all(isinstance(t["met"], bool) for t in mine if t not in unmeasured)
    assert ("[not measured] float32: dropblock2d fwd+bwd (per_channel=True, block 7) >= 5x "
            "faster than torchvision.ops.drop_block2d (torchvision not installed)") in out


def test_ops_selects_the_rows(capsys, no_peers):
    assert dropkit.cli.main(["bench", *SMALL, "--ops", "drop_path,dropblock2d"]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("\nop "):out.index("\ntorch/this")].strip().splitlines()[2:]
    ops = {line.split()[0] for line in lines if line}
    assert ops == {"dropblock2d", "drop_path"}
    assert "ops=dropblock2d,drop_path " in out  # table order, whatever the order given
    assert "F.dropout" not in out and "dropout fwd" not in out

    assert dropkit.cli.main(["bench", *SMALL, "--ops", "dropout"]) == 0
    out = capsys.readouterr().out
    assert "peers" not in out and "dropblock2d" not in out and "drop_path" not in out
    assert "dropkit.functional.dropout" in out


def _module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    """A stand-in module ``name`` in ``sys.modules`` (undone after the test)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def _fake_peers(monkeypatch, timm_style: str) -> list[tuple]:
    """Stand-ins for torchvision, timm (new ``couple_channels`` or old ``batchwise`` API, or
    neither) and the dropblock package; returns the log of the calls they receive."""
    calls: list[tuple] = []

    def tv_drop_block2d(input, p, block_size, inplace=False, eps=1e-06, training=True):
        calls.append(("torchvision", p, block_size, inplace, eps, training))
        return input * 1.5

    if timm_style == "new":
        def drop_block_2d(x, drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False,
                          inplace=False, couple_channels=True, scale_by_keep=True):
            calls.append(("timm fn", drop_prob, block_size, couple_channels))
            return x * 1.5
    elif timm_style == "old":
        def drop_block_2d(x, drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False,
                          inplace=False, batchwise=False):
            calls.append(("timm fn", drop_prob, block_size, batchwise))
            return x * 1.5
    else:
        def drop_block_2d(x, drop_prob=0.1, block_size=7):
            calls.append(("timm fn", drop_prob, block_size))
            return x * 1.5

    class DropBlock2d(torch.nn.Module):
        def __init__(self, drop_prob=0.1, block_size=7):
            super().__init__()
            self.args = (drop_prob, block_size)

        def forward(self, x):
            calls.append(("timm module", *self.args, self.training))
            return x * 2.0

    class DropBlock2D(torch.nn.Module):
        def __init__(self, drop_prob, block_size):
            super().__init__()

        def forward(self, x):
            raise RuntimeError("stand-in failure\nsecond line")

    tv_ops = _module(monkeypatch, "torchvision.ops", drop_block2d=tv_drop_block2d)
    _module(monkeypatch, "torchvision", ops=tv_ops, __version__="0.0-fake")
    layers = _module(monkeypatch, "timm.layers", drop_block_2d=drop_block_2d,
                     DropBlock2d=DropBlock2d)
    _module(monkeypatch, "timm", layers=layers, __version__="1.0-fake")
    _module(monkeypatch, "dropblock", DropBlock2D=DropBlock2D)
    return calls


@pytest.mark.parametrize(
    ("style", "per_channel_impl", "per_channel_call"),
    [
        ("new", "timm drop_block_2d(x, p, 7, couple_channels=False) [per-channel]",
         ("timm fn", 0.25, 7, False)),
        ("old", "timm drop_block_2d(x, p, 7, batchwise=False) [per-channel]",
         ("timm fn", 0.25, 7, False)),
        ("neither", None, None),
    ],
)
def test_peer_adaptation(monkeypatch, style, per_channel_impl, per_channel_call):
    calls = _fake_peers(monkeypatch, style)
    peers, absent, versions = bench._dropblock_peers(7)
    assert absent == {}
    assert versions == {"torchvision": "0.0-fake", "timm": "1.0-fake", "dropblock": None}
    impls = [peer.impl for peer in peers]
    expected = ["torchvision.ops.drop_block2d(x, p, 7) [per-channel]",
                per_channel_impl,
                "timm DropBlock2d(p, 7).train() [default]",
                "dropblock.DropBlock2D(p, 7).train() [shared channels]"]
    assert impls == [impl for impl in expected if impl is not None]
    x = torch.ones(1, 2, 8, 8)
    for peer in peers[:-1]:
        assert peer.fn(x, 0.25).shape == x.shape
    expected_calls = [("torchvision", 0.25, 7, False, 1e-06, True), per_channel_call,
                      ("timm module", 0.25, 7, True)]
    assert calls == [c for c in expected_calls if c is not None]
    with pytest.raises(RuntimeError, match="stand-in failure"):
        peers[-1].fn(x, 0.25)


def test_peers_not_installed_or_broken(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert bench._dropblock_peers(7) == ([], NO_PEERS, {})
    monkeypatch.undo()
    _fake_peers(monkeypatch, "new")
    del sys.modules["timm"].layers  # an import that fails is a note, not a crash
    monkeypatch.setitem(sys.modules, "timm.layers", None)
    peers, absent, _ = bench._dropblock_peers(7)
    assert {peer.provider for peer in peers} == {"torchvision", "dropblock"}
    # timm.layers fails, then the pre-0.9 location timm.models.layers is tried and fails too.
    assert set(absent) == {"timm"}
    assert absent["timm"] == ("timm unusable: ModuleNotFoundError: No module named "
                              "'timm.models'; 'timm' is not a package")


def test_dropblock_with_peers(monkeypatch, tmp_path, capsys):
    _fake_peers(monkeypatch, "new")
    path = tmp_path / "bench.json"
    argv = ["bench", *SMALL, "--block-sizes", "3,7", "--ops", "dropblock2d", "--p", "0.25",
            "--json", str(path)]
    assert dropkit.cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "not installed" not in out
    # The dropblock stand-in raises: one printed line per failed row, no row, and the reason is
    # kept in the JSON notes.
    failure = ("dropblock.DropBlock2D(p, 7).train() [shared channels] failed (float32, fwd): "
               "RuntimeError: stand-in failure second line")
    assert f"note: {failure}; row skipped" in out
    report = json.loads(path.read_text())
    assert report["notes"] == [failure]
    assert report["environment"]["dropblock_peers"] == {
        "torchvision": "0.0-fake", "timm": "1.0-fake", "dropblock": None
    }
    rows = report["rows"]
    assert {r["op"] for r in rows} == {"dropblock2d"}
    for pass_ in ("fwd", "fwd+bwd"):
        assert [(r["provider"], r["block_size"]) for r in rows if r["pass"] == pass_] == [
            ("dropkit", 3), ("dropkit", 7), ("dropkit", 7), ("floor", None),
            ("torchvision", 7), ("timm", 7), ("timm", 7),
        ]
    ours = next(r for r in rows if r["pass"] == "fwd+bwd"
                and r["impl"] == "dropkit.functional.drop_block2d(x, p, 7, per_channel=True)")
    checks = {t["target"]: t for t in report["targets"]}
    prefix = "dropblock2d fwd+bwd (per_channel=True, block 7) "
    for target, impl, factor in [
        (">= 5x faster than torchvision.ops.drop_block2d",
         "torchvision.ops.drop_block2d(x, p, 7) [per-channel]", 5.0),
        (">= 2x faster than timm's per-channel drop_block_2d (couple_channels=False)",
         "timm drop_block_2d(x, p, 7, couple_channels=False) [per-channel]", 2.0),
        ("never slower than timm's default DropBlock2d",
         "timm DropBlock2d(p, 7).train() [default]", 1.0),
    ]:
        theirs = next(r for r in rows if r["pass"] == "fwd+bwd" and r["impl"] == impl)
        speedup = theirs["median_ms"] / ours["median_ms"]
        check = checks[prefix + target]
        assert check["measured"] == (f"{speedup:.2f}x ({ours['median_ms']:.2f} vs "
                                     f"{theirs['median_ms']:.2f} ms median, {impl})")
        assert check["met"] is (speedup >= factor)
        tag = "met" if check["met"] else "MISSED"
        assert f"[{tag}] float32: {prefix}{target}: {check['measured']}" in out


def _row(pass_, provider, impl, median_ms, block_size=7):
    return bench.Row(
        op="dropblock2d", pass_=pass_, provider=provider, impl=impl, dtype="float32", numel=512,
        shape=[2, 4, 8, 8], p=0.1, threads=2, median_ms=median_ms, min_ms=median_ms,
        traffic_bytes_per_element=8, gb_per_s=1.0, ratio_vs_torch=None, saved_bytes=16,
        saved_bytes_per_element=16 / 512, block_size=block_size,
    )


def test_dropblock_targets_read_the_rows():
    def ours(block, per_channel=True):
        return f"dropkit.functional.drop_block2d(x, p, {block}, per_channel={per_channel})"

    rows = [
        _row("fwd", "dropkit", ours(3), 10.0, 3),
        _row("fwd", "dropkit", ours(9), 13.0, 9),  # 1.3 > 1.25
        _row("fwd", "dropkit", ours(7, False), 100.0),  # shared masks: not in the spread
        _row("fwd+bwd", "dropkit", ours(3), 11.0, 3),
        _row("fwd+bwd", "dropkit", ours(5), 12.0, 5),  # 12.0 / 10.0 = 1.2 <= 1.25
        _row("fwd+bwd", "dropkit", ours(7), 10.0),
        _row("fwd+bwd", "dropkit", ours(7, False), 100.0),
        _row("fwd+bwd", "floor", "x * 2.0", 1.0, None),
        _row("fwd+bwd", "torchvision", "torchvision.ops.drop_block2d(x, p, 7) [per-channel]",
             50.0),  # exactly 5x: met
        _row("fwd+bwd", "timm",
             "timm drop_block_2d(x, p, 7, couple_channels=False) [per-channel]", 19.9),
    ]
    checks = bench.check_targets(rows, {"dropblock": "dropblock not installed"})
    assert [(c["met"], c["measured"]) for c in checks] == [
        (False, "1.30 over block sizes 3,9 (10.00 ms at 3 .. 13.00 ms at 9, median)"),
        (True, "1.20 over block sizes 3,5,7 (10.00 ms at 7 .. 12.00 ms at 5, median)"),
        (True, "5.00x (10.00 vs 50.00 ms median, torchvision.ops.drop_block2d(x, p, 7) "
               "[per-channel])"),
        (False, "1.99x (10.00 vs 19.90 ms median, timm drop_block_2d(x, p, 7, "
                "couple_channels=False) [per-channel])"),
        (None, "no timm row with [default]"),
    ]
    lines = bench.format_checks(checks).splitlines()
    assert lines[0].startswith("[MISSED] float32: dropblock2d fwd (per_channel=True) time nearly "
                               "independent of block size: max/min <= 1.25: 1.30 over")
    assert lines[2] == (
        "[met] float32: dropblock2d fwd+bwd (per_channel=True, block 7) >= 5x faster than "
        "torchvision.ops.drop_block2d: 5.00x (10.00 vs 50.00 ms median, "
        "torchvision.ops.drop_block2d(x, p, 7) [per-channel])"
    )
    assert lines[4] == (
        "[not measured] float32: dropblock2d fwd+bwd (per_channel=True, block 7) never slower "
        "than timm's default DropBlock2d (no timm row with [default])"
    )
    # Without the block-7 per-channel row the peers cannot be compared; without rows of a
    # peer, the reason given for it is reported.
    checks = bench.check_targets(rows[:3] + rows[8:], {"timm": "timm not installed"})
    assert [(c["met"], c["measured"]) for c in checks] == [
        (False, "1.30 over block sizes 3,9 (10.00 ms at 3 .. 13.00 ms at 9, median)"),
        (None, "block 7 not in --block-sizes"),
        (None, "block 7 not in --block-sizes"),
        (None, "timm not installed"),
    ]


def test_peer_targets_need_block_7(monkeypatch, capsys):
    _fake_peers(monkeypatch, "new")
    assert dropkit.cli.main(["bench", *SMALL, "--ops", "dropblock2d"]) == 0
    out = capsys.readouterr().out
    assert ("[not measured] float32: dropblock2d fwd+bwd (per_channel=True, block 7) >= 5x "
            "faster than torchvision.ops.drop_block2d (block 7 not in --block-sizes)") in out


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
        (["--ops", "dropblock"], r"`--ops` entries must be one of dropout, dropout2d, "
                                 r"dropblock2d, drop_path \(or all\), got 'dropblock'"),
        (["--ops", ","], r"`--ops` must name at least one op"),
        (["--block-sizes", "3,0"], r"`--block-sizes` must be a comma list of positive integers, "
                                   r"got '3,0'"),
        (["--block-sizes", ""], r"`--block-sizes` must be a comma list of positive integers"),
        (["--block-sizes", "3,x"], r"`--block-sizes` must be a comma list of integers, got '3,x'"),
        (["--dropblock-shape", "2,3,4"], r"`--dropblock-shape` must be four positive integers"),
        (["--dropblock-shape", "2,3,a,4"], r"`--dropblock-shape` must be four integers"),
        (["--device", "tpu"], r"`--device` must be cpu or cuda\[:N\], got 'tpu'"),
        (["--size", "16"], r"`--size` applies only with --device cuda\."),
        (["--size", "0"], r"`--size` applies only with --device cuda\."),
        (["--quick"], r"`--quick` applies only with --device cuda\."),
        (["--sweep", "10"], r"`--sweep` applies only with --device cuda\."),
        (["--bda-shape", "4,4"], r"`--bda-shape` applies only with --device cuda\."),
        (["--compile-backend", "eager"], r"`--compile-backend` applies only with --device cuda"),
    ],
)
def test_bad_arguments_exit_2(args, message, capsys):
    assert dropkit.cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err  # one line
    assert err.startswith("dropkit bench: error: `")
    assert re.search(message, err), err


def test_unparsable_number_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        dropkit.cli.main(["bench", "--numel", "lots"])
    assert info.value.code == 2
    assert "invalid int value: 'lots'" in capsys.readouterr().err


# ----------------------------------------------------------------- GPU suite (--device cuda)
# There is no GPU here: the suite's measuring and reporting functions take the device and the
# timer as arguments and run on CPU tensors with tiny sizes. The CUDA-events timer is only
# checked against stand-in events; its real timing needs a GPU.

TINY_GPU = {
    "device": "cpu", "dtypes": ["float32", "bfloat16"], "size_bytes": 4096 * 4, "warmup": 2,
    "repeat": 3, "sweep": [10, 11], "bda_shape": (16, 32), "dropblock_shapes": [(2, 4, 8, 8)],
    "compile_backend": None,
}
GPU_ROW_FIELDS = {
    "suite", "pass", "provider", "impl", "dtype", "shape", "numel", "p", "median_ms", "p10_ms",
    "p90_ms", "repeat", "traffic_bytes_per_element", "gb_per_s", "pct_of_copy", "saved_bytes",
    "saved_bytes_per_element", "speedup", "dropkit_speedup",
}


class CountingTimer:
    """Runs each call once (every timed function really executes) and returns ``repeat`` copies
    of the next number: 1.0 for the first timed row, 2.0 for the second, ..."""

    def __init__(self):
        self.count = 0

    def __call__(self, call, reset, warmup, repeat):
        reset()
        call()
        reset()
        self.count += 1
        return [float(self.count)] * repeat


def _element_size(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def test_gpu_suite_runs_on_cpu_with_every_row_and_column():
    from dropkit import functional as DF

    cfg = bench.GpuConfig(**TINY_GPU)
    notes: list[str] = []
    rows = bench.measure_gpu(cfg, CountingTimer(), notes)
    # One timer call per row, in the order of the rows: nothing is timed twice or dropped.
    assert [r.median_ms for r in rows] == [float(i) for i in range(1, len(rows) + 1)]
    fused = hasattr(DF, "bias_dropout_add")
    assert notes == ([] if fused else [
        "dropkit.functional.bias_dropout_add is not available in this build: no dropkit "
        "bias_dropout_add row (its target is not measured)"])
    providers = {
        "dropout": ["dropkit", "torch"], "sweep": ["dropkit", "torch"],
        "bias_dropout_add": ["dropkit", "torch"] if fused else ["torch"],
        "dropblock2d": ["dropkit", "torchvision", "timm", "timm"],
    }
    expected_order = []
    for suite in bench.GPU_SUITES:
        for dtype in cfg.dtypes:
            size = _element_size(dtype)
            shapes = {"dropout": [[4096 * 4 // size]], "sweep": [[1024], [2048]],
                      "bias_dropout_add": [[16, 32]], "dropblock2d": [[2, 4, 8, 8]]}[suite]
            for shape in shapes:
                expected_order.append((suite, dtype, shape, "copy", "copy"))
                expected_order += [(suite, dtype, shape, pass_, provider)
                                   for provider in providers[suite]
                                   for pass_ in bench.GPU_PASSES[suite]]
    assert [(r.suite, r.dtype, r.shape, r.pass_, r.provider) for r in rows] == expected_order

    copies = {(r.suite, r.dtype, tuple(r.shape)): r for r in rows if r.provider == "copy"}
    for r in rows:
        size = _element_size(r.dtype)
        assert r.numel == math.prod(r.shape) and r.p == 0.1 and r.repeat == 3
        assert r.p10_ms == r.median_ms == r.p90_ms
        units = {"copy": 2, "fwd": 2, "bwd": 2, "fwd+bwd": 4}[r.pass_]
        if r.suite == "bias_dropout_add" and r.pass_ != "copy":
            units = {"fwd": 3, "bwd": 2, "fwd+bwd": 5}[r.pass_]
        assert r.traffic_bytes_per_element == units * size
        assert r.gb_per_s == pytest.approx(units * size * r.numel / (r.median_ms * 1e-3) / 1e9)
        copy = copies[(r.suite, r.dtype, tuple(r.shape))]
        assert r.pct_of_copy == pytest.approx(100 * r.gb_per_s / copy.gb_per_s)
        ours = next(o for o in rows if (o.suite, o.dtype, o.shape, o.pass_, o.provider) ==
                    (r.suite, r.dtype, r.shape, r.pass_, "dropkit")) if r.pass_ != "copy" \
            else None
        if r.provider in ("copy", "dropkit"):
            assert r.dropkit_speedup is None
        else:
            assert r.dropkit_speedup == pytest.approx(r.median_ms / ours.median_ms)
            assert ours.speedup[r.impl] == r.dropkit_speedup
        if r.provider == "dropkit":
            peers = {o.impl for o in rows if (o.suite, o.dtype, o.shape, o.pass_) ==
                     (r.suite, r.dtype, r.shape, r.pass_) and o.provider != "dropkit"}
            assert set(r.speedup) == peers
        # Bytes kept for backward, measured with saved_tensors_hooks on the same tensors.
        numel = r.numel
        if r.provider == "copy":
            assert r.saved_bytes is None and r.saved_bytes_per_element is None
            assert r.pct_of_copy == pytest.approx(100.0)
        elif r.provider == "dropkit":
            assert r.saved_bytes == 16  # the 2 x int64 Philox key
            assert r.saved_bytes_per_element == pytest.approx(16 / numel)
        elif r.provider == "torch":  # torch's CPU dropout keeps a mask in x's dtype
            assert r.saved_bytes == numel * size
        elif r.provider == "torchvision":  # the noise, and the 0-dim normalize_scale
            assert r.saved_bytes == numel * size + size
        elif bench.PER_CHANNEL_TAG in r.impl:  # timm, one mask per channel
            assert r.saved_bytes == numel * size
        else:  # timm's default: one (B, 1, H, W) mask shared by the channels
            assert r.saved_bytes == numel * size // r.shape[1]
        if r.provider in ("torchvision", "timm") and importlib.util.find_spec(r.provider) is None:
            assert r.impl.endswith(" (copied code)")

    table = bench.format_gpu_table(rows)
    lines = table.splitlines()
    for column in ("suite", "pass", "provider", "impl", "dtype", "shape", "median ms", "p10 ms",
                   "p90 ms", "GB/s", "% copy", "saved B", "saved B/elem", "dropkit x"):
        assert column in lines[0]
    assert len([line for line in lines[2:] if line]) == len(rows)
    assert "timm drop_block_2d(x, p, 7) [default]" in table


def test_gpu_suite_compiled_peer_rows_on_cpu():
    # torch.compile with the "eager" backend: dynamo traces F.dropout, no C++ compiler needed.
    cfg = bench.GpuConfig(**{**TINY_GPU, "dtypes": ["float32"], "suites": ["dropout", "sweep"],
                             "sweep": [10], "compile_backend": "eager"})
    notes: list[str] = []
    rows = bench.measure_gpu(cfg, CountingTimer(), notes)
    assert notes == []
    compiled = [r for r in rows if r.provider == "torch.compile"]
    assert [(r.suite, r.pass_) for r in compiled] == [
        ("dropout", "fwd"), ("dropout", "bwd"), ("dropout", "fwd+bwd"), ("sweep", "fwd+bwd")]
    for r in compiled:
        assert r.impl == "torch.compile(F.dropout) [eager]"
        assert r.saved_bytes == r.numel * 4  # the mask, as eager F.dropout on CPU
        assert r.dropkit_speedup is not None


def _gpu_row(suite, pass_, provider, impl, ms, dtype="float32", shape=(10**6,), units=2):
    numel = math.prod(shape)
    traffic = units * _element_size(dtype)
    return bench.GpuRow(
        suite=suite, pass_=pass_, provider=provider, impl=impl, dtype=dtype, shape=list(shape),
        numel=numel, p=0.1, median_ms=ms, p10_ms=ms, p90_ms=ms, repeat=50,
        traffic_bytes_per_element=traffic, gb_per_s=traffic * numel / (ms * 1e-3) / 1e9,
    )


def test_gpu_ratios_and_targets_from_fixed_times():
    tv = "torchvision.ops.drop_block2d(x, p, 7) [per-channel] (copied code)"
    timm = "timm drop_block_2d(x, p, 7, couple_channels=False) [per-channel] (copied code)"
    block = (2, 4, 8, 8)
    rows = [
        _gpu_row("dropout", "copy", "copy", "y.copy_(x)", 1.0),
        _gpu_row("dropout", "fwd", "dropkit", "dk", 1.0),  # 100% of the copy
        _gpu_row("dropout", "bwd", "dropkit", "dk", 1.25),  # 80%
        _gpu_row("dropout", "fwd+bwd", "dropkit", "dk", 2.0, units=4),
        _gpu_row("dropout", "fwd+bwd", "torch", "F.dropout(x, p)", 2.5, units=4),  # 1.25x
        _gpu_row("dropout", "fwd+bwd", "torch.compile", "compiled", 1.6, units=4),  # 0.80x
        _gpu_row("sweep", "copy", "copy", "y.copy_(x)", 0.1, shape=(1024,)),
        _gpu_row("sweep", "fwd+bwd", "dropkit", "dk", 1.0, shape=(1024,), units=4),
        _gpu_row("sweep", "fwd+bwd", "torch", "F.dropout(x, p)", 0.5, shape=(1024,), units=4),
        _gpu_row("sweep", "fwd+bwd", "dropkit", "dk", 1.0, shape=(2048,), units=4),
        _gpu_row("sweep", "fwd+bwd", "torch", "F.dropout(x, p)", 2.0, shape=(2048,), units=4),
        _gpu_row("bias_dropout_add", "fwd+bwd", "dropkit", "bda", 1.0, "bfloat16", units=5),
        _gpu_row("bias_dropout_add", "fwd+bwd", "torch", "eager", 2.0, "bfloat16", units=5),
        _gpu_row("dropblock2d", "copy", "copy", "y.copy_(x)", 0.5, shape=block),
        _gpu_row("dropblock2d", "fwd+bwd", "dropkit", "db", 1.0, shape=block, units=4),
        _gpu_row("dropblock2d", "fwd+bwd", "torchvision", tv, 2.9, shape=block, units=4),
        _gpu_row("dropblock2d", "fwd+bwd", "timm", timm, 2.0, shape=block, units=4),
    ]
    bench.link_gpu_rows(rows)
    assert [r.pct_of_copy for r in rows[:6]] == pytest.approx([100, 100, 80, 100, 80, 125])
    assert rows[6].pct_of_copy == 100 and rows[7].pct_of_copy == pytest.approx(20.0)
    assert rows[9].pct_of_copy is None  # no copy row for 2**11 elements
    assert rows[4].dropkit_speedup == pytest.approx(1.25)
    assert rows[5].dropkit_speedup == pytest.approx(0.8)
    assert rows[3].speedup == pytest.approx({"F.dropout(x, p)": 1.25, "compiled": 0.8})
    assert rows[1].speedup == {} and rows[0].dropkit_speedup is None
    assert rows[14].speedup == pytest.approx({tv: 2.9, timm: 2.0})

    checks = bench.check_gpu_targets(rows)
    assert [(c["dtype"], c["met"], c["measured"]) for c in checks] == [
        ("float32", True, "100.0% (8.0 GB/s)"),
        ("float32", False, "80.0% (6.4 GB/s)"),
        ("float32", True, "1.25x (2.0000 vs 2.5000 ms median, F.dropout(x, p))"),
        ("float32", False, "min 0.50x (1.0000 vs 0.5000 ms median, F.dropout(x, p)) at 2^10"),
        ("float32", False, "0.80x (2.0000 vs 1.6000 ms median, compiled)"),
        ("float32", False, f"2.90x (1.0000 vs 2.9000 ms median, {tv})"),
        ("float32", True, f"2.00x (1.0000 vs 2.0000 ms median, {timm})"),
        ("bfloat16", True, "2.00x (1.0000 vs 2.0000 ms median, eager)"),
    ]
    assert [c["target"] for c in checks] == [
        "dropout fwd >= 90% of the same-run y.copy_(x) bandwidth (2 x element size bytes per "
        "element)",
        "dropout bwd >= 90% of the same-run y.copy_(x) bandwidth (2 x element size bytes per "
        "element)",
        "dropout fwd+bwd >= 1.1x faster than F.dropout",
        "dropout fwd+bwd never slower than F.dropout at any swept size (2^10,2^11)",
        "dropout fwd+bwd >= 1x faster than torch.compile(F.dropout)",
        "drop_block2d fwd+bwd (2, 4, 8, 8) >= 3x faster than torchvision's per-channel DropBlock",
        "drop_block2d fwd+bwd (2, 4, 8, 8) >= 2x faster than timm's per-channel DropBlock",
        "bias_dropout_add fwd+bwd >= 2x faster than residual + F.dropout(x + bias, p) (eager)",
    ]
    # The bfloat16 targets are 1.2x (F.dropout) and 2x (bias_dropout_add, bfloat16 only); a
    # missing peer row is "not measured", never a number.
    rows = [_gpu_row("dropout", "fwd+bwd", "dropkit", "dk", 1.0, "bfloat16", units=4),
            _gpu_row("dropout", "fwd+bwd", "torch", "F.dropout(x, p)", 1.19, "bfloat16",
                     units=4),
            _gpu_row("bias_dropout_add", "fwd+bwd", "torch", "eager", 2.0, "bfloat16", units=5),
            _gpu_row("bias_dropout_add", "fwd+bwd", "torch", "eager", 2.0, units=5)]
    bench.link_gpu_rows(rows)
    checks = bench.check_gpu_targets(rows)
    assert [(c["target"], c["met"], c["measured"]) for c in checks] == [
        ("dropout fwd+bwd >= 1.2x faster than F.dropout", False,
         "1.19x (1.0000 vs 1.1900 ms median, F.dropout(x, p))"),
        ("dropout fwd+bwd >= 1x faster than torch.compile(F.dropout)", None,
         "no torch.compile row (not run, or see the notes)"),
        ("bias_dropout_add fwd+bwd >= 2x faster than residual + F.dropout(x + bias, p) (eager)",
         None, "no dropkit row (not run, or see the notes)"),
    ]
    assert bench.format_checks(checks).splitlines()[2] == (
        "[not measured] bfloat16: bias_dropout_add fwd+bwd >= 2x faster than residual + "
        "F.dropout(x + bias, p) (eager) (no dropkit row (not run, or see the notes))")


def test_saved_bytes_per_element_dropkit_against_torch():
    from dropkit import functional as DF

    x = torch.randn(4096, requires_grad=True)
    assert bench._saved_bytes_of(lambda: DF.dropout(x, 0.1)) == 16  # 0 B/element
    assert bench._saved_bytes_of(lambda: torch.nn.functional.dropout(x, 0.1)) == 4096 * 4
    h = torch.randn(4096, dtype=torch.bfloat16, requires_grad=True)
    assert bench._saved_bytes_of(lambda: torch.nn.functional.dropout(h, 0.1)) == 4096 * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [3, 4])
def test_peer_copies_compute_what_their_sources_compute(dtype, block):
    """The copies in dropkit.cli._peers against the look-alikes of tests/test_convert.py (copied
    from the same sources) and, where installed, the packages themselves: same draws from
    torch's generator, same outputs, bit for bit."""
    import test_convert
    from dropkit.cli import _peers

    x = torch.randn(2, 3, 10, 9, dtype=dtype)
    pairs = [] if block % 2 == 0 else [  # torchvision's output has the wrong size for even ones
        (lambda t: _peers.torchvision_drop_block2d(t, 0.3, block),
         lambda t: test_convert.tv_drop_block(t, 0.3, block)),
    ]
    pairs += [
        (lambda t: _peers.timm_drop_block_2d(t, 0.3, block, couple_channels=False),
         lambda t: test_convert.timm_drop_block_2d(t, 0.3, block, couple_channels=False)),
        (lambda t: _peers.timm_drop_block_2d(t, 0.3, block),
         lambda t: test_convert.timm_drop_block_2d(t, 0.3, block)),
    ]
    for copy, source in pairs:
        torch.manual_seed(7)
        ours = copy(x)
        torch.manual_seed(7)
        theirs = source(x)
        assert torch.equal(ours, theirs)
        dropped = ours == 0
        assert dropped.any() and not dropped.all()
    # Per-channel masks differ between channels; timm's default shares one across channels.
    torch.manual_seed(3)
    shared = _peers.timm_drop_block_2d(torch.ones(2, 3, 10, 9), 0.3, block) == 0
    assert torch.equal(shared[:, :1].expand_as(shared), shared)


def test_peer_copies_match_installed_packages():
    from dropkit.cli import _peers

    x = torch.randn(2, 3, 10, 9)
    checked = 0
    for module, attr, copy in (("torchvision.ops", "drop_block2d",
                                lambda t: _peers.torchvision_drop_block2d(t, 0.3, 3)),
                               ("timm.layers", "drop_block_2d",
                                lambda t: _peers.timm_drop_block_2d(t, 0.3, 3,
                                                                    couple_channels=False))):
        fn, _ = bench._installed(module, attr, "couple_channels" if "timm" in module else None)
        if fn is None:
            continue
        kwargs = {"couple_channels": False} if "timm" in module else {}
        torch.manual_seed(7)
        ours = copy(x)
        torch.manual_seed(7)
        assert torch.equal(ours, fn(x, 0.3, 3, **kwargs))
        checked += 1
    if not checked:
        pytest.skip("neither torchvision nor a timm with couple_channels is installed")


@pytest.mark.parametrize("timm_style", ["new", "old"])
def test_gpu_dropblock_peers_prefer_the_installed_packages(monkeypatch, timm_style):
    calls = _fake_peers(monkeypatch, timm_style)
    peers, sources = bench._gpu_dropblock_peers(7)
    impls = [impl for _, impl, _ in peers]
    assert impls[0] == "torchvision.ops.drop_block2d(x, p, 7) [per-channel]"  # the stand-in
    assert sources["torchvision"] == "torchvision 0.0-fake"
    x = torch.ones(1, 2, 8, 8)
    peers[0][2](x, 0.25)
    assert calls[0] == ("torchvision", 0.25, 7, False, 1e-06, True)
    if timm_style == "new":  # a timm with couple_channels is timed itself
        assert impls[1:] == ["timm drop_block_2d(x, p, 7, couple_channels=False) [per-channel]",
                             "timm drop_block_2d(x, p, 7) [default]"]
        assert sources["timm"] == "timm 1.0-fake"
        peers[1][2](x, 0.25)
        assert calls[1] == ("timm fn", 0.25, 7, False)
    else:  # an older timm: the copy of the current drop_block_2d
        assert impls[1:] == [
            "timm drop_block_2d(x, p, 7, couple_channels=False) [per-channel] (copied code)",
            "timm drop_block_2d(x, p, 7) [default] (copied code)"]
        assert sources["timm"] == ("(copied code) dropkit.cli._peers (timm's drop_block_2d has "
                                   "no `couple_channels` parameter (an older release))")
        assert peers[1][2](x, 0.25).shape == x.shape and len(calls) == 1


def test_gpu_dropblock_peers_fall_back_to_the_copies(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    peers, sources = bench._gpu_dropblock_peers(7)
    assert all(impl.endswith(" (copied code)") for _, impl, _ in peers)
    assert sources == {
        "torchvision": "(copied code) dropkit.cli._peers (torchvision not installed)",
        "timm": "(copied code) dropkit.cli._peers (timm not installed)",
    }


def test_cuda_event_timer_with_stand_in_events(monkeypatch):
    """The event logic only (warm-up, reset outside the timed region, one event pair per call,
    synchronize before reading); real CUDA timing needs a GPU."""
    clock = [0.0]
    log: list[str] = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = clock[0]

        def elapsed_time(self, other):
            assert log[-2:] == ["sync", "reset"]  # read after the final synchronize
            return other.at - self.at

    durations = iter([10.0, 20.0, 1.0, 2.0, 3.0])  # 2 warm-up calls, then 3 timed ones

    def call():
        log.append("call")
        clock[0] += next(durations)

    def reset():
        log.append("reset")
        clock[0] += 100.0  # outside the timed region

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: log.append("sync"))
    assert bench.cuda_event_timer(call, reset, 2, 3) == [1.0, 2.0, 3.0]
    assert log == ["reset", "call"] * 2 + ["sync"] + ["reset", "call"] * 3 + ["sync", "reset"]
    assert bench.timer_for(torch.device("cuda")) is bench.cuda_event_timer
    assert bench.timer_for(torch.device("cpu")) is bench._time_ms


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_device_cuda_without_cuda_is_one_line_exit_2(monkeypatch, capsys, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dropkit.cli.main(["bench", "--device", device, "--quick"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"dropkit bench: error: `--device {device}` was asked, but CUDA is not available "
        f"(torch {torch.__version__}); the GPU benchmark needs a CUDA GPU, use --device cpu "
        "for the CPU one.\n")


def _gpu_args(*argv: str):
    return dropkit.cli._parser().parse_args(["bench", "--device", "cuda", *argv])


def test_gpu_config_defaults_quick_and_options():
    cfg = bench._gpu_config(_gpu_args())
    assert (cfg.dtypes, cfg.size_bytes, cfg.p, cfg.repeat, cfg.warmup) == (
        ["float32", "bfloat16", "float16"], 256 * 2**20, 0.1, 100, 10)
    assert cfg.suites == ["dropout", "sweep", "bias_dropout_add", "dropblock2d"]
    assert cfg.sweep == [10, 15, 20, 25, 30] and cfg.bda_shape == (16384, 8192)
    assert cfg.dropblock_shapes == [(64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14),
                                    (64, 2048, 7, 7)]
    assert (cfg.block_size, cfg.compile_backend, cfg.json_path) == (7, "inductor", None)
    quick = bench._gpu_config(_gpu_args("--quick"))
    assert (quick.size_bytes, quick.repeat, quick.warmup, quick.sweep, quick.bda_shape) == (
        16 * 2**20, 50, 5, [10, 15, 20], (2048, 4096))
    assert [s[0] for s in quick.dropblock_shapes] == [8] * 4
    cfg = bench._gpu_config(_gpu_args(
        "--quick", "--size", "0.5", "--sweep", "12-14,10", "--bda-shape", "8,16",
        "--dropblock-shape", "1,2,8,8", "--compile-backend", "none", "--ops", "sweep,dropout",
        "--dtype", "bfloat16", "--repeat", "7", "--warmup", "2", "--p", "0.25"))
    assert (cfg.size_bytes, cfg.sweep, cfg.bda_shape, cfg.dropblock_shapes) == (
        2**19, [10, 12, 13, 14], (8, 16), [(1, 2, 8, 8)])
    assert (cfg.compile_backend, cfg.suites, cfg.dtypes, cfg.repeat, cfg.warmup, cfg.p) == (
        None, ["dropout", "sweep"], ["bfloat16"], 7, 2, 0.25)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "2"], "`--threads` applies only to the CPU benchmark (not with --device "
                             "cuda)."),
        (["--numel", "64"], "`--numel` applies only to the CPU benchmark"),
        (["--block-sizes", "3"], "`--block-sizes` applies only to the CPU benchmark"),
        (["--size", "0"], "`--size` must be a finite number of MiB, at least 8 bytes, got 0.0."),
        (["--size", "inf"], "`--size` must be a finite number of MiB, at least 8 bytes, got "
                            "inf."),
        (["--sweep", "5-40"], "`--sweep` must be a comma list of exponents or ranges such as "
                              "10-30, each in [0, 32], got '5-40'."),
        (["--sweep", "a"], "`--sweep` must be a comma list of exponents or ranges"),
        (["--bda-shape", "1,2,3"], "`--bda-shape` must be two positive integers ROWS,HIDDEN, "
                                   "got '1,2,3'."),
        (["--ops", "dropout2d"], "`--ops` entries must be one of dropout, sweep, "
                                 "bias_dropout_add, dropblock2d (or all), got 'dropout2d'."),
        (["--repeat", "0"], "`--repeat` must be a positive integer, got 0."),
        (["--p", "2"], "`--p` must be in [0, 1], got 2.0."),
    ],
)
def test_gpu_config_errors(argv, message):
    with pytest.raises(ValueError) as info:
        bench._gpu_config(_gpu_args(*argv))
    assert str(info.value).startswith(message), str(info.value)


def test_gpu_report_header_table_and_json_on_cpu(tmp_path, capsys, monkeypatch):
    """The whole --device cuda report (header, table, targets, notes, JSON), run on the CPU
    device with the wall-clock timer: only the CUDA device and events are left out."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)  # no peers
    path = tmp_path / "gpu.json"
    args = dropkit.cli._parser().parse_args([
        "bench", "--device", "cpu", "--size", str(4096 * 4 / 2**20), "--sweep", "10",
        "--bda-shape", "16,32", "--dropblock-shape", "2,4,8,8", "--repeat", "2",
        "--warmup", "2", "--compile-backend", "none", "--dtype", "float32", "--json", str(path)])
    assert bench._run_gpu(args, torch.device("cpu")) == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    env = report["environment"]
    header = out.splitlines()[0]
    assert header.startswith(f"dropkit bench --device cpu: date={env['date']} gpu=None "
                             f"torch={torch.__version__} triton={env['triton']} ")
    assert env["triton"] == bench._package_version("triton", "pytorch-triton")
    for key in ("date", "gpu", "gpu_capability", "gpu_memory_gib", "cuda", "torch", "triton",
                "dropkit", "dropkit_kernels", "python", "platform", "dropblock_peers"):
        assert key in env
    assert env["dropblock_peers"] == {
        "torchvision": "(copied code) dropkit.cli._peers (torchvision not installed)",
        "timm": "(copied code) dropkit.cli._peers (timm not installed)",
    }
    assert report["notes"] == [
        "torchvision rows time (copied code) dropkit.cli._peers (torchvision not installed)",
        "timm rows time (copied code) dropkit.cli._peers (timm not installed)",
        "--repeat 2 is below 50: the targets ask for the median of at least 50 calls",
    ]
    for note in report["notes"]:
        assert f"note: {note}" in out
    assert report["config"] == {
        "device": "cpu", "dtypes": ["float32"], "size_bytes": 16384, "p": 0.1, "warmup": 2,
        "repeat": 2, "suites": list(bench.GPU_SUITES), "sweep": [10], "bda_shape": [16, 32],
        "dropblock_shapes": [[2, 4, 8, 8]], "block_size": 7, "compile_backend": None,
    }
    rows = report["rows"]
    assert all(set(r) == GPU_ROW_FIELDS for r in rows)
    assert {r["suite"] for r in rows} == set(bench.GPU_SUITES)
    assert all(r["repeat"] == 2 and r["median_ms"] > 0 for r in rows)
    assert "% copy" in out and "dropkit x" in out and "Targets (stated for an NVIDIA H200" in out
    for check in report["targets"]:
        tag = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
        assert f"[{tag}] float32: {check['target']}" in out
    assert f"wrote {path}" in out
