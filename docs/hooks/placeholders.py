"""MkDocs hook: stand-in pages for files that a generator writes into ``docs/``.

``docs/benchmarks.md`` renders measured benchmark results from the JSON files a run of
``recipes.bench`` / ``recipes.bench.depth`` wrote, committed under ``docs/results/bench/``. Until it exists, a short page says how to
produce them, so the nav entry and the links to
it stay valid under ``--strict``. Once the real file is there it is used as is.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files

PLACEHOLDERS = {
    "benchmarks.md": """# Benchmarks

No measured results are committed in this checkout yet. Produce them on your machine with

```bash
python -m recipes.bench --out runs/bench            # --device cuda on a GPU; --quick for a smoke run
```

which trains every registered strategy on the same batch from the same initial weights, times
the train steps interleaved with the baseline's, and writes `tables.md` (step time and peak
memory relative to the baseline, buffer-vs-stack speed-ups, sweeps over sequence length and
depth), `results.json` and the plot `bench_<device>.png` into `--out`. See
[`recipes.bench.step`][recipes.bench.step] for the method.
""",
}


def on_files(files: Files, config, **kwargs) -> Files:
    for src_uri, content in PLACEHOLDERS.items():
        if files.get_file_from_path(src_uri) is None:
            files.append(File.generated(config, src_uri, content=content))
    return files
