"""The ``dropkit`` command line: ``gallery`` pictures, ``info``, ``--help``/``--version``, shared
options, argument errors and exit codes."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

import dropkit
import dropkit.cli
from dropkit.cli import _args, main
from dropkit.cli import gallery as gallery_cli
from helpers import assert_cli_error, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURES = (
    "seeds_1x7x5.png", "image_like.png", "masks.png", "volume.png", "structured.png"
)
DEFAULT_DPI = 100


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, int, str, str]:
    """One default run (p 0.5, seed 0, dpi 100), shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("cli") / "gallery" / "nested"  # parents are created
    code, out, err = run_cli(["gallery", "--out", str(folder)])
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
        code, _, err = run_cli(["gallery", "--out", str(target), "--seed", seed, "--dpi", "50"])
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
    code, out, err = run_cli(["gallery", "--out", str(tmp_path), "--p", p, "--dpi", "20",
                            "--seed", str(2**64 - 1)])
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"dropkit gallery: wrote 5 pictures to {tmp_path} "
        f"(p={float(p)!r}, seed={2**64 - 1}, dpi=20)"
    )
    for name in PICTURES:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_import_does_not_load_matplotlib():
    # Nor does registering the parsers (what `dropkit --help` does) load triton or the extras.
    code = (
        "import sys, dropkit, dropkit.cli, dropkit.cli.gallery, dropkit.cli.bench\n"
        "dropkit.cli._parser()\n"
        "heavy = {'matplotlib', 'triton', 'sklearn', 'mnist1d', 'mkdocs'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
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
    result = run_cli(["gallery", "--out", str(folder)])
    assert_cli_error(result, "gallery", r"^dropkit gallery: error: the gallery needs matplotlib",
                     code=1)
    assert 'pip install -e ".[gallery]" (run in the dropkit repository clone)' in result[2]
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
    assert_cli_error(run_cli(["gallery", *argv]), "gallery", message)
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
    result = run_cli(["gallery", "--out", str(blocker / "sub")])
    assert_cli_error(result, "gallery", code=1)
    assert result[2].startswith(
        f"dropkit gallery: error: cannot create the output folder {str(blocker / 'sub')!r}: "
    )
    assert blocker.read_text() == "not a folder"


def test_gallery_output_is_a_regular_file(tmp_path):
    blocker = tmp_path / "file.png"
    blocker.write_bytes(b"x")
    code, _, err = run_cli(["gallery", "--out", str(blocker)])
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


# ----------------------------------------------------------------------------- the whole CLI

COMMANDS = ("gallery", "audit", "bench", "info")  # experiment is checked once registered
INFO_LABELS = (
    "dropkit", "python", "platform", "torch", "numpy", "numba", "backend setting",
    "numba CPU kernels", "torch reference", "CPU tensors use", "triton", "torch threads",
    "numba threads", "numba threading layer", "CUDA", "CUDA tensors use", "extra: matplotlib",
    "extra: mnist1d", "extra: sklearn", "extra: tqdm", "extra: mkdocs",
)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = dropkit.cli._parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"dropkit {dropkit.__version__}\n"


def test_top_level_help_lists_every_command_with_examples_and_exit_codes():
    code, out, err = run_cli(["--help"])
    assert code == 0 and err == ""
    subparsers = _subparsers()
    assert set(COMMANDS) <= set(subparsers)
    parser = dropkit.cli._parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    for name in subparsers:
        assert helps.get(name), f"{name} has no one-line description"
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert " ".join(line.split()[1:]) in " ".join(helps[name].split()), line
    assert "--version" in out
    assert "examples:" in out and "dropkit audit --quick" in out and "dropkit info --json" in out
    codes = out[out.index("exit codes:"):]
    for code_, words in (("0", "success"), ("1", "failure"), ("2", "bad arguments"),
                         ("130", "interrupted")):
        assert re.search(rf"^\s+{code_}\s+{words}", codes, re.MULTILINE), codes
    for text in ("Exit codes:", "130", "--out DIR", "--seed SEED", "--p P", "--repeat N"):
        assert text in dropkit.cli.__doc__


@pytest.mark.parametrize("command", [*COMMANDS, "experiment"])
def test_each_command_has_its_own_help(command):
    if command not in _subparsers():
        pytest.skip(f"{command} is not registered")
    code, out, err = run_cli([command, "--help"])
    assert code == 0 and err == ""
    assert out.startswith(f"usage: dropkit {command}")
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 8, out  # a sentence, not a stub


def test_gallery_help_names_every_picture_it_writes(gallery):
    folder = gallery[0]
    written = sorted(path.name for path in folder.iterdir())
    code, out, _ = run_cli(["gallery", "--help"])
    assert code == 0
    description = " ".join(out.split("\n\n")[1].split())
    named = sorted(set(re.findall(r"\b[\w.]+\.png\b", description)))
    assert named == written
    assert f"Write {len(written)} PNG pictures" in description


REPO = Path(__file__).resolve().parents[1]
HINT = re.compile(r'pip install (?:torch==\S+ )?-e "\.\[(\w+)\]"')


def _extras() -> dict[str, list[str]]:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


@pytest.mark.parametrize(("module", "extra", "needed"), [
    ("gallery", "gallery", ("matplotlib",)),
    ("audit", "gallery", ("matplotlib",)),
    ("experiment", "experiment", ("mnist1d", "scikit-learn", "tqdm", "matplotlib")),
])
def test_install_hints_work_as_printed(module, extra, needed):
    # dropkit is not on a package index: a hint installs the extra from the clone, says so,
    # and names an extra of pyproject.toml that brings what the command imports.
    hint = importlib.import_module(f"dropkit.cli.{module}")._INSTALL_HINT
    assert hint == f'pip install -e ".[{extra}]" (run in the dropkit repository clone)'
    assert HINT.match(hint).group(1) == extra
    deps = {re.split(r"[<>=;\[ ]", d, maxsplit=1)[0] for d in _extras()[extra]}
    assert set(needed) <= deps, (extra, deps)


def test_no_install_hint_names_dropkit_on_an_index():
    # `pip install "dropkit[x]"` fails (no such distribution); every hint installs from the clone
    # and names an extra that exists.
    extras = _extras()
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "examples").rglob("*.py"))]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"pip install [^\n`]*\bdropkit\[", text), path
        for extra in re.findall(r'pip install[^\n`]*?"\.\[(\w+)\]"', text):
            assert extra in extras, (path, extra)


