"""MkDocs hook: parameter counts rendered from the builders' committed counts.

``<!-- param-counts: FILE -->``
    a table of every size × strategy, with the paper's nominal sizes beside the counts;
``<!-- param-counts: FILE added SIZE STRATEGY -->``
    the parameters ``STRATEGY`` adds to the baseline at ``SIZE`` (``12,345``).

``FILE`` (relative to the repository root) is the JSON ``python -m recipes.tools.params --json``
writes: ``{size: {strategy: count}}``; ``tests/test_paper_presets.py`` checks that the committed
file matches the builders. A marker naming a missing size or strategy fails the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_MARKER = re.compile(r"<!--\s*param-counts:\s*(?P<path>[\w./-]+)(?:\s+added\s+(?P<size>\w+)\s+(?P<name>[\w-]+))?\s*-->")

#: The SATFormer paper's model range is "130M to 1.3B parameters" (its abstract); the authors'
#: README names no count per size, so medium and large have none.
NOMINAL = {"small": "130M", "medium": "—", "large": "—", "xl": "1.3B"}


def param_table(path: str) -> str:
    counts: dict[str, dict[str, int]] = json.loads(Path(path).read_text())
    strategies = list(next(iter(counts.values())))
    rows = ["| size | paper | " + " | ".join(f"`{s}`" for s in strategies) + " |",
            "|---|---|" + "---:|" * len(strategies)]
    for size, row in counts.items():
        cells = " | ".join(f"{row[s] / 1e6:,.2f}M" for s in strategies)
        rows.append(f"| `{size}` | {NOMINAL.get(size, '— (ours)')} | {cells} |")
    return "\n".join(rows)


def added_params(path: str, size: str, strategy: str) -> str:
    counts: dict[str, dict[str, int]] = json.loads(Path(path).read_text())
    if size not in counts or strategy not in counts[size] or "baseline" not in counts[size]:
        raise ValueError(f"param-counts marker: {path} has no size {size!r} with strategies {strategy!r} and 'baseline'")
    return f"{counts[size][strategy] - counts[size]['baseline']:,}"


def _render(m: re.Match) -> str:
    if m.group("size"):
        return added_params(m.group("path"), m.group("size"), m.group("name"))
    return param_table(m.group("path"))


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARKER.sub(_render, markdown)
