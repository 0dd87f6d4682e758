"""``python -m recipes.tools.params``: the parameter count of every size × strategy builder
(``--json``: as JSON, the file the docs' table is rendered from)."""

from __future__ import annotations

import argparse
import json

from recipes.lm.builders import param_counts


def format_params(counts: dict[str, dict[str, int]] | None = None) -> str:
    """One row per size, one column per strategy builder (millions of parameters)."""
    counts = param_counts() if counts is None else counts
    lines = [f"{'size':<8}" + "".join(f"{name:>14}" for name in next(iter(counts.values())))]
    for size, row in counts.items():
        lines.append(f"{size:<8}" + "".join(f"{n / 1e6:>13.2f}M" for n in row.values()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the counts as JSON (docs/assets/param_counts.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(json.dumps(param_counts(), indent=1) if args.json else format_params())


if __name__ == "__main__":
    main()