# One spelling, one metavar and one help phrasing for the options several commands share.
SHARED = {
    "--out": ("DIR", r"^folder for .+, created if needed \(default: .+\)$"),
    "--seed": ("SEED", r"an int in \[0, 2\*\*64\).* \(default: \d+\)$"),
    "--p": ("P", r", a number in \[0, 1\] \(default: [\d.]+\)$"),
    "--repeat": ("N", r", an int >= 1 \(default: \d+\)$"),
    "--device": ("DEVICE", r", e\.g\. cpu or cuda:0 \(default: \S+\)$"),
    "--quick": (None, r"^quick run: "),
}


def test_shared_options_are_spelled_and_explained_alike():
    seen = dict.fromkeys(SHARED, 0)
    for command, parser in _subparsers().items():
        for action in parser._actions:
            for option in action.option_strings:
                if action.help and "default" in action.help:
                    assert "(default: " in action.help, (command, option, action.help)
                if option not in SHARED:
                    continue
                metavar, pattern = SHARED[option]
                assert action.metavar == metavar, (command, option, action.metavar)
                assert re.search(pattern, " ".join(action.help.split())), (command, option)
                seen[option] += 1
    # Each shared option is really shared (the check above is not vacuous).
    assert seen["--out"] >= 2 and seen["--seed"] >= 2 and seen["--p"] >= 2
    assert seen["--repeat"] >= 1 and seen["--quick"] >= 1 and seen["--device"] >= 1


