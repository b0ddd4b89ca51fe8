"""The documentation site builds without warnings, and public docstrings have their sections.

1. ``mkdocs build --strict`` (the CI command) exits with 0: every page, cross-reference and API
   docstring renders without a warning.
2. Every public name of ``dropkit.functional``, ``dropkit.nn``, ``dropkit.numpy``,
   ``dropkit.schedules`` and ``dropkit.mc`` documents its arguments (an ``Args:`` section, or
   ``Attributes:`` for records, unless it takes none), its errors (a ``Raises:`` section when its
   code validates: it raises or calls a ``check`` helper) and has an example with ``>>>`` (run as a
   doctest by pytest's ``--doctest-modules``).
3. Every ``python`` code block of the site's pages runs without an error or a warning.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MODULES = ("dropkit.functional", "dropkit.nn", "dropkit.numpy", "dropkit.schedules", "dropkit.mc")


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    for page in ("index.html", "api/functional/index.html", "guides/noise-shape/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "functional" / "index.html").read_text()
    # names built by factories at import time are documented too (docs/_griffe extension)
    for name in ("spatial_dropout2d", "drop_block2d"):
        assert f'id="dropkit.functional.{name}"' in api, name
    site = tmp_path / "site"
    pages = {p: p.read_text() for p in site.rglob("*.html")}
    for page, html in pages.items():
        assert "Bases: <code>_" not in html and ">_DropBlockNd<" not in html, page
        if "/api/" in str(page):  # docstrings' references to docs pages are links
            assert not re.search(r"<code>docs/[\w/-]+\.md</code>", html), page
    nav = re.findall(r"^\s*- ([^:]+): \S+\.md$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert "RNG spec" in nav and len(nav) == len(set(nav)), nav  # one title per page
    assert "<code>experiment</code>" in pages[site / "index.html"]


def _public(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    objs = [(f"{module_name}.{n}", getattr(module, n)) for n in names]
    return [(n, o) for n, o in objs if inspect.isfunction(o) or inspect.isclass(o)]


def _parameters(obj: object) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name not in ("self", "args", "kwargs")]


def _validates(obj: object) -> bool:
    """The object's own dropkit code (for a class: its dropkit classes) raises or checks."""
    sources = []
    for part in inspect.getmro(obj) if inspect.isclass(obj) else (obj,):
        if getattr(part, "__module__", "").startswith("dropkit"):
            try:
                sources.append(inspect.getsource(part))
            except (OSError, TypeError):
                pass
    return any(re.search(r"\braise\b|check_|_check\(", s) for s in sources)


def _problems(obj: object) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    problems = []
    if _parameters(obj) and not re.search(r"^(Args|Attributes):$", doc, re.M):
        problems.append("Args")
    if _validates(obj) and not re.search(r"^Raises:$", doc, re.M):
        problems.append("Raises")
    if ">>>" not in doc:
        problems.append("Example")
    return problems


def test_public_docstrings_have_sections():
    missing = {
        name: problems
        for module in MODULES
        for name, obj in _public(module)
        if (problems := _problems(obj))
    }
    assert not missing, "docstrings missing sections: " + "; ".join(
        f"{name}: {', '.join(p)}" for name, p in sorted(missing.items())
    )


def _code_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        found = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)
        blocks += [(str(page.relative_to(DOCS)), i, code) for i, code in enumerate(found)]
    return blocks


@pytest.mark.parametrize(("page", "index", "code"), _code_blocks(), ids=lambda v: str(v)[:40])
def test_docs_code_blocks_run(page, index, code, capsys):
    name = f"docs/{page}[{index}]"
    if code.lstrip().startswith(">>>"):  # a doctest: its outputs are checked too
        import torch

        import dropkit

        test = doctest.DocTestParser().get_doctest(
            code, {"torch": torch, "dropkit": dropkit}, name, name, 0
        )
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0, capsys.readouterr().out
    else:
        exec(compile(code, name, "exec"), {"__name__": name})
