"""Option parsing shared by the subcommands: one message format, checked inside ``run``.

Each parser raises ``ValueError`` with a one-line message (the CLI turns it into exit code 2);
:func:`make_folder` raises ``OSError`` (exit code 1).
"""

from __future__ import annotations

from pathlib import Path


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


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) unless it exists; a one-line ``OSError`` otherwise."""
    if folder.exists() and not folder.is_dir():
        raise OSError(f"cannot write to {str(folder)!r}: it exists and is not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(f"cannot create the output folder {str(folder)!r}: {reason}.") from None
    return folder