# ----------------------------------------------------------------------------- errors, exit codes


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--ops", "dropblok"],
         r"`--ops` entries must be one of dropout, dropout2d, dropblock2d, drop_path, attention "
         r"\(or all\), "
         r"got 'dropblok'\."),
        (["bench", "--dtype", "int3"],
         r"`--dtype` entries must be one of float16, bfloat16, float32, float64, got 'int3'\."),
        (["bench", "--backend", "tpu"], r"`--backend` must be one of auto, numba, torch"),
        (["bench", "--numel", "0"], r"`--numel` must be a positive integer, got 0\."),
        (["bench", "--repeat", "-3"], r"`--repeat` must be a positive integer, got -3\."),
        (["gallery", "--dpi", "0"], r"`--dpi` must be in \[20, 600\], got '0'\."),
        (["audit", "--draws", "0"], r"`--draws` must be in \[2, 100000\], got '0'\."),
        (["audit", "--device", "warp9"], r"`--device` must name a torch device, got 'warp9'\."),
    ],
)
def test_bad_values_are_one_line_and_exit_2(tmp_path, argv, message):
    out_args = ["--out", str(tmp_path / "x")] if argv[0] != "bench" else []
    assert_cli_error(run_cli([*argv, *out_args]), argv[0], message)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("argv", "last_line"),
    [
        ([], "dropkit: error: the following arguments are required: COMMAND"),
        (["frobnicate"], "dropkit: error: argument COMMAND: invalid choice: 'frobnicate' "
                         "(choose from "),
        (["info", "--frobnicate"], "dropkit: error: unrecognized arguments: --frobnicate"),
        (["bench", "--numel", "lots"],
         "dropkit bench: error: argument --numel: invalid int value: 'lots'"),
        (["gallery", "--p"], "dropkit gallery: error: argument --p: expected one argument"),
    ],
)
def test_argparse_errors_are_usage_then_one_line(argv, last_line):
    code, out, err = run_cli(argv)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("usage: dropkit")
    assert lines[-1].startswith(last_line), err
    assert sum("error" in line for line in lines) == 1
    if argv == ["frobnicate"]:
        for name in COMMANDS:
            assert f"'{name}'" in lines[-1]


