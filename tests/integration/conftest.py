"""The integration suite needs the real timm, torchvision and transformers.

CI runs it in a second environment (``tests/integration/run.sh``: torch 2.14.1 with torchvision
0.29.1, timm and transformers pinned). In the main environment torchvision does not import beside
the CPU build of torch 2.13.0, so the main suite (``python -m pytest``) ignores this folder.
"""

from __future__ import annotations

import importlib


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # not installed, or installed but broken (torchvision's C extension)
        return False
    return True


MISSING = [name for name in ("torchvision", "timm", "transformers") if not _importable(name)]
collect_ignore_glob = ["test_*.py", "integration_helpers.py"] if MISSING else []
