"""The project's metadata: license file, authors, changelog and version agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import dropkit

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def test_license_file_matches_the_metadata():
    assert _project()["license"] == "MIT"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the dropkit authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_authors_and_no_invented_urls():
    project = _project()
    assert project["authors"] == [{"name": "the dropkit authors"}]
    assert "urls" not in project  # no address the project does not own


def test_changelog_has_the_current_version():
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## (\d+\.\d+\.\d+)\b", text, flags=re.M)
    assert versions and versions[0] == dropkit.__version__
