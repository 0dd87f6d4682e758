"""MkDocs hook: expand ``<!-- public-api: PACKAGE -->`` into a table of the package's exports.

The table lists every name in ``PACKAGE.__all__`` (read statically with griffe, nothing is
imported) with its kind and the first paragraph of its docstring, and links each name to the
API entry of the object it names (where it is defined) with an autorefs cross-reference. Under ``mkdocs build --strict`` an exported
name that no API page documents is a broken reference, so the build fails: the reference
cannot silently fall behind the code.
"""

from __future__ import annotations

import re

import griffe

_MARKER = re.compile(r"<!--\s*public-api:\s*(?P<package>[\w.]+)\s*-->")
_loaded: dict[str, griffe.Module] = {}


def _package(path: str) -> griffe.Module:
    root = path.split(".", 1)[0]
    if root not in _loaded:
        # The same docstring rewriting as the API pages (``:class:`X``` -> ``X``, ...).
        rst = griffe.load_extensions("docs/hooks/griffe_rst.py:RstToMarkdown")
        _loaded[root] = griffe.load(root, search_paths=["."], extensions=rst, resolve_aliases=False)
    obj = _loaded[root]
    for part in path.split(".")[1:]:
        obj = obj.members[part]
    return obj  # type: ignore[return-value]


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object | griffe.Alias:
    """What an export names. ``from kernels import gate_mix`` in a package whose submodule is
    also ``gate_mix`` resolves to the module statically; the function inside is what is meant."""
    try:
        target = obj.final_target if obj.is_alias else obj
    except griffe.AliasResolutionError:
        return obj
    if target.is_module and obj.name in target.members:
        return _target(target.members[obj.name])
    return target


def _summary(obj: griffe.Object | griffe.Alias) -> str:
    doc = _target(obj).docstring
    if doc is None:
        return ""
    first = doc.value.strip().split("\n\n", 1)[0].replace("\n", " ")
    return first.replace("|", "\\|")


def _kind(obj: griffe.Object | griffe.Alias) -> str:
    try:
        return _target(obj).kind.value
    except griffe.AliasResolutionError:
        return "object"


def public_api_table(package: str) -> str:
    mod = _package(package)
    names = [str(n) for n in (mod.exports or [])]
    rows = ["| name | kind | summary |", "|---|---|---|"]
    for name in names:
        member = mod.members[name]
        target = _target(member)
        rows.append(f"| [`{name}`][{target.path}] | {_kind(member)} | {_summary(member)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARKER.sub(lambda m: public_api_table(m.group("package")), markdown)
