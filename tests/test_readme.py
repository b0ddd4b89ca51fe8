"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Lazy modules are a new feature:UserWarning")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_ci_runs_exactly_the_readmes_test_command():
    text = README.read_text()
    section = text[text.index("Install and run the tests"):]
    command = re.search(r"```bash\n(.*?)\n```", section, flags=re.DOTALL).group(1)
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == command
    assert command.endswith("python -m pytest && bash tests/integration/run.sh")
