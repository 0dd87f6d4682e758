"""MkDocs hook: numbers from runs are rendered from committed results files, never typed in.

A page writes a marker where a measured table or number goes; the build replaces it with what
the JSON under ``docs/results/bench/`` (written by ``recipes.bench``, ``recipes.bench.depth``,
``recipes.bench.lean`` and ``recipes.bench.hf_vs_ours``) holds:

``<!-- results: FILE table -->``
    the main table and the buffer-vs-stack ratios (as in the run's ``tables.md``);
``<!-- results: FILE sweep -->`` / ``<!-- results: FILE depth-table -->`` / ``<!-- results: FILE hf-table -->`` /
``<!-- results: FILE hf-patch-table -->``
    the sweep tables / the routing-alone table / ours against Hugging Face's Llama;
``<!-- results: FILE machine -->``, ``<!-- results: FILE config.KEY -->``
    the machine line / one field of the run's config (``seconds`` is the run's duration);
``<!-- results: FILE top KEY [FORMAT] -->``
    a number at the top level of the file (e.g. ``max_logit_gap``), formatted (default ``.3f``);
``<!-- results: FILE value SECTION KEY=VALUE[,KEY=VALUE] FIELD [FORMAT] -->``
    one field of the unique row of ``SECTION`` (``main``, ``sweep``, ``rows``) matching the keys,
    formatted with ``FORMAT`` (default ``.3f``);
``<!-- results: FILE range SECTION KEY=VALUE[,...] FIELD [FORMAT] -->``
    ``min–max`` of a field over all matching rows.

A marker naming a missing file, row or field fails the build (``mkdocs build --strict`` runs in
the tests), so a page cannot quote a number its results file does not hold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"<!--\s*results:\s*(?P<args>[^>]*?)\s*-->")
_docs_dir = Path("docs")


def on_config(config, **kwargs):
    global _docs_dir
    _docs_dir = Path(config["docs_dir"])
    return config


def _load(name: str) -> dict[str, Any]:
    path = _docs_dir / "results" / "bench" / name
    if not path.is_file():
        raise ValueError(f"results marker names {path}, which does not exist")
    return json.loads(path.read_text())


def _rows(data: dict[str, Any], section: str, selector: str) -> list[dict[str, Any]]:
    wanted = dict(item.split("=", 1) for item in selector.split(",") if item)
    rows = [r for r in data[section] if all(str(r.get(k)) == v for k, v in wanted.items())]
    if not rows:
        raise ValueError(f"no row of {section!r} matches {wanted}")
    return rows


def _field(row: dict[str, Any], name: str) -> float:
    if name == "peak_mib":
        return row["peak_bytes"] / 2**20
    if name not in row:
        raise ValueError(f"row {row.get('label', row.get('strategy'))!r} has no field {name!r}")
    return row[name]


def render(args: str) -> str:
    name, what, *rest = args.split()
    data = _load(name)
    from recipes.bench import report as bench_report  # imported lazily: only pages with markers need torch
    from recipes.bench.depth import format_depth_table

    if what == "table":
        return bench_report.format_table(data["main"])
    if what == "sweep":
        return bench_report.format_sweep(data["sweep"])
    if what == "depth-table":
        return format_depth_table(data["rows"])
    if what == "hf-table":
        from recipes.bench.hf_vs_ours import format_rows

        return format_rows(data["rows"])
    if what == "hf-patch-table":
        from recipes.bench.hf_patch import format_rows as format_patch_rows

        return format_patch_rows(data["rows"])
    if what == "machine":
        return data["machine"]
    if what.startswith("config.") or what == "seconds":
        value = data["seconds"] if what == "seconds" else data["config"][what.split(".", 1)[1]]
        return f"{value:.0f}" if isinstance(value, float) else str(value)
    if what == "top":
        key, *fmt = rest
        if key not in data:
            raise ValueError(f"{name} has no top-level field {key!r}")
        return format(data[key], fmt[0] if fmt else ".3f")
    if what in ("value", "range"):
        section, selector, field, *fmt = rest
        spec = fmt[0] if fmt else ".3f"
        values = [_field(r, field) for r in _rows(data, section, selector)]
        if what == "value":
            if len(values) != 1:
                raise ValueError(f"{args!r} matches {len(values)} rows, expected one")
            return format(values[0], spec)
        return f"{format(min(values), spec)}–{format(max(values), spec)}"
    raise ValueError(f"unknown results marker {args!r}")


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARKER.sub(lambda m: render(m.group("args")), markdown)
