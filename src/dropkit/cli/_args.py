"""Options shared by the subcommands: one spelling, one help phrasing, one message format.

The ``add_*`` functions register the options that several subcommands have (``--out``,
``--seed``, ``--p``, ``--repeat``, ``--quick``, ``--device``) with the same metavar and the same
help wording, so ``dropkit X --help`` reads alike for every X. Values are kept as strings by
argparse and checked inside ``run`` by the ``parse_*`` functions, so that a bad value is a
one-line error rather than argparse's usage dump.

Each parser raises ``ValueError`` with a one-line message (the CLI turns it into exit code 2);
:func:`make_folder` and :func:`check_writable_file` raise ``OSError`` (exit code 1).
"""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

MAX_SEED = 2**64 - 1
SEED_INTERVAL = "[0, 2**64)"


def install_hint(extra: str) -> str:
    """How to install the optional dependencies of ``extra`` (a key of pyproject.toml's
    ``[project.optional-dependencies]``), as a command that works as printed: dropkit is
    installed from its repository clone, not from a package index."""
    return f'pip install -e ".[{extra}]" (run in the dropkit repository clone)'


def add_out(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--out DIR``: the folder that receives ``what`` (created if needed)."""
    shown = default if default is not None else "none, nothing is written"
    parser.add_argument(
        "--out", default=default, metavar="DIR",
        help=f"folder for {what}, created if needed (default: {shown})",
    )


def add_seed(parser: argparse.ArgumentParser, default: int, what: str = "mask seed",
             detail: str = "") -> None:
    """``--seed SEED``: an int in ``[0, 2**64)``; ``detail`` follows the range in the help."""
    parser.add_argument(
        "--seed", default=str(default), metavar="SEED",
        help=f"{what}, an int in {SEED_INTERVAL}{detail} (default: {default})",
    )


def add_p(parser: argparse.ArgumentParser, default: float, what: str = "drop probability",
          **kwargs: object) -> None:
    """``--p P``: a drop probability in ``[0, 1]``; ``kwargs`` go to ``add_argument``.

    Without a ``type`` the default is stored as a string, like a value from the command line.
    """
    parser.add_argument(
        "--p", metavar="P", help=f"{what}, a number in [0, 1] (default: {default})",
        default=default if "type" in kwargs else str(default),
        **kwargs,  # type: ignore[arg-type]
    )


def add_repeat(parser: argparse.ArgumentParser, default: int, what: str,
               **kwargs: object) -> None:
    """``--repeat N``: how many times something is repeated, an int >= 1."""
    parser.add_argument(
        "--repeat", metavar="N", help=f"{what}, an int >= 1 (default: {default})",
        default=default if "type" in kwargs else str(default),
        **kwargs,  # type: ignore[arg-type]
    )


def add_quick(parser: argparse.ArgumentParser, what: str) -> None:
    """``--quick``: a smaller run; ``what`` says what it shrinks to."""
    parser.add_argument("--quick", action="store_true", help=f"quick run: {what}")


def add_device(parser: argparse.ArgumentParser, default: str = "cpu",
               what: str = "torch device of the inputs") -> None:
    """``--device DEVICE``: a torch device name."""
    parser.add_argument(
        "--device", default=default, metavar="DEVICE",
        help=f"{what}, e.g. cpu or cuda:0 (default: {default})",
    )


def parse_p(value: object, name: str = "--p") -> float:
    """A probability in ``[0, 1]`` (NaN rejected)."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.") from None
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}.")
    return p


def parse_seed(value: object, name: str = "--seed") -> int:
    """A seed in ``[0, 2**64)``."""
    return parse_int(name, value, 0, MAX_SEED, SEED_INTERVAL)


def parse_int(name: str, value: object, low: int, high: int, interval: str) -> int:
    """An int option in ``[low, high]``; ``interval`` is how messages write that range."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an int in {interval}, got {value!r}.")
    try:
        number = int(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
        if not isinstance(value, str) and number != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"`{name}` must be an int in {interval}, got {value!r}.") from None
    if not low <= number <= high:
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")
    return number


def parse_out(value: object) -> Path:
    """A folder path (it need not exist yet)."""
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ValueError(f"`--out` must be a folder path, got {value!r}.")
    return Path(value)


#: Folders that :func:`make_folder` created in this process, outermost first (for
#: :func:`forget_created_folders`).
_CREATED: list[Path] = []


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) unless it exists; a one-line ``OSError`` otherwise.

    The folders it creates are remembered, so that :func:`forget_created_folders` can take them
    away again when the command stops before writing anything (Ctrl-C, an error).
    """
    if folder.exists() and not folder.is_dir():
        raise OSError(f"cannot write to {str(folder)!r}: it exists and is not a folder.")
    missing = [folder, *folder.parents]
    missing = [path for path in missing if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the output folder {str(folder)!r}: "
                      f"{_reason(err, folder)}") from None
    _CREATED.extend(reversed(missing))
    if os.access(folder, os.W_OK | os.X_OK) and not _read_only(folder):
        return folder
    raise OSError(f"cannot write to {str(folder)!r}: {_unwritable(folder)}")


def forget_created_folders(remove_empty: bool) -> None:
    """Forget the folders :func:`make_folder` created; with ``remove_empty``, first remove those
    that are still empty (innermost first), leaving any folder that holds something."""
    while _CREATED:
        path = _CREATED.pop()
        if remove_empty:
            try:
                path.rmdir()  # only succeeds on an empty folder
            except OSError:
                pass


def check_writable_file(path: Path) -> Path:
    """Fail early (one-line ``OSError``) when the file ``path`` could not be written later.

    The folder must exist and be writable and ``path`` must not be a folder; then the file is
    opened for appending (an existing file is left as it is) or created and removed again, so
    that places where no file can be created (``/proc``, a read-only mount) fail now, not after
    the work.
    """
    parent = path.parent
    if path.is_dir():
        raise OSError(f"cannot write {str(path)!r}: it is a folder.")
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise OSError(f"cannot write {str(path)!r}: {str(parent)!r} {why}.")
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        raise OSError(f"cannot write {str(path)!r}: {_unwritable(parent)}")
    existed = path.exists()
    try:
        with path.open("a" if existed else "x"):
            pass
    except OSError as err:
        raise OSError(f"cannot write {str(path)!r}: {_reason(err, parent)}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


def _read_only(folder: Path) -> bool:
    """``folder`` is on a file system mounted read-only (where even root cannot write)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): os.access decided
        return False


def _unwritable(folder: Path) -> str:
    """Why nothing can be written in ``folder``, and what to do, as the end of a sentence."""
    if _read_only(folder):
        return "it is on a read-only file system; choose a writable folder."
    return "permission denied."


def _reason(err: OSError, folder: Path) -> str:
    """An ``OSError`` from creating something in ``folder`` as the end of a sentence."""
    if err.errno == errno.EROFS or _read_only(folder):
        return "it is on a read-only file system; choose a writable folder."
    if err.errno == errno.ENOENT and folder.is_dir():  # /proc, /sys: no new files there
        return f"no file can be created in {str(folder)!r}; choose a writable folder."
    return f"{err.strerror or err}."
