"""The documentation site: builds with ``mkdocs build --strict``, documents every public name,
renders in headless Chromium, and its guides' Python examples run.

The site is built once per test session (shared by the pytest-xdist workers through a lock
file) into a temporary directory. The browser test serves it on 127.0.0.1 and asserts on the
DOM that Chromium produced after running the page's scripts; Chromium's name resolution is
pinned so that nothing beyond 127.0.0.1 can be reached.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATE_ID = "value_routing.strategies.selective_gate.SelectiveGate"


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site; built once even when several xdist workers ask for it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # .../pytest-N/popen-gwK -> .../pytest-N: common to this run's workers
    out, done = shared / "docs-site", shared / "docs-site.ok"
    with open(shared / "docs-site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
                cwd=ROOT, capture_output=True, text=True, timeout=300,
                env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
            )
            if proc.returncode != 0:
                pytest.fail(f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}")
            done.write_text(proc.stderr)
        elif not (out / "index.html").exists():
            pytest.fail("an earlier worker's mkdocs build failed")
    return out


def test_strict_build_has_index_and_api_pages(site: Path) -> None:
    assert (site / "index.html").is_file()
    html = (site / "api" / "strategies" / "index.html").read_text()
    assert f'id="{GATE_ID}"' in html
    assert f'id="{GATE_ID}.mix_v1"' in html  # the equation's method (mix_value comes from ValueResidual)
    # Equations were typeset to MathML at build time (no MathJax, no network).
    if importlib.util.find_spec("latex2mathml") is not None:
        assert "<math" in html and 'class="arithmatex"' in html
        assert '<span class="arithmatex">\\(' not in html, "an inline formula was left as TeX source"


def _exports(package: str) -> list[str]:
    return list(importlib.import_module(package).__all__)


@pytest.mark.parametrize(
    "package", ["value_routing", "value_routing.strategies", "value_routing.kernels", "value_routing.attention", "blocks"]
)
def test_every_public_name_has_an_api_entry(site: Path, package: str) -> None:
    ids: set[str] = set()
    for page in (site / "api").rglob("index.html"):
        ids.update(re.findall(r'id="([\w.]+)"', page.read_text()))
    names = {i.rsplit(".", 1)[-1] for i in ids if i.startswith(package + ".")}
    missing = sorted(set(_exports(package)) - names)
    assert not missing, f"public names of {package} without an API entry: {missing}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after Chromium loaded ``url`` and ran its scripts."""
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and proc.stdout.strip(), f"chromium failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (scripts/setup.sh installs Debian's chromium as root)")
def test_chromium_renders_the_selective_gate_api_entry(site: Path, served: str, tmp_path: Path) -> None:
    index = dump_dom(f"{served}/index.html", tmp_path / "profile")
    api = dump_dom(f"{served}/api/strategies/", tmp_path / "profile")

    # The home page links to the SelectiveGate API entry ...
    assert re.search(rf'<a [^>]*href="api/strategies/#{re.escape(GATE_ID)}"', index), "no link to the API entry"
    # ... and the API page shows it: the heading with its anchor, signature and equation.
    heading = re.search(rf'<h\d [^>]*id="{re.escape(GATE_ID)}"[^>]*>(.*?)</h\d>', api, re.S)
    assert heading and "SelectiveGate" in heading.group(1), "no SelectiveGate heading on the API page"
    assert "SelectiveGate(" in re.sub(r"<[^>]+>", "", api), "no SelectiveGate signature"
    assert "<math" in api or "\\[" in api, "no equation on the API page"
    # The page's scripts ran in the browser: Material's bundle swaps the "no-js" class for "js".
    assert '<html lang="en" class="no-js">' in (site / "api" / "strategies" / "index.html").read_text()
    root = re.search(r"<html[^>]*>", api).group(0)
    assert re.search(r'class="[^"]*\bjs\b', root) and "no-js" not in root, f"scripts did not run: {root}"


def _python_blocks(page: Path) -> str:
    return "\n\n".join(re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M))


@pytest.mark.parametrize("guide", ["quickstart.md", "custom-model.md", "selective-gate.md", "training.md", "gate-analysis.md",
                                   "convert.md", "huggingface.md"])
