"""MkDocs hook: expand ``<!-- param-counts: FILE -->`` into a table of parameter counts.

``FILE`` (relative to the repository root) is the JSON ``python -m recipes.tools.params --json``
writes: ``{size: {strategy: count}}``. The table puts the paper's nominal sizes beside the counts;
``tests/test_paper_presets.py`` checks that the committed file matches the builders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_MARKER = re.compile(r"<!--\s*param-counts:\s*(?P<path>[\w./-]+)\s*-->")

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


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARKER.sub(lambda m: param_table(m.group("path")), markdown)
