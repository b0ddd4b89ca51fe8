"""``dropkit audit``: the quick grid, its CSV/JSON/PNG, peers (faked), exit codes and errors."""

from __future__ import annotations

import csv
import importlib.machinery
import itertools
import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dropkit.functional as DF
from dropkit import rng
from dropkit._drop_block_numpy import calibrate
from dropkit.cli import audit
from helpers import assert_cli_error, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIELDS = [
    "variant", "provider", "impl", "masks", "shape", "block", "p", "draws", "expected",
    "realized", "rel_err", "se", "se_kind", "se_empirical", "units", "mean_err", "within", "ok",
    "error",
]
QUICK_ROWS = 19
WITHIN = {"3% and 4 SE", "3%", "4 SE", "no", "error"}


def _rows(folder: Path) -> list[dict]:
    return json.loads((folder / "audit.json").read_text())["rows"]


def _within(realized: float, p: float, se: float) -> str:
    rel = abs(realized - p) <= 0.03 * p
    sig = abs(realized - p) <= 4 * se
    return {(True, True): "3% and 4 SE", (True, False): "3%", (False, True): "4 SE",
            (False, False): "no"}[(rel, sig)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, int, str, str]:
    """One quick run with the default draws and seed, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("audit") / "out" / "nested"  # parents are created
    code, out, err = run_cli(["audit", "--quick", "--out", str(folder)])
    return folder, code, out, err


# ----------------------------------------------------------------------------- quick run


def test_quick_audit_passes(quick):
    folder, code, out, err = quick
    assert code == 0, out + err
    assert err == ""
    rows = _rows(folder)
    mine = [r for r in rows if r["provider"] == "dropkit"]
    assert len(mine) == QUICK_ROWS == len(audit.grid(quick=True))
    assert all(r["ok"] is True and r["within"] in WITHIN - {"no", "error"} for r in mine), [
        (r["impl"], r["shape"], r["within"]) for r in mine if not r["ok"]
    ]
    assert {r["variant"] for r in mine} == set(audit.VARIANTS)
    assert {(r["variant"], r["masks"]) for r in mine if r["block"]} == {
        (f"drop_block{d}d", m) for d in (1, 2, 3) for m in ("per channel", "shared")
    }
    # torch is always installed: its dropout and dropout2d are audited as peers.
    peers = {(r["provider"], r["variant"]) for r in rows if r["provider"] != "dropkit"}
    assert {("torch", "dropout"), ("torch", "spatial_dropout2d")} <= peers
    summary = json.loads((folder / "audit.json").read_text())["summary"]
    assert summary["dropkit_rows"] == QUICK_ROWS
    assert summary["dropkit_out_of_tolerance"] == 0
    assert summary["exit_code"] == 0
    assert summary["peer_rows"] == len(rows) - QUICK_ROWS


def test_quick_audit_table(quick):
    folder, _, out, _ = quick
    lines = out.splitlines()
    assert lines[0].startswith("dropkit audit: quick grid, 19 dropkit rows, draws=20, seed=0, "
                               "device=cpu; peers: torch ")
    for variant in audit.VARIANTS:
        assert f"== {variant} ==" in lines
    headers = [line for line in lines if line.startswith("provider ")]
    assert len(headers) == len(audit.VARIANTS)
    for column in ("shape", "block", "masks", "p", "expected", "realized", "rel.err", "se",
                   "se.emp", "units", "mean.err", "within"):
        assert re.search(rf"(^|\s){re.escape(column)}(\s|$)", headers[0]), column
    # One table line per row: the 14x14 block-7 shared row of drop_block2d, with its numbers.
    row = next(r for r in _rows(folder) if r["variant"] == "drop_block2d"
               and r["shape"] == [8, 16, 14, 14] and r["block"] == [7, 7]
               and r["masks"] == "shared")
    line = next(line for line in lines if line.startswith("dropkit   8x16x14x14  7x7    shared"))
    assert f"{row['realized']:.5f}" in line and f"{row['rel_err']:+.2%}" in line
    assert line.endswith(row["within"])
    assert "OUT OF TOLERANCE" not in out
    assert re.fullmatch(
        rf"dropkit audit: all {QUICK_ROWS} dropkit rows within tolerance; \d+ peer rows "
        r"\(0 out of tolerance, 0 errors\); \d+\.\d s", lines[-2]
    ), lines[-2]
    assert lines[-1] == (
        f"dropkit audit: wrote {folder / 'audit.csv'}, {folder / 'audit.json'}, "
        f"{folder / 'audit.png'}"
    )


def test_csv_and_json_fields(quick):
    folder = quick[0]
    report = json.loads((folder / "audit.json").read_text())
    assert set(report) == {"config", "environment", "summary", "rows"}
    assert report["config"] == {
        "quick": True, "draws": 20, "seed": 0, "device": "cpu",
        "input": "torch.ones(shape, dtype=torch.float32)",
        "tolerance": {"relative": 0.03, "standard_errors": 4.0},
    }
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["peers"]["torch"] == torch.__version__
    rows = report["rows"]
    with open(folder / "audit.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == FIELDS
        table = list(reader)
    assert len(table) == len(rows)
    for line, row in zip(table, rows, strict=True):
        assert list(row) == FIELDS
        assert line["variant"] == row["variant"] and line["within"] == row["within"]
        assert line["shape"] == "x".join(map(str, row["shape"]))
        assert float(line["realized"]) == row["realized"]
        assert line["ok"] == str(row["ok"])
    for row in rows:
        p, realized, se = row["p"], row["realized"], row["se"]
        assert row["draws"] == 20 and row["error"] == ""
        assert 0.0 <= realized <= 1.0 and se > 0.0
        assert row["rel_err"] == pytest.approx(realized / p - 1.0, rel=1e-12, abs=1e-15)
        assert row["within"] == _within(realized, p, se)
        assert row["ok"] is (row["within"] != "no")
        shape = row["shape"]
        if row["provider"] != "dropkit":
            assert row["expected"] is None
            assert (row["se_kind"], row["units"]) == ("empirical", shape[0] * 20)
            assert row["se"] == row["se_empirical"]
            continue
        # The empirical error agrees with the exact one (it is only a cross-check).
        assert 0.5 < row["se_empirical"] / se < 2.0, row
        if row["block"] is None:
            p_eff = rng.effective_p(rng.threshold(p))
            assert row["expected"] == p_eff
            per_draw = {"dropout": math.prod(shape), "spatial_dropout2d": shape[0] * shape[1],
                        "drop_path": shape[0]}[row["variant"]]
            assert (row["se_kind"], row["units"]) == ("binomial", per_draw * 20)
            assert se == pytest.approx(math.sqrt(p * (1 - p) / row["units"]))
            # inverted scaling: mean(out) = (1 - realized) / (1 - p_eff)
            assert row["mean_err"] == pytest.approx((1 - realized) / (1 - p_eff) - 1, abs=1e-6)
        else:
            cal = calibrate(shape[2:], row["block"], p)
            assert row["expected"] == cal.expected
            planes = shape[0] * (shape[1] if row["masks"] == "per channel" else 1)
            assert (row["se_kind"], row["units"]) == ("model", planes * 20)
            variance = brute_plane_variance(shape[2:], cal.block, cal.gamma_eff)
            assert se == pytest.approx(math.sqrt(variance / row["units"]), rel=1e-9)
            assert abs(row["mean_err"]) < 1e-6  # scale="batch" preserves the mean exactly


def brute_plane_variance(spatial, block, gamma):
    """Variance of one plane's dropped fraction, by enumerating units and block starts:
    S[u, s] = start s covers unit u; units u, v are both kept iff no seed is in S[u] | S[v]."""
    ranges = [range(n - b + 1) for n, b in zip(spatial, block, strict=True)]
    starts = list(itertools.product(*ranges))
    units = list(itertools.product(*(range(n) for n in spatial)))
    cover = np.array([[all(s <= x <= s + b - 1 for x, s, b in zip(u, start, block, strict=True))
                       for start in starts] for u in units], dtype=np.float64)
    count, both = cover.sum(axis=1), cover @ cover.T
    a = 1.0 - gamma
    pair = count[:, None] + count[None, :]
    return float(np.mean(a ** (pair - both) - a**pair))


def test_block_plane_variance_matches_brute_force_and_simulation():
    for spatial, block, gamma in [((7, 7), (3, 3), 0.02), ((6, 9), (2, 4), 0.05),
                                  ((9,), (4,), 0.1), ((4, 5, 6), (2, 3, 2), 0.03),
                                  ((5, 5), (5, 5), 0.1), ((5,), (1,), 0.2)]:
        assert audit.block_plane_variance(spatial, block, gamma) == pytest.approx(
            brute_plane_variance(spatial, block, gamma), rel=1e-10, abs=1e-15
        )
    # Against draws: 100 x 8 x 16 independent 14x14 planes, block 7 at p = 0.1.
    cal = calibrate((14, 14), (7, 7), 0.1)
    fractions = torch.cat([
        (DF.drop_block2d(torch.ones(8, 16, 14, 14), 0.1, 7, seed=s) == 0)
        .double().mean(dim=(2, 3)).flatten() for s in range(100)
    ])
    model = math.sqrt(audit.block_plane_variance((14, 14), cal.block, cal.gamma_eff))
    assert float(fractions.std()) == pytest.approx(model, rel=0.05)


def test_png_is_a_picture(quick):
    folder = quick[0]
    data = (folder / "audit.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(folder / "audit.png")
    height, width = image.shape[:2]
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert width >= 1000 and height >= 1500, image.shape  # one wide panel per variant, 6 variants
    rgb = image[..., :3]
    assert rgb.std() > 0.05, "audit.png is (nearly) blank"
    packed = (rgb * 255).round().astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    assert len(np.unique(packed)) > 50


def test_seed_makes_runs_reproducible():
    cases = audit.grid(quick=True)
    cpu = torch.device("cpu")
    first, again, other = (audit.audit(cases, 2, seed, cpu) for seed in (5, 5, 6))
    assert first == again
    assert [r.realized for r in first] != [r.realized for r in other]
    assert all(r.ok for r in first + other)  # 2 draws are enough: se is exact, not estimated
    assert audit.format_table(first) == audit.format_table(again)


# ----------------------------------------------------------------------------- peers


def _fake_module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__version__ = "0.0+fake"
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def article_drop_block2d(input, p, block_size, inplace=False, eps=1e-06, training=True):
    """torchvision's signature with the seed article's rule: seeds with probability
    gamma = p / block_size**2 over the whole map, centred blocks (max-pooling), and
    torchvision's odd-size check."""
    if block_size % 2 == 0:
        raise ValueError(f"block size should be odd. Got {block_size}")
    if not training or p == 0.0:
        return input
    gamma = p / block_size**2
    seeds = (torch.rand(input.shape, device=input.device) < gamma).to(input.dtype)
    mask = 1.0 - F.max_pool2d(seeds, block_size, stride=1, padding=block_size // 2)
    return input * mask * (mask.numel() / (eps + mask.sum()))


class TimmDropBlock2d(torch.nn.Module):
    """timm >= 1.0.23's scheme: the paper's gamma (with its valid-region correction) but seeds
    over the whole map, centred blocks, masks shared across channels by default."""

    def __init__(self, drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False,
                 inplace=False, couple_channels=True, scale_by_keep=True, **kwargs):
        super().__init__()
        self.drop_prob, self.block_size = drop_prob, block_size
        self.couple_channels = couple_channels

    def forward(self, x):
        if not self.training or not self.drop_prob:
            return x
        n, c, h, w = x.shape
        k = min(self.block_size, h, w)
        gamma = self.drop_prob * h * w / (k * k * (h - k + 1) * (w - k + 1))
        seeds = (torch.rand(n, 1 if self.couple_channels else c, h, w) < gamma).to(x.dtype)
        mask = 1.0 - F.max_pool2d(seeds, k, stride=1, padding=k // 2)[..., :h, :w]
        return x * mask * (mask.numel() / (mask.sum() + 1e-7))


class BrokenDropBlock2D(torch.nn.Module):
    """A dropblock-like module whose constructor names its rate oddly (an API the audit can't
    use)."""

    def __init__(self, keep_prob, block_size):
        super().__init__()


def timm_drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
    """timm's drop_path: note ``training=False`` by default."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep if scale_by_keep else x * mask


@pytest.fixture
def fake_peers(monkeypatch):
    ops = _fake_module(monkeypatch, "torchvision.ops", drop_block2d=article_drop_block2d)
    _fake_module(monkeypatch, "torchvision", ops=ops)
    layers = _fake_module(monkeypatch, "timm.layers", DropBlock2d=TimmDropBlock2d,
                          drop_path=timm_drop_path)
    _fake_module(monkeypatch, "timm", layers=layers)
    _fake_module(monkeypatch, "dropblock", DropBlock2D=BrokenDropBlock2D)


def test_fake_peers_are_audited_and_flagged(fake_peers, tmp_path):
    state = torch.random.get_rng_state()
    code, out, err = run_cli(["audit", "--quick", "--draws", "10", "--out", str(tmp_path)])
    assert torch.equal(torch.random.get_rng_state(), state)  # peers' seeding is undone
    assert code == 0, out + err  # peers never change the exit code
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["environment"]["peers"] == {
        "torch": torch.__version__, "torchvision": "0.0+fake", "timm": "0.0+fake",
        "dropblock": "0.0+fake",
    }
    rows = report["rows"]
    tv = [r for r in rows if r["provider"] == "torchvision"]
    blocks = [r for r in tv if r["variant"] == "drop_block2d"]
    # one row per (map, block, p) of the quick grid: 2 maps x 3 blocks
    assert sorted((r["shape"][2], r["block"][0]) for r in blocks) == [
        (7, 3), (7, 4), (7, 7), (14, 3), (14, 4), (14, 7)
    ]
    for r in blocks:
        assert r["impl"] == "torchvision.ops.drop_block2d(x, p, block_size)"
        if r["block"][0] == 4:  # the fake rejects even sizes, like torchvision
            assert r["within"] == "error" and r["ok"] is None and r["realized"] is None
            assert r["error"] == "ValueError: block size should be odd. Got 4"
        else:  # gamma = p / k**2 misses p by far more than 3% and 4 SE
            assert r["within"] == "no" and r["ok"] is False
            assert r["realized"] < 0.09 and abs(r["realized"] - 0.1) > 4 * r["se"]
    fourteen = next(r for r in blocks if r["shape"][2] == 14 and r["block"][0] == 7)
    assert fourteen["realized"] == pytest.approx(0.075, abs=0.01)  # docs/dropblock.md, sec. 1
    # Missing functions are one error row each, never a crash.
    errors = {r["impl"]: r["error"] for r in tv if r["shape"] is None}
    assert errors == {
        "torchvision.ops.drop_block3d(x, p, block_size)":
            "AttributeError: torchvision.ops has no drop_block3d",
        'torchvision.ops.stochastic_depth(x, p, "row")':
            "AttributeError: torchvision.ops has no stochastic_depth",
    }
    timm_rows = [r for r in rows if r["provider"] == "timm"]
    default, per_channel = (
        [r for r in timm_rows if r["variant"] == "drop_block2d" and r["masks"] == masks]
        for masks in ("shared", "per channel")
    )
    assert len(default) == len(per_channel) == 6  # every block size: timm crops even ones
    assert {r["impl"] for r in per_channel} == {
        "timm DropBlock2d(drop_prob=p, block_size=k, couple_channels=False)"
    }
    for group in (default, per_channel):
        # whole-map seeds with the valid-region gamma: 21% instead of 10% (14x14, block 7),
        # nearly everything on 7x7 maps (survey, section 2.4)
        (fourteen,) = [r for r in group if r["shape"][2] == 14 and r["block"][0] == 7]
        assert fourteen["realized"] == pytest.approx(0.207, abs=0.02)
        (seven,) = [r for r in group if r["shape"][2] == 7 and r["block"][0] == 7]
        assert seven["realized"] > 0.85
        assert fourteen["within"] == seven["within"] == "no"
    (path,) = [r for r in timm_rows if r["variant"] == "drop_path"]
    assert path["ok"] is True  # training=True was passed: timm's default would drop nothing
    assert path["impl"] == "timm drop_path(x, drop_prob=p, training=True)"
    broken = {r["impl"]: r["error"] for r in rows if r["provider"] == "dropblock"}
    assert broken == {
        "dropblock.DropBlock2D(drop_prob=p, block_size=k)":
            "TypeError: dropblock DropBlock2D takes none of drop_prob, p, rate: "
            "(keep_prob, block_size)",
        "dropblock.DropBlock3D(drop_prob=p, block_size=k)":
            "AttributeError: dropblock has no DropBlock3D",
    }
    # The table shows them next to dropkit's rows, and the summary counts them.
    assert "error: ValueError: block size should be odd. Got 4" in out
    assert re.search(r"^torchvision\s+8x16x14x14\s+7x7\s+per channel\s+0\.1\s+-\s+0\.07\d+\s+"
                     r"-2\d\.\d\d%.*\sno$", out, re.MULTILINE), out
    summary = report["summary"]
    assert summary["peer_out_of_tolerance"] == sum(r["within"] == "no" for r in rows) >= 8
    assert summary["peer_errors"] == 6  # 2 even sizes, 2 missing functions, 2 dropblock
    assert (tmp_path / "audit.png").read_bytes()[:8] == PNG_SIGNATURE


def test_peer_detection(monkeypatch):
    assert audit.installed("torch")
    assert not audit.installed("dropkit_no_such_module_for_the_audit")
    monkeypatch.setitem(sys.modules, "dropblock", None)  # an import that is known to fail
    assert not audit.installed("dropblock")
    peers, status = audit.peer_cases()
    assert status["dropblock"] == "not installed"
    assert not any(peer.provider == "dropblock" for peer in peers)


# ----------------------------------------------------------------------------- exit codes


def test_a_dropkit_row_out_of_tolerance_exits_1(monkeypatch, tmp_path):
    real_dropout = DF.dropout

    def half_rate(x, p, *args, **kwargs):
        return real_dropout(x, p / 2, *args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(DF, "dropout", half_rate)
    monkeypatch.setattr(DF, "drop_path", broken)
    code, out, err = run_cli(["audit", "--quick", "--draws", "4", "--out", str(tmp_path)])
    assert code == 1
    assert err == ""
    rows = [r for r in _rows(tmp_path) if r["provider"] == "dropkit"]
    (dropout,) = [r for r in rows if r["variant"] == "dropout"]
    assert dropout["within"] == "no" and dropout["ok"] is False
    assert dropout["realized"] == pytest.approx(0.05, rel=0.05)
    (path,) = [r for r in rows if r["variant"] == "drop_path"]
    assert (path["within"], path["ok"], path["error"]) == ("error", False, "RuntimeError: boom")
    assert sum(not r["ok"] for r in rows) == 2
    assert "no  <-- OUT OF TOLERANCE" in out and "error: RuntimeError: boom" in out
    assert f"2 of {QUICK_ROWS} dropkit rows OUT of tolerance" in out
    assert json.loads((tmp_path / "audit.json").read_text())["summary"]["exit_code"] == 1


def test_without_matplotlib_writes_csv_and_json(monkeypatch, tmp_path):
    # None in sys.modules makes every `import matplotlib...` raise ImportError.
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = run_cli(["audit", "--quick", "--draws", "2", "--out", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.csv", "audit.json"]
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("dropkit audit: note: audit.png not written: matplotlib is missing")
    assert 'pip install -e ".[gallery]" (run in the dropkit repository clone)' in err
    assert out.splitlines()[-1] == (
        f"dropkit audit: wrote {tmp_path / 'audit.csv'}, {tmp_path / 'audit.json'}"
    )


def test_import_does_not_load_matplotlib():
    code = (
        "import sys, dropkit.cli.audit\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'torchvision',"
        " 'timm', 'dropblock')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--draws", "1"], r"`--draws` must be in \[2, 100000\], got '1'\."),
        (["--draws", "100001"], r"`--draws` must be in \[2, 100000\], got '100001'\."),
        (["--draws", "ten"], r"`--draws` must be an int in \[2, 100000\], got 'ten'\."),
        (["--draws", "2.5"], r"`--draws` must be an int in \[2, 100000\], got '2\.5'\."),
        (["--seed", "-1"], r"`--seed` must be in \[0, 2\*\*64\), got '-1'\."),
        (["--seed", str(2**64)], r"`--seed` must be in \[0, 2\*\*64\), got '\d{20}'\."),
        (["--seed", "x"], r"`--seed` must be an int in \[0, 2\*\*64\), got 'x'\."),
        (["--device", "foo"], r"`--device` must name a torch device, got 'foo'\."),
        (["--device", ""], r"`--device` must name a torch device, got ''\."),
        (["--device", "cuda:99"], r"`--device` 'cuda:99' is not usable here: \w+"),
        (["--out", ""], r"`--out` must be a folder path, got ''\."),
    ],
)
def test_bad_arguments(tmp_path, argv, message):
    folder = tmp_path / "never"
    if "--out" not in argv:
        argv = [*argv, "--out", str(folder)]
    assert_cli_error(run_cli(["audit", "--quick", *argv]), "audit", message)
    assert not folder.exists()


def test_unknown_option_exits_2():
    code, out, err = run_cli(["audit", "--frobnicate"])
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == (
        "dropkit: error: unrecognized arguments: --frobnicate"
    )


def test_output_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for target, start in ((blocker, "cannot write to"),
                          (blocker / "sub", "cannot create the output folder")):
        result = run_cli(["audit", "--quick", "--out", str(target)])
        assert_cli_error(result, "audit", code=1)
        assert result[2].startswith(f"dropkit audit: error: {start} {str(target)!r}")
    assert blocker.read_text() == "not a folder"


def test_help():
    code, out, err = run_cli(["audit", "--help"])
    assert code == 0 and err == ""
    text = " ".join(out.split())
    for option in ("--quick", "--draws N", "--seed SEED", "--out DIR", "--device DEVICE"):
        assert option in text
    assert "3% of p or <= 4 standard errors" in text
    assert "Exit status: 0 when every dropkit row is within tolerance, 1 when one is not" in text
    assert "torchvision" in text and "timm" in text and "dropblock" in text
    code, out, _ = run_cli(["--help"])
    assert code == 0 and "audit" in out


# ----------------------------------------------------------------------------- helpers


def test_grid_sizes_and_default_coverage():
    cases = audit.grid()
    blocks2d = {(c.spatial, c.block) for c in cases if c.variant == "drop_block2d"}
    assert {s for s, _ in blocks2d} == {(7, 7), (14, 14), (28, 28), (56, 56), (12, 20)}
    assert {b[0] for _, b in blocks2d} == {1, 3, 4, 5, 7}
    assert {c.p for c in cases if c.variant == "drop_block2d"} == {0.05, 0.1, 0.2}
    assert len(cases) == len(set(cases))
    assert len(audit.grid(quick=True)) < len(cases) / 10


def test_within_labels():
    assert audit._within(0.101, 0.1, 0.0001) == "3%"
    assert audit._within(0.101, 0.1, 0.001) == "3% and 4 SE"
    assert audit._within(0.110, 0.1, 0.003) == "4 SE"
    assert audit._within(0.110, 0.1, 0.002) == "no"


# ----------------------------------------------------------------------------- the picture


def _fake_peer_row(variant: str, shape: list[int], p: float, realized: float) -> audit.Row:
    return audit.Row(variant, "torchvision", "tv(x, p)", "per channel", shape, [3, 3], p, 2,
                     None, realized, realized / p - 1.0, 0.001, "empirical", 0.001, 16, 0.0,
                     "no", False)


def test_figure_data_is_the_relative_error_per_variant_and_shape():
    rows = audit.audit(audit.grid(quick=True), 2, 0, torch.device("cpu"))
    rows.append(_fake_peer_row("drop_block2d", [8, 16, 14, 14], 0.1, 0.075))
    rows.append(audit.Row("drop_block2d", "torchvision", "tv(x, p)", "per channel",
                          [8, 16, 7, 7], [4, 4], 0.1, 2, None, None, None, None, "", None,
                          None, None, "error", None, "ValueError: odd"))
    panels = audit.figure_data(rows)
    assert [panel.variant for panel in panels] == list(audit.VARIANTS)
    seen = []
    for panel in panels:
        assert panel.rates == [0.1]
        for series in panel.series:
            xs = list(zip(series.x, series.rows, strict=True))
            for x, row, y, err in zip(series.x, series.rows, series.y, series.yerr, strict=True):
                seen.append(id(row))
                assert row.variant == panel.variant
                assert y == pytest.approx(100 * (row.realized - row.p) / row.p)
                assert err == pytest.approx(100 * 4 * row.se / row.p)
                config = panel.configs[round(x)]  # x lies inside its shape's category
                assert abs(x - round(x)) < 0.5
                assert config.split("\n")[0] == "x".join(map(str, row.shape))
                if row.block is not None:
                    assert config.split("\n")[1] == "block " + "x".join(map(str, row.block))
            assert len({x for x, _ in xs}) == len(xs)
    measured = [r for r in rows if r.realized is not None]
    assert sorted(seen) == sorted(id(r) for r in measured)  # each measured row once
    (blocks,) = [panel for panel in panels if panel.variant == "drop_block2d"]
    assert blocks.configs == [f"8x16x{m}x{m}\nblock {b}x{b}" for m in (7, 14) for b in (3, 4, 7)]
    labels = [series.label for series in blocks.series]
    assert labels == ["dropkit", "dropkit (shared masks)", "tv(x, p)"]
    assert blocks.series[2].y == [pytest.approx(-25.0)] and blocks.series[2].errors == 1
    # dropkit's two mask kinds sit side by side in each category, not on top of each other
    assert blocks.series[0].x[0] < blocks.series[1].x[0] < blocks.series[2].x[0]


def test_figure_draws_one_relative_error_panel_per_variant_with_the_3_percent_band():
    rows = audit.audit(audit.grid(quick=True), 2, 0, torch.device("cpu"))
    fig = audit.draw_figure(rows, "title")
    axes = fig.get_axes()
    assert len(axes) == len(audit.VARIANTS)  # no "realized vs requested" panels
    for ax, panel in zip(axes, audit.figure_data(rows), strict=True):
        assert ax.get_title().startswith(f"{panel.variant}: relative error")
        assert [t.get_text() for t in ax.get_xticklabels()] == panel.configs
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0] == "±3%"
        (band,) = [patch for patch in ax.patches if patch.get_label() == "±3%"]
        display = band.get_transform().transform(band.get_path().vertices)
        data = ax.transData.inverted().transform(display)[:, 1]
        assert min(data) == pytest.approx(-3.0) and max(data) == pytest.approx(3.0)
        plotted = sorted(y for line in ax.lines for y in line.get_ydata() if line.get_marker()
                         not in (None, "None", ""))
        assert plotted == pytest.approx(sorted(y for s in panel.series for y in s.y))
