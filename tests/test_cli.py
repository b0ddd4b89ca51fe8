"""The ``dropkit`` command line: ``gallery`` pictures, ``info``, argument errors, ``--help``."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from dropkit.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURES = (
    "seeds_1x7x5.png", "image_like.png", "masks.png", "volume.png", "structured.png"
)
DEFAULT_DPI = 100


def _main(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; an argparse exit (SystemExit) counts as its exit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, int, str, str]:
    """One default run (p 0.5, seed 0, dpi 100), shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("cli") / "gallery" / "nested"  # parents are created
    code, out, err = _main(["gallery", "--out", str(folder)])
    return folder, code, out, err


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {name: matplotlib.image.imread(folder / name).shape[:2] for name in PICTURES}


# ----------------------------------------------------------------------------- gallery


def test_gallery_writes_the_pictures(gallery):
    folder, code, _, err = gallery
    assert code == 0, err
    assert err == ""
    assert sorted(path.name for path in folder.iterdir()) == sorted(PICTURES)
    for name in PICTURES:
        data = (folder / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 20_000, name
        image = matplotlib.image.imread(folder / name)
        height, width = image.shape[:2]
        assert image.ndim == 3 and image.shape[2] in (3, 4), name
        assert 600 <= width <= 2500 and 600 <= height <= 2500, (name, image.shape)
        rgb = image[..., :3]
        assert rgb.std() > 0.05, f"{name} is (nearly) blank"
        packed = (rgb * 255).round().astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
        assert len(np.unique(packed)) > 50, f"{name} has too few colours"


def test_gallery_prints_one_line_per_file_and_a_summary(gallery):
    folder, code, out, _ = gallery
    assert code == 0
    lines = out.splitlines()
    assert lines[:-1] == [str(folder / name) for name in PICTURES]
    assert lines[-1] == (
        f"dropkit gallery: wrote 5 pictures to {folder} (p=0.5, seed=0, dpi={DEFAULT_DPI})"
    )


def test_gallery_is_reproducible_and_follows_seed_and_dpi(gallery, tmp_path):
    folder = gallery[0]
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for target, seed in ((first, "0"), (again, "0"), (other, "1")):
        code, _, err = _main(["gallery", "--out", str(target), "--seed", seed, "--dpi", "50"])
        assert code == 0, err
    for name in PICTURES:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    # A different seed changes every mask, hence every picture.
    for name in PICTURES:
        assert (first / name).read_bytes() != (other / name).read_bytes(), name
    # Halving the dpi halves the pixel size of every picture (the figure sizes are fixed).
    default, half = _sizes(folder), _sizes(first)
    for name in PICTURES:
        (h, w), (h2, w2) = default[name], half[name]
        assert abs(2 * h2 - h) <= 2 and abs(2 * w2 - w) <= 2, (name, default[name], half[name])


@pytest.mark.parametrize("p", ["0", "1", "0.1"])
def test_gallery_edge_probabilities(tmp_path, p):
    code, out, err = _main(["gallery", "--out", str(tmp_path), "--p", p, "--dpi", "20",
                            "--seed", str(2**64 - 1)])
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"dropkit gallery: wrote 5 pictures to {tmp_path} "
        f"(p={float(p)!r}, seed={2**64 - 1}, dpi=20)"
    )
    for name in PICTURES:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_import_does_not_load_matplotlib():
    code = (
        "import sys, dropkit, dropkit.cli, dropkit.cli.gallery, dropkit.cli.bench\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_gallery_without_matplotlib(tmp_path, monkeypatch):
    # None in sys.modules makes every `import matplotlib...` raise ImportError.
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    folder = tmp_path / "out"
    code, out, err = _main(["gallery", "--out", str(folder)])
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("dropkit gallery: error: the gallery needs matplotlib")
    assert 'pip install "dropkit[gallery]"' in err
    assert "Traceback" not in err
    assert not folder.exists()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--p", "1.5"], r"`--p` must be in \[0, 1\], got '1\.5'\."),
        (["--p", "-0.1"], r"`--p` must be in \[0, 1\], got '-0\.1'\."),
        (["--p", "nan"], r"`--p` must be in \[0, 1\], got 'nan'\."),
        (["--p", "abc"], r"`--p` must be a number in \[0, 1\], got 'abc'\."),
        (["--dpi", "0"], r"`--dpi` must be in \[20, 600\], got '0'\."),
        (["--dpi", "601"], r"`--dpi` must be in \[20, 600\], got '601'\."),
        (["--dpi", "abc"], r"`--dpi` must be an int in \[20, 600\], got 'abc'\."),
        (["--dpi", "72.5"], r"`--dpi` must be an int in \[20, 600\], got '72\.5'\."),
        (["--seed", "-1"], r"`--seed` must be in \[0, 2\*\*64\), got '-1'\."),
        (["--seed", str(2**64)], r"`--seed` must be in \[0, 2\*\*64\), got '\d{20}'\."),
        (["--seed", "1.5"], r"`--seed` must be an int in \[0, 2\*\*64\), got '1\.5'\."),
        (["--out", ""], r"`--out` must be a folder path, got ''\."),
    ],
)
def test_gallery_bad_arguments(tmp_path, argv, message):
    folder = tmp_path / "never"
    if "--out" not in argv:
        argv = [*argv, "--out", str(folder)]
    code, out, err = _main(["gallery", *argv])
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert err.startswith("dropkit gallery: error: ")
    assert re.search(message, err), err
    assert not folder.exists()


def test_gallery_bad_argument_through_capsys(capsys, tmp_path):
    """The same contract seen through pytest's capture: SystemExit(2) or a return value of 2."""
    try:
        code = main(["gallery", "--p", "1.5", "--out", str(tmp_path / "x")])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "`--p` must be in [0, 1], got '1.5'." in captured.err


def test_gallery_output_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, out, err = _main(["gallery", "--out", str(blocker / "sub")])
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert err.startswith(
        f"dropkit gallery: error: cannot create the output folder {str(blocker / 'sub')!r}: "
    )
    assert blocker.read_text() == "not a folder"


def test_gallery_output_is_a_regular_file(tmp_path):
    blocker = tmp_path / "file.png"
    blocker.write_bytes(b"x")
    code, _, err = _main(["gallery", "--out", str(blocker)])
    assert code == 1
    assert err == (
        f"dropkit gallery: error: cannot write to {str(blocker)!r}: it exists and is not a "
        "folder.\n"
    )
    assert blocker.read_bytes() == b"x"


# ----------------------------------------------------------------------------- info, --help


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    assert out.splitlines()[0].split()[0] == "dropkit"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["gallery", "bench", "info"]),
        (["gallery", "--help"], ["--out DIR", "--p P", "--seed SEED", "--dpi N"]),
    ],
)
def test_python_m_dropkit_help(argv, expected):
    result = subprocess.run([sys.executable, "-m", "dropkit", *argv], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dropkit")
    for text in expected:
        assert text in result.stdout
