"""Tests of ``dropkit bench --device cuda``, the GPU suite (:mod:`dropkit.cli.bench_gpu`).

There is no GPU here: the suite's measuring and reporting functions take the device and the timer
as arguments and run on CPU tensors with tiny sizes. The CUDA-events timer is only checked against
stand-in events; its real timing needs a GPU. The DropBlock peers are the stand-in modules of
``tests/test_bench.py`` (``_fake_peers``) or the copies in :mod:`dropkit.cli._peers`.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

import dropkit.cli
from dropkit.cli import bench, bench_gpu
from test_bench import _fake_peers

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

    cfg = bench_gpu.GpuConfig(**TINY_GPU)
    notes: list[str] = []
    rows = bench_gpu.measure_gpu(cfg, CountingTimer(), notes)
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
                                   for pass_ in bench_gpu.GPU_PASSES[suite]]
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

    table = bench_gpu.format_gpu_table(rows)
    lines = table.splitlines()
    for column in ("suite", "pass", "provider", "impl", "dtype", "shape", "median ms", "p10 ms",
                   "p90 ms", "GB/s", "% copy", "saved B", "saved B/elem", "dropkit x"):
        assert column in lines[0]
    assert len([line for line in lines[2:] if line]) == len(rows)
    assert "timm drop_block_2d(x, p, 7) [default]" in table


def test_gpu_suite_compiled_peer_rows_on_cpu():
    # torch.compile with the "eager" backend: dynamo traces F.dropout, no C++ compiler needed.
    cfg = bench_gpu.GpuConfig(**{**TINY_GPU, "dtypes": ["float32"], "suites": ["dropout", "sweep"],
                             "sweep": [10], "compile_backend": "eager"})
    notes: list[str] = []
    rows = bench_gpu.measure_gpu(cfg, CountingTimer(), notes)
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
    return bench_gpu.GpuRow(
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
    bench_gpu.link_gpu_rows(rows)
    assert [r.pct_of_copy for r in rows[:6]] == pytest.approx([100, 100, 80, 100, 80, 125])
    assert rows[6].pct_of_copy == 100 and rows[7].pct_of_copy == pytest.approx(20.0)
    assert rows[9].pct_of_copy is None  # no copy row for 2**11 elements
    assert rows[4].dropkit_speedup == pytest.approx(1.25)
    assert rows[5].dropkit_speedup == pytest.approx(0.8)
    assert rows[3].speedup == pytest.approx({"F.dropout(x, p)": 1.25, "compiled": 0.8})
    assert rows[1].speedup == {} and rows[0].dropkit_speedup is None
    assert rows[14].speedup == pytest.approx({tv: 2.9, timm: 2.0})

    checks = bench_gpu.check_gpu_targets(rows)
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
    bench_gpu.link_gpu_rows(rows)
    checks = bench_gpu.check_gpu_targets(rows)
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
        fn, _ = bench_gpu._installed(module, attr, "couple_channels" if "timm" in module else None)
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
    peers, sources = bench_gpu._gpu_dropblock_peers(7)
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
    peers, sources = bench_gpu._gpu_dropblock_peers(7)
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
    assert bench_gpu.cuda_event_timer(call, reset, 2, 3) == [1.0, 2.0, 3.0]
    assert log == ["reset", "call"] * 2 + ["sync"] + ["reset", "call"] * 3 + ["sync", "reset"]
    assert bench_gpu.timer_for(torch.device("cuda")) is bench_gpu.cuda_event_timer
    assert bench_gpu.timer_for(torch.device("cpu")) is bench._time_ms


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
    cfg = bench_gpu._gpu_config(_gpu_args())
    assert (cfg.dtypes, cfg.size_bytes, cfg.p, cfg.repeat, cfg.warmup) == (
        ["float32", "bfloat16", "float16"], 256 * 2**20, 0.1, 100, 10)
    assert cfg.suites == ["dropout", "sweep", "bias_dropout_add", "dropblock2d"]
    assert cfg.sweep == [10, 15, 20, 25, 30] and cfg.bda_shape == (16384, 8192)
    assert cfg.dropblock_shapes == [(64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14),
                                    (64, 2048, 7, 7)]
    assert (cfg.block_size, cfg.compile_backend, cfg.json_path) == (7, "inductor", None)
    quick = bench_gpu._gpu_config(_gpu_args("--quick"))
    assert (quick.size_bytes, quick.repeat, quick.warmup, quick.sweep, quick.bda_shape) == (
        16 * 2**20, 50, 5, [10, 15, 20], (2048, 4096))
    assert [s[0] for s in quick.dropblock_shapes] == [8] * 4
    cfg = bench_gpu._gpu_config(_gpu_args(
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
        bench_gpu._gpu_config(_gpu_args(*argv))
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
    assert bench_gpu.run(args, torch.device("cpu")) == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    env = report["environment"]
    header = out.splitlines()[0]
    assert header.startswith(f"dropkit bench --device cpu: date={env['date']} gpu=None "
                             f"torch={torch.__version__} triton={env['triton']} ")
    assert env["triton"] == bench_gpu._package_version("triton", "pytorch-triton")
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
