"""Smoke tests of ``dropkit bench`` on CPU (tiny tensors, few repeats): table, JSON and argument
errors. The GPU suite (``--device cuda``) is tested in ``tests/test_bench_gpu.py``, which uses the
peer stand-ins defined here.

The DropBlock peers (torchvision, timm, the dropblock package) are not dependencies and are not
installed here: their adaptation and the peer targets are tested with stand-in modules placed in
``sys.modules``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import sys
import types

import pytest
import torch

import dropkit.cli
from dropkit.cli import bench
from helpers import assert_cli_error, run_cli

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
        "attention_shapes": [list(s) for s in bench.DEFAULT_ATTENTION_SHAPES],
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


def test_saved_bytes_per_element_dropkit_against_torch():
    from dropkit import functional as DF

    x = torch.randn(4096, requires_grad=True)
    assert bench._saved_bytes_of(lambda: DF.dropout(x, 0.1)) == 16  # 0 B/element
    assert bench._saved_bytes_of(lambda: torch.nn.functional.dropout(x, 0.1)) == 4096 * 4
    h = torch.randn(4096, dtype=torch.bfloat16, requires_grad=True)
    assert bench._saved_bytes_of(lambda: torch.nn.functional.dropout(h, 0.1)) == 4096 * 2


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
                                 r"dropblock2d, drop_path, attention \(or all\), got 'dropblock'"),
        (["--attention-shapes", "2x3x4"], r"`--attention-shapes` must be four positive "
                                          r"integers N,H,L,E, got '2x3x4'"),
        (["--attention-shapes", "1x2x8x4,1x2xax4"], r"`--attention-shapes` must be four "
                                                    r"integers N,H,L,E, got '1x2xax4'"),
        (["--attention-shapes", ","], r"`--attention-shapes` must name at least one NxHxLxE"),
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
def test_bad_arguments_exit_2(args, message):
    result = run_cli(["bench", *args])
    assert_cli_error(result, "bench", message)
    assert result[2].startswith("dropkit bench: error: `")


def test_unparsable_number_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        dropkit.cli.main(["bench", "--numel", "lots"])
    assert info.value.code == 2
    assert "invalid int value: 'lots'" in capsys.readouterr().err


ATTENTION_SMALL = ["--ops", "attention", "--attention-shapes", "1x2x8x4,2x1x16x4", "--repeat",
                   "2", "--warmup", "2", "--dtype", "float32,bfloat16"]


def test_attention_rows(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert dropkit.cli.main(["bench", *ATTENTION_SMALL, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "attention shapes=1x2x8x4,2x1x16x4 " in out
    report = json.loads(path.read_text())
    assert report["config"]["ops"] == ["attention"]
    assert report["config"]["attention_shapes"] == [[1, 2, 8, 4], [2, 1, 16, 4]]
    rows = report["rows"]
    assert {r["op"] for r in rows} == {"attention"}
    assert len(rows) == 2 * 2 * 2 * 2  # dtypes x shapes x passes x providers
    for r in rows:
        assert set(r) == ROW_FIELDS
        n, h, length, e = r["shape"]
        assert r["numel"] == n * h * length * e and r["p"] == pytest.approx(0.1)
        element_size = torch.empty((), dtype=getattr(torch, r["dtype"])).element_size()
        assert r["traffic_bytes_per_element"] == element_size * (4 if r["pass"] == "fwd" else 8)
        assert 0 < r["min_ms"] <= r["median_ms"]
        label = "x".join(map(str, r["shape"]))
        name = {"torch": "F.scaled_dot_product_attention",
                "dropkit": "dropkit.functional.scaled_dot_product_attention"}[r["provider"]]
        assert r["impl"] == f"{name}(q, k, v, dropout_p=p) {label}"
        if r["provider"] == "dropkit":
            # q, k, v, the output, a float32 log-sum-exp per query row and the 16-byte key.
            assert r["saved_bytes"] == 4 * r["numel"] * element_size + n * h * length * 4 + 16
            torch_row = next(t for t in rows if (t["dtype"], t["pass"], t["shape"], t["provider"])
                             == (r["dtype"], r["pass"], r["shape"], "torch"))
            assert r["ratio_vs_torch"] == pytest.approx(torch_row["median_ms"] / r["median_ms"])
            # torch's math SDPA keeps at least the L x S weights.
            assert torch_row["saved_bytes"] >= n * h * length * length * element_size
        else:
            assert r["ratio_vs_torch"] is None
    checks = [t for t in report["targets"] if t["target"].startswith("attention")]
    assert len(checks) == 2 * (2 * 2 + 1 + 2)  # per dtype: 2 shapes x 2 passes, 1.5x, memory
    assert all(t["met"] is True for t in checks if "O(L)" in t["target"])
    assert [t["measured"] for t in checks if t["met"] is None] == [
        "1x8x2048x64 not in --attention-shapes"] * 2


def test_attention_is_not_in_the_default_ops(capsys, no_peers):
    assert bench._parse_ops(None, bench.OP_NAMES, bench.DEFAULT_OPS) == [
        "dropout", "dropout2d", "dropblock2d", "drop_path"]
    assert bench._parse_ops("all", bench.OP_NAMES, bench.DEFAULT_OPS)[-1] == "attention"


def _attention_row(pass_, provider, median_ms, shape=(1, 8, 2048, 64), saved=None):
    numel = math.prod(shape)
    return bench.Row("attention", pass_, provider, provider, "float32", numel, list(shape), 0.1, 2,
                     median_ms, median_ms, 16, 1.0, None, saved,
                     None if saved is None else saved / numel)


def test_attention_targets_read_the_rows():
    n, h, length, e = 1, 8, 2048, 64
    inputs = 4 * n * h * length * e * 4
    rows = [_attention_row("fwd", "torch", 10.0), _attention_row("fwd", "dropkit", 12.0),
            _attention_row("fwd+bwd", "torch", 30.0),
            _attention_row("fwd+bwd", "dropkit", 15.0, saved=inputs + 4 * n * h * length + 16)]
    checks = {t["target"]: t for t in bench.check_targets(rows)}
    slow = checks["attention fwd 1x8x2048x64 never slower than torch's SDPA"]
    assert slow["met"] is False and slow["measured"].startswith("0.83x (12.00 vs 10.00 ms")
    assert checks["attention fwd+bwd 1x8x2048x64 never slower than torch's SDPA"]["met"] is True
    fast = checks["attention fwd+bwd 1x8x2048x64 >= 1.5x faster than torch's SDPA"]
    assert fast["met"] is True and fast["measured"].startswith("2.00x")
    memory = next(t for t in checks.values() if "O(L)" in t["target"])
    assert memory["met"] is True and f"{4 * n * h * length + 16} B beyond" in memory["measured"]
    # An L x S tensor kept for backward misses the memory target; 1.4x misses the speed one.
    rows[3] = _attention_row("fwd+bwd", "dropkit", 30.0 / 1.4, saved=inputs + n * h * length**2)
    checks = {t["target"]: t for t in bench.check_targets(rows)}
    assert checks["attention fwd+bwd 1x8x2048x64 >= 1.5x faster than torch's SDPA"]["met"] is False
    assert next(t for t in checks.values() if "O(L)" in t["target"])["met"] is False


def test_saved_bytes_by_storage_counts_whole_storages():
    x = torch.randn(1000, requires_grad=True)
    y = x * 1.0  # a non-leaf whose views are saved
    assert bench._saved_bytes_of(lambda: y[:10] * y[:10]) == 40
    assert bench._saved_bytes_of(lambda: y[:10] * y[:10], by_storage=True) == 4000
    assert bench._saved_bytes_of(lambda: y[:10] * y[10:20], by_storage=True) == 4000  # one storage
