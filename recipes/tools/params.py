"""``python -m recipes.tools.params``: the parameter count of every size × strategy builder
(``--json``: as JSON, the file the docs' table is rendered from)."""

from __future__ import annotations

import json
import sys

from recipes.lm.builders import param_counts


def format_params(counts: dict[str, dict[str, int]] | None = None) -> str:
    """One row per size, one column per strategy builder (millions of parameters)."""
    counts = param_counts() if counts is None else counts
    lines = [f"{'size':<8}" + "".join(f"{name:>14}" for name in next(iter(counts.values())))]
    for size, row in counts.items():
        lines.append(f"{size:<8}" + "".join(f"{n / 1e6:>13.2f}M" for n in row.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--json"]):
        raise ValueError(f"arguments must be [] or ['--json'], got {argv}")
    print(json.dumps(param_counts(), indent=1) if argv else format_params())


if __name__ == "__main__":
    main()
