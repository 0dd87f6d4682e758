"""``python -m recipes.tools.params``: the parameter count of every size × strategy builder."""

from __future__ import annotations

from recipes.builders import BUILDERS, SIZES, count_params


def format_params() -> str:
    """One row per size, one column per strategy builder (millions of parameters)."""
    lines = [f"{'size':<8}" + "".join(f"{name:>14}" for name in BUILDERS)]
    for size in SIZES:
        counts = [count_params(build(size)) for build in BUILDERS.values()]
        lines.append(f"{size:<8}" + "".join(f"{n / 1e6:>13.2f}M" for n in counts))
    return "\n".join(lines)


def main() -> None:
    print(format_params())


if __name__ == "__main__":
    main()