def test_bench_json_that_cannot_be_written_fails_before_timing(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases = [
        (blocker / "bench.json", f"cannot write {str(blocker / 'bench.json')!r}: "
                                 f"{str(blocker)!r} is not a folder."),
        (tmp_path / "no" / "bench.json", "does not exist."),
        (tmp_path, f"cannot write {str(tmp_path)!r}: it is a folder."),
    ]
    for path, message in cases:
        code, out, err = run_cli(["bench", "--numel", "64", "--json", str(path)])
        assert code == 1, err
        assert out == ""  # nothing was timed
        assert err.startswith("dropkit bench: error: ") and err.rstrip().endswith(message), err
        assert err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_output_folder_without_write_permission(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: there, the refusal is simulated
        folder.chmod(0o555)
    else:
        real = os.access
        monkeypatch.setattr(_args.os, "access", lambda path, mode: (
            False if Path(path) == folder else real(path, mode)))
    try:
        code, out, err = run_cli(["gallery", "--out", str(folder)])
    finally:
        folder.chmod(0o755)
    assert code == 1 and out == ""
    assert err == f"dropkit gallery: error: cannot write to {str(folder)!r}: permission denied.\n"
    assert list(folder.iterdir()) == []


def _read_only_at(monkeypatch, folder: Path) -> None:
    """``folder`` behaves as the root of a read-only mount (statvfs says ST_RDONLY; even root's
    os.access refuses writing there)."""
    real_statvfs, real_access = os.statvfs, os.access

    class Flags:
        f_flag = os.ST_RDONLY

    inside = lambda path: Path(path) == folder or folder in Path(path).parents  # noqa: E731
    monkeypatch.setattr(_args.os, "statvfs", lambda path: (
        Flags() if inside(path) else real_statvfs(path)))
    monkeypatch.setattr(_args.os, "access", lambda path, mode: (
        False if inside(path) else real_access(path, mode)))


READ_ONLY = "it is on a read-only file system; choose a writable folder."


def test_output_folder_on_a_read_only_file_system(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    _read_only_at(monkeypatch, folder)
    result = run_cli(["gallery", "--out", str(folder)])
    assert_cli_error(result, "gallery", code=1)
    assert result[2] == f"dropkit gallery: error: cannot write to {str(folder)!r}: {READ_ONLY}\n"
    assert list(folder.iterdir()) == []


def test_new_output_folder_under_a_read_only_file_system(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    _read_only_at(monkeypatch, parent)

    def refuse(self, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = run_cli(["gallery", "--out", str(parent / "new")])
    assert_cli_error(result, "gallery", code=1)
    assert result[2].endswith(f"cannot create the output folder {str(parent / 'new')!r}: "
                              f"{READ_ONLY}\n")


def test_bench_json_on_a_read_only_file_system_fails_before_timing(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    _read_only_at(monkeypatch, folder)
    result = run_cli(["bench", "--numel", "64", "--json", str(folder / "b.json")])
    assert_cli_error(result, "bench", code=1)
    assert result[2].endswith(f"cannot write {str(folder / 'b.json')!r}: {READ_ONLY}\n")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_bench_json_in_proc_fails_before_timing():
    # /proc accepts no new file, although os.access says root may write there.
    result = run_cli(["bench", "--numel", "64", "--json", "/proc/x.json"])
    assert_cli_error(result, "bench", code=1)
    assert result[2].endswith("cannot write '/proc/x.json': no file can be created in "
                              "'/proc'; choose a writable folder.\n")


def test_check_writable_file_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    new = tmp_path / "new.json"
    assert _args.check_writable_file(new) == new and not new.exists()
    old = tmp_path / "old.json"
    old.write_text("kept")
    _args.check_writable_file(old)
    assert old.read_text() == "kept"


def test_interrupt_removes_the_empty_output_folders_it_created(tmp_path, monkeypatch):
    def interrupted(p, seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(gallery_cli, "PICTURES", (("a.png", interrupted, "nothing"),))
    folder = tmp_path / "new" / "nested"
    assert run_cli(["gallery", "--out", str(folder)]) == (130, "", "dropkit gallery: interrupted\n")
    assert list(tmp_path.iterdir()) == []  # both levels it created are gone
    # A folder that existed before is kept, empty or not.
    folder.mkdir(parents=True)
    assert run_cli(["gallery", "--out", str(folder)])[0] == 130
    assert folder.is_dir()


def test_a_later_command_keeps_the_folders_an_earlier_one_created(tmp_path, monkeypatch):
    folder = tmp_path / "made"
    assert run_cli(["gallery", "--out", str(folder), "--dpi", "20"])[0] == 0
    for png in folder.iterdir():
        png.unlink()
    monkeypatch.setattr(gallery_cli, "PICTURES", ())
    monkeypatch.setattr(gallery_cli, "make_folder", lambda f: (_ for _ in ()).throw(
        KeyboardInterrupt))
    assert run_cli(["gallery", "--out", str(tmp_path / "other")])[0] == 130
    assert folder.is_dir()  # created by the first, successful command: not this one's to remove


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (KeyboardInterrupt(), 130, "dropkit gallery: interrupted\n"),
        (ModuleNotFoundError("No module named 'matplotlib'"), 1,
         "dropkit gallery: error: an optional dependency is missing: No module named "
         "'matplotlib'\n"),
        (OSError("disk full\nsecond line"), 1, "dropkit gallery: error: disk full second line\n"),
        (ValueError("`--p` is odd."), 2, "dropkit gallery: error: `--p` is odd.\n"),
        (BrokenPipeError(32, "Broken pipe"), 1, ""),
    ],
)
def test_exceptions_become_exit_codes(monkeypatch, error, code, expected):
    def boom(args):
        raise error

    monkeypatch.setattr(gallery_cli, "run", boom)
    got, out, err = run_cli(["gallery"])
    assert got == code
    assert out == "" and err == expected


def test_interrupt_while_parsing(monkeypatch, capsys):
    def boom():
        raise KeyboardInterrupt

    monkeypatch.setattr(dropkit.cli, "_parser", boom)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "dropkit: interrupted\n"


def test_entry_point_closed_pipe_is_quiet():
    """The installed `dropkit` script: stdout closed before it prints (`dropkit info | head -0`)."""
    script = shutil.which("dropkit") or str(Path(sys.executable).with_name("dropkit"))
    proc = subprocess.Popen([script, "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the child has imported torch and printed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err == b""


# ----------------------------------------------------------------------------- info


def _rows(out: str) -> dict[str, str]:
    lines = out.splitlines()
    column = len(lines[0]) - len(lines[0].split("  ")[-1].lstrip())
    rows = {}
    for line in lines:
        label, value = line[:column].rstrip(), line[column:]
        assert label and value and not value.startswith(" "), (line, column)  # aligned
        rows[label] = value
    return rows


def test_info_table(capsys):
    assert main(["info"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert tuple(rows) == INFO_LABELS
    assert rows["dropkit"] == dropkit.__version__
    assert rows["torch"] == torch.__version__
    assert rows["numpy"] == np.__version__
    assert rows["backend setting"] == dropkit.get_backend()
    assert rows["numba CPU kernels"] == "available"
    assert rows["CPU tensors use"] in {"numba_cpu", "torch_ref"}
    assert rows["torch threads"] == str(torch.get_num_threads())
    assert int(rows["numba threads"]) >= 1
    assert rows["numba threading layer"] in {"tbb", "omp", "workqueue"}
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in rows["CUDA"]
        want = "triton_cuda" if importlib.util.find_spec("triton") else "torch_ref"
        assert rows["CUDA tensors use"] == want
    else:
        assert rows["CUDA"] == "not available"
        assert rows["CUDA tensors use"] == "no CUDA device"
    assert rows["extra: matplotlib"] == importlib.metadata.version("matplotlib")
    assert rows["extra: sklearn"] == importlib.metadata.version("scikit-learn")
    if importlib.util.find_spec("triton") is None:
        assert rows["triton"] == "not installed"
    assert "triton" not in sys.modules or rows["triton"] != "not installed"


def test_info_json_matches_the_table(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["info"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(report) == len(rows)
    assert report["torch"] == torch.__version__
    assert report["torch_threads"] == torch.get_num_threads()
    assert report["cuda"] is None or torch.cuda.is_available()
    assert report["numba_cpu_kernels"] == "available"
    for (key, value), label in zip(report.items(), rows, strict=True):
        assert (value is None) == (rows[label] in {"not installed", "not available",
                                                   "not started", "no CUDA device"}), (key, label)
        if value is not None:
            assert rows[label] == str(value)


def test_info_reports_missing_and_broken_packages(monkeypatch, capsys):
    def fake_version(dist, module):
        return "9.9.9" if dist == "triton" else None

    monkeypatch.setattr(dropkit.cli, "_dist_version", fake_version)
    monkeypatch.setitem(sys.modules, "triton", None)  # installed, but the import fails
    assert main(["info"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["triton"].startswith("9.9.9 (import fails: ")
    for name in ("matplotlib", "mnist1d", "sklearn", "tqdm", "mkdocs"):
        assert rows[f"extra: {name}"] == "not installed"

