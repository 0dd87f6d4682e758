"""Griffe extension: render the reStructuredText idioms of our docstrings as Markdown.

The code's docstrings are written to read well in ``help()``: ``.. math::`` directives,
``:math:`` / ``:class:`` roles, ``Example::`` literal blocks and ``term`` + indented
definition lists. mkdocstrings renders docstrings as Markdown, so before parsing we rewrite

* ``.. math:: expr`` (inline or as an indented block) into a ``$$ ... $$`` display block,
* ``:math:`expr``` into ``$expr$`` (both picked up by ``pymdownx.arithmatex``),
* ``:class:`~a.B``` and the other cross-reference roles into the code span ``B``,
* a paragraph ending in ``::`` into one ending in ``:`` (the indented block after it is
  already a Markdown code block),
* ``term`` lines directly followed by 4-space-indented lines into Markdown definition lists.

The source files are not touched; this runs only when the docs are built.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")


def _short(target: str, tilde: bool) -> str:
    return target.rsplit(".", 1)[-1] if tilde else target


def _roles(text: str) -> str:
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)

    def code(match: re.Match[str]) -> str:
        tilde = match.group(0).split("`", 1)[1].startswith("~")
        return f"`{_short(match.group(1), tilde)}`"

    return _ROLE.sub(code, text)


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group("indent")
        body = [match.group("inline").strip()] if match.group("inline").strip() else []
        i += 1
        # An indented body follows (possibly after blank lines).
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > len(indent)):
            if lines[j].strip():
                body.append(lines[j].strip())
            j += 1
            i = j
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_term(lines: list[str], i: int, in_list: bool = False) -> bool:
    """A definition-list term: a one-line paragraph start followed by indented lines."""
    line = lines[i]
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    return (
        (in_list or i == 0 or not lines[i - 1].strip())
        and bool(line.strip())
        and _indent(line) == 0
        and not line.rstrip().endswith(":")  # literal blocks (``::``) and Google sections
        and not line.lstrip().startswith(("*", "-", "+", "$$", "```", ">"))
        and bool(nxt.strip())
        and _indent(nxt) >= 4
    )


def _literal_and_deflists(lines: list[str]) -> list[str]:
    out: list[str] = []
    i, in_list = 0, False
    while i < len(lines):
        if _is_term(lines, i, in_list):
            if out and out[-1].strip():
                out.append("")  # Markdown needs a blank line between definition items
            out.append(lines[i])
            i += 1
            first = True
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= 4:
                out.append((":   " if first else "    ") + lines[i].strip())
                first = False
                i += 1
            in_list = True
            continue
        in_list = False
        line = lines[i]
        if line.rstrip().endswith("::") and line.strip() != "::":
            line = line.rstrip()[:-1]
        out.append(line)
        i += 1
    return out


def rst_to_markdown(text: str) -> str:
    """Rewrite the reST idioms of a docstring into Markdown (see module docstring)."""
    lines = _math_blocks(_roles(text).split("\n"))
    return "\n".join(_literal_and_deflists(lines))


def comment_docstring(lines: list[str], lineno: int) -> str | None:
    """The Sphinx-style ``#:`` comment lines right above line ``lineno`` (1-based), if any."""
    found: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        found.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    return "\n".join(found) or None


class RstToMarkdown(griffe.Extension):
    """Apply :func:`rst_to_markdown` to every docstring before it is parsed.

    Attributes documented with a ``#:`` comment above them (``#: Strategy names ...``) get that
    comment as their docstring, as Sphinx autodoc would.
    """

    def on_instance(self, *, obj: griffe.Object, agent: Any = None, **kwargs: Any) -> None:
        if obj.docstring is None and obj.is_attribute and obj.lineno:
            try:
                text = comment_docstring(obj.lines_collection[obj.filepath], obj.lineno)
            except (KeyError, TypeError, IndexError):  # no source (compiled or inspected)
                text = None
            if text:
                obj.docstring = griffe.Docstring(
                    text, lineno=obj.lineno, parent=obj,
                    parser=getattr(agent, "docstring_parser", None),
                    parser_options=getattr(agent, "docstring_options", None),
                )
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)


class HideOwnReexports(griffe.Extension):
    """Document each object once, in the module that defines it.

    Packages re-export their submodules' public names (``from value_routing import
    SelectiveGate``); rendered with ``show_submodules``, every such object would appear twice.
    This drops from each package the aliases that point into its own public submodules. An
    alias into a private module (``kernels._triton_utils.HAS_TRITON``) is kept: the private
    module is not rendered, so the package is where that name is documented.
    """

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._prune(pkg)

    def _prune(self, mod: griffe.Module) -> None:
        for name, member in list(mod.members.items()):
            if member.is_alias:
                inner = member.target_path[len(mod.path) + 1 :].split(".")
                if member.target_path.startswith(mod.path + ".") and not any(p.startswith("_") for p in inner):
                    mod.del_member(name)
            elif member.is_module:
                self._prune(member)
