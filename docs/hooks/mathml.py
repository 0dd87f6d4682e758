"""MkDocs hook: turn ``pymdownx.arithmatex`` (generic mode) output into MathML at build time.

Browsers render MathML natively (Chromium since 109, Firefox, Safari), so the site shows
typeset equations with no JavaScript and no network: nothing is fetched from a CDN. The TeX
is converted by the pure-Python ``latex2mathml`` package (in the ``docs`` extra). If it is
not installed, or a formula uses TeX it does not know, that formula stays as its TeX source
in ``\\( ... \\)`` / ``\\[ ... \\]`` delimiters, which is still readable.
"""

from __future__ import annotations

import html
import logging
import re

log = logging.getLogger("mkdocs.hooks.mathml")

_INLINE = re.compile(r'<span class="arithmatex">\\\((?P<tex>.+?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(?P<tex>.+?)\\\]</div>', re.S)


def _converter():
    try:
        from latex2mathml.converter import convert
    except ImportError:
        return None
    return convert


_TEXT = re.compile(r"\\(text|mathrm|texttt)\{([^{}]*)\}")


def _normalise(tex: str) -> str:
    """TeX's escaped underscore: a plain ``_`` inside text macros, a literal one elsewhere."""
    tex = _TEXT.sub(lambda m: f"\\{m.group(1)}{{{m.group(2).replace(chr(92) + '_', '_')}}}", tex)
    return tex.replace("\\_", "\\text{_}")


def _render(match: re.Match[str], display: str, convert) -> str:
    tex = _normalise(html.unescape(match.group("tex")).strip())
    try:
        mathml = convert(tex, display=display)
    except Exception as err:  # an unknown macro must not break the build: keep the TeX
        log.info("math left as TeX (%s): %s", err, tex)
        return match.group(0)
    tag = "div" if display == "block" else "span"
    return f'<{tag} class="arithmatex" data-tex="{html.escape(tex, quote=True)}">{mathml}</{tag}>'


def on_page_content(content: str, **kwargs) -> str:
    convert = _converter()
    if convert is None:
        return content
    content = _BLOCK.sub(lambda m: _render(m, "block", convert), content)
    return _INLINE.sub(lambda m: _render(m, "inline", convert), content)