def test_guide_examples_run(guide: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ``python`` block of a guide, run in order in one namespace, executes without error."""
    code = _python_blocks(ROOT / "docs" / "guides" / guide)
    assert code, f"no python examples in {guide}"
    exec(compile(code, guide, "exec"), {"__name__": f"docs_{guide}"})


def test_rst_docstrings_become_markdown() -> None:
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs" / "hooks" / "griffe_rst.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (
        "Mix :math:`V_1` into :class:`~a.b.Strategy` values:\n\n.. math:: V' = V + V_1\n\n"
        "Use it::\n\n    gate(x)\n\n``hook(x)``\n    What it does.\n``other()``\n    More."
    )
    assert mod.rst_to_markdown(text) == (
        "Mix $V_1$ into `Strategy` values:\n\n$$\nV' = V + V_1\n$$\n\n"
        "Use it:\n\n    gate(x)\n\n``hook(x)``\n:   What it does.\n\n``other()``\n:   More."
    )


def test_results_page_renders_the_committed_study(site: Path, tmp_path: Path) -> None:
    """docs/results.md shows the committed study's table and plots, or says how to produce them."""
    html = (site / "results" / "index.html").read_text()
    for rel in ("results/study", "results/demo"):
        table = ROOT / "docs" / rel / "results.md"
        if table.exists():
            assert table.read_text().splitlines()[0].lstrip("# ") in html
        else:
            assert f"docs/{rel}</code> yet" in html
    spec = importlib.util.spec_from_file_location("results_hook", ROOT / "docs" / "hooks" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "results.md").write_text("| a | b |\n")
    (tmp_path / "results" / "x" / "delta_lm.png").write_bytes(b"png")
    page = type("Page", (), {"file": type("File", (), {"src_uri": "guides/page.md"})()})()
    out = mod.on_page_markdown("A\n<!-- study-results: results/x -->\nB", page, {"docs_dir": str(tmp_path)}, None)
    assert out == "A\n| a | b |\n\n![delta_lm](../results/x/delta_lm.png)\n\nB"
    missing = mod.on_page_markdown("<!-- study-results: results/y -->", page, {"docs_dir": str(tmp_path)}, None)
    assert "Not run yet" in missing and "--preset published" in missing


def _bench_results_hook():
    spec = importlib.util.spec_from_file_location("bench_results_hook", ROOT / "docs" / "hooks" / "bench_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_markers_render_from_the_json_and_fail_when_it_lacks_a_row(tmp_path: Path) -> None:
    import json

    hook = _bench_results_hook()
    (tmp_path / "results" / "bench").mkdir(parents=True)
    rows = [{"label": "a", "mode": "eager", "rel_memory": 1.0}, {"label": "b", "mode": "eager", "rel_memory": 1.23456}]
    (tmp_path / "results" / "bench" / "r.json").write_text(json.dumps({"machine": "m", "config": {"batch": 8}, "seconds": 12.4,
                                                             "main": rows}))
    hook.on_config({"docs_dir": str(tmp_path)})
    page = "x <!-- results: r.json value main label=b,mode=eager rel_memory --> y <!-- results: r.json config.batch -->"
    assert hook.on_page_markdown(page) == "x 1.235 y 8"
    assert hook.render("r.json range main mode=eager rel_memory .2f") == "1.00–1.23"
    assert hook.render("r.json seconds") == "12"
    for bad, match in (("r.json value main label=c rel_memory", "no row"), ("r.json value main mode=eager rel_memory", "2 rows"),
                       ("missing.json machine", "does not exist"), ("r.json value main label=a nope", "no field")):
        with pytest.raises(ValueError, match=match):
            hook.render(bad)


def test_benchmark_page_shows_the_committed_results(site: Path) -> None:
    import json

    data = json.loads((ROOT / "docs" / "results" / "bench" / "bench_cpu.json").read_text())
    sat = next(r for r in data["main"] if r["label"] == "satformer" and r["mode"] == "eager")
    html = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- results:" not in html and f"{sat['rel_memory']:.3f}" in html
    assert f"| satformer | eager | {sat['ms_per_step']:.1f} |" not in html  # the table was rendered to HTML
    assert re.search(rf"<td>satformer</td>\s*<td>eager</td>\s*<td[^>]*>{sat['ms_per_step']:.1f}</td>", html)
