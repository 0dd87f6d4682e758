"""MkDocs hook: render committed study results into a page.

``<!-- study-results: DIR -->`` (``DIR`` relative to ``docs/``, e.g. ``results/study``) expands to
the ``results.md`` that ``python -m recipes.experiments.study`` wrote into ``docs/DIR`` followed by the
plots it wrote there; until that directory holds results, to a note saying how to produce them.
Numbers on the page therefore always come from a committed run, never typed in by hand. Only
plots that exist are linked, so ``mkdocs build --strict`` passes either way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MARKER = re.compile(r"<!--\s*study-results:\s*(?P<dir>[\w./-]+)\s*-->")
_PRESETS = {"results/study": "published", "results/demo": "demo"}


def _expand(match: re.Match, docs: Path, page_dir: Path) -> str:
    rel = match["dir"]
    directory = docs / rel
    table = directory / "results.md"
    if not table.exists():
        if rel == "results/ladder":
            how = ("`python -m recipes.experiments.study --preset ladder-1000 --workers 2` (resumable), then "
                   "`python -m recipes.experiments.ladder_report` (it writes `results.md`, `summary.json` and the plots there).")
        else:
            how = (f"`python -m recipes.experiments.study --preset {_PRESETS.get(rel, 'published')} --workers 2` "
                   "(resumable; it writes `runs.jsonl`, `results.md`, `summary.json` and the plots there).")
        return f'!!! note "Not run yet"\n    No results are committed in `docs/{rel}` yet. Produce them with\n    {how}\n'
    figures = [f"![{png.stem}]({os.path.relpath(png, docs / page_dir).replace(os.sep, '/')})"
               for png in sorted(directory.glob("*.png"))]
    return table.read_text() + ("\n" + "\n\n".join(figures) + "\n" if figures else "")


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"])
    page_dir = Path(page.file.src_uri).parent
    return _MARKER.sub(lambda m: _expand(m, docs, page_dir), markdown)
