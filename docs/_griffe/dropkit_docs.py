"""Griffe extension for dropkit's API pages (configured in ``mkdocs.yml``).

1. Names that dropkit builds with a factory at import time (``spatial_dropout1d = _spatial(1)``,
   ``drop_block2d``, ``DropConnectConv2d``, ...) are invisible to static analysis, which sees an
   attribute without a docstring. They are replaced by the inspected runtime object, so the
   pages show their signature and docstring.
2. dropkit's docstrings use Google style with an ``Example:`` section and, in short docstrings,
   bare doctest lines. Griffe only knows ``Examples:``, so ``Example:`` is renamed and bare
   doctest blocks are fenced as ``pycon`` code; otherwise Markdown reads them as quotes.
   Sphinx roles (``:func:`dropout```) become plain code spans.
"""

from __future__ import annotations

import importlib
import inspect
import re

import griffe

_FENCE = "```"
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")


def _rewrite(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    in_fence = in_doctest = False
    for line in lines:
        if line.lstrip().startswith(_FENCE):
            in_fence = not in_fence
        if in_doctest and not line.strip():
            out.append(_FENCE)
            in_doctest = False
        if not in_fence and not in_doctest and line.startswith(">>>"):
            out.append(_FENCE + "pycon")
            in_doctest = True
        if not in_fence and line.strip() == "Example:":
            line = line.replace("Example:", "Examples:")
        out.append(line)
    if in_doctest:
        out.append(_FENCE)
    return _ROLE.sub(r"`\1`", "\n".join(out))


def _objects(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class DropkitDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.name != "dropkit":
            return
        for module in [m for m in _objects(pkg) if m.is_module and m.name != "__main__"]:
            self._inspect_factories(module, loader)
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value)

    @staticmethod
    def _inspect_factories(module: griffe.Module, loader: griffe.GriffeLoader) -> None:
        names = [
            name
            for name, member in module.members.items()
            if not member.is_alias and member.is_attribute and not name.startswith("_")
        ]
        if not names:
            return
        runtime = importlib.import_module(module.path)
        names = [
            name
            for name in names
            if inspect.isfunction(getattr(runtime, name, None))
            or inspect.isclass(getattr(runtime, name, None))
        ]
        if not names:
            return
        inspected = griffe.inspect(
            module.path,
            filepath=module.filepath,
            docstring_parser=loader.docstring_parser,
            docstring_options=loader.docstring_options,
        )
        for name in names:
            obj = inspected.members[name]
            for member_name, member in list(obj.members.items()):
                if member_name.startswith("__") and member.is_attribute:
                    del obj.members[member_name]
            module.set_member(name, obj)
