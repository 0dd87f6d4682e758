"""MkDocs hook: stand-in pages for files that a generator writes into ``docs/``.

``docs/benchmarks.md`` (with its plots under ``docs/assets/bench_*``) is written by the benchmark
recipe. Until it exists, a short page says how to produce it, so the nav entry and the links to
it stay valid under ``--strict``. Once the real file is there it is used as is.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files

PLACEHOLDERS = {
    "benchmarks.md": """# Benchmarks

No benchmark results have been generated in this checkout yet. The benchmark recipes in
`recipes/` (`python -m recipes.bench ...`) measure throughput, memory and kernel speed-ups in one
run and write this page, with its tables and plots, to `docs/benchmarks.md` and
`docs/assets/bench_*`.
""",
}


def on_files(files: Files, config, **kwargs) -> Files:
    for src_uri, content in PLACEHOLDERS.items():
        if files.get_file_from_path(src_uri) is None:
            files.append(File.generated(config, src_uri, content=content))
    return files
