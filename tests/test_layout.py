"""The package layout: imports point down the layers and never form a circle.

Every module of ``value_routing``, ``blocks`` and ``recipes`` is parsed with :mod:`ast` (nothing is
imported), including imports inside functions: a lazy import that closes a circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("value_routing", "blocks", "recipes")

#: Layers from the bottom up: a module may import only from its own layer or a lower one.
#: ``recipes`` itself holds no code: it re-exports :mod:`recipes.lm`, the LM recipe every other
#: subpackage builds on, so the package module sits in that layer (:data:`FACADES`).
LAYERS = (
    "value_routing",
    "blocks",
    "recipes.lm",
    "recipes.data",
    "recipes.train",
    "recipes.interop",
    "recipes.eval",
    "recipes.experiments",
    "recipes.bench",
    "recipes.tools",
)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that module ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module, or a name inside one
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = module_files(root)
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


#: Package modules that only re-export a layer: they count as part of it.
FACADES = {"recipes": "recipes.lm"}


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the deepest layer containing ``module`` (``recipes.lm.model`` is in
    layer ``recipes``, ``recipes.train.loop`` in ``recipes.train``)."""
    module = FACADES.get(module, module)
    best = -1
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            if best < 0 or len(layer) > len(LAYERS[best]):
                best = i
    if best < 0:
        raise AssertionError(f"module {module} is in no layer of {LAYERS}")
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))


def test_every_subpackage_is_a_known_layer():
    mods = module_files()
    packages = {n for n, p in mods.items() if p.name == "__init__.py"}
    assert packages - set(LAYERS) - set(FACADES) <= {n for n in packages if n.startswith(("value_routing.", "blocks."))}
    for layer in LAYERS:
        assert layer in mods, f"layer {layer} has no package"


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_recipes_reexports_the_user_facing_names():
    import importlib

    import recipes

    builders, config, generate, model = (
        importlib.import_module(f"recipes.lm.{m}") for m in ("builders", "config", "generate", "model")
    )
    homes = {
        builders: ("SIZES", "model_config", "transformer", "resformer", "satformer",
                   "denseformer", "muddformer", "hyperconnections"),
        config: ("ModelConfig",),
        generate: ("generate", "sample"),  # the function, not the submodule of the same name
        model: ("CausalLM", "KVCache"),
    }
    assert sorted(recipes.__all__) == sorted(n for names in homes.values() for n in names)
    for home, names in homes.items():
        for name in names:
            assert getattr(recipes, name) is getattr(home, name), name


# The checker itself, on a planted tree: it must see lazy, relative and submodule imports.
@pytest.fixture
def planted(tmp_path: Path) -> Path:
    files = {
        "value_routing/__init__.py": "",
        "value_routing/core.py": "def f():\n    from recipes.train import demo\n",  # upward, lazy
        "blocks/__init__.py": "from .block import B\n",
        "blocks/block.py": "import value_routing.core\n",
        "recipes/__init__.py": "",
        "recipes/lm/model.py": "from blocks import B\n",
        "recipes/train/__init__.py": "",
        "recipes/train/demo.py": "from recipes.eval import mqar\n",  # train -> eval: upward
        "recipes/eval/__init__.py": "",
        "recipes/eval/mqar.py": "from ..train.demo import x\n",  # relative; closes a circle
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_checker_finds_planted_circle_and_upward_imports(planted: Path):
    graph = import_graph(planted)
    assert graph["recipes.eval.mqar"] == {"recipes.train.demo"}
    assert graph["recipes.train.demo"] == {"recipes.eval.mqar"}
    assert graph["blocks"] == {"blocks.block"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"recipes.eval.mqar", "recipes.train.demo"}
    assert upward_imports(graph) == [
        ("recipes.train.demo", "recipes.eval.mqar"),
        ("value_routing.core", "recipes.train.demo"),
    ]
