"""The package's house rules, read from its source: imports run one way and never in a circle.

Every ``import`` and ``from ... import`` in ``fmnist_mlp/`` counts, at the top of a module or inside
a function alike (a function-level import is a dependency that waits; it is still one). Folders
are ranked; a module may import its own folder and anything ranked below its folder, never above:

    cli  ->  api  ->  sweep, export, predict, plots, serve  ->  scoring  ->  training, rundir  ->  config
         ->  nn, data  ->  io  ->  errors (and the package root, which holds __version__)

Between two folders of one rank only the pairs in ALLOWED_ACROSS may meet (training uses rundir's
recorder; nn may read data.facts, the dataset's shape, and nothing else of data; serve reads
image files as predict does). Nothing imports
cli but ``__main__``; nothing imports the Python API (``api``) but the package root, which
re-exports ``train`` and ``load`` lazily (on first use, so ``import fmnist_mlp`` stays cheap). The engine (``fmnist_mlp.nn``, ``fmnist_mlp.optim``) and the dataset's facts
must load without yaml, click, requests or tqdm: checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmnist_mlp"
ROOT = "fmnist_mlp"

RANKS = {
    "cli": 8,
    "api": 7,
    "sweep": 6, "export": 6, "predict": 6, "plots": 6, "serve": 6,
    "scoring": 5,
    "training": 4, "rundir": 4,
    "config": 3,
    "nn": 2, "data": 2,
    "io": 1,
    "errors": 0, "": 0,          # "": the package root (fmnist_mlp/__init__.py: __version__)
}
# Top-level modules that belong to a folder's layer: the README's import path for the optimisers.
GROUP_OF_MODULE = {"fmnist_mlp.optim": "nn"}
# (importer's folder, imported module prefix) pairs allowed within one rank.
ALLOWED_ACROSS = {("training", "fmnist_mlp.rundir"), ("nn", "fmnist_mlp.data.facts"),
                  ("serve", "fmnist_mlp.predict")}     # serve decodes images as predict does
ENTRY_POINT = "fmnist_mlp.__main__"
FRONT_DOOR = ("fmnist_mlp", "fmnist_mlp.api")     # the root's lazy re-export of the Python API


def _modules() -> dict[str, Path]:
    """``{dotted name: path}`` of every module in the package (packages by their __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The package's module ``name`` refers to (itself, or the package holding the attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """``[(imported module, line)]``: each fmnist_mlp module this one imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target) if target.split(".")[0] == ROOT else None
            if resolved and resolved != module:
                found.append((resolved, node.lineno))
    return found


EDGES = {module: _imports(module, path) for module, path in MODULES.items()}


def _group(module: str) -> str:
    if module in GROUP_OF_MODULE:
        return GROUP_OF_MODULE[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def layering_violations() -> list[str]:
    bad = []
    for module, imports in EDGES.items():
        if module == ENTRY_POINT:
            continue
        mine = _group(module)
        for target, line in imports:
            theirs = _group(target)
            if theirs == mine or (module, target) == FRONT_DOOR:
                continue
            if target == "fmnist_mlp.cli":
                bad.append(f"{_where(module, line)}: {module} imports cli (nothing may)")
            elif RANKS[theirs] > RANKS[mine]:
                bad.append(f"{_where(module, line)}: {module} ({mine}) imports {target} ({theirs}), "
                           f"a higher layer")
            elif RANKS[theirs] == RANKS[mine] and not any(
                    mine == a and (target == b or target.startswith(b + "."))
                    for a, b in ALLOWED_ACROSS):
                bad.append(f"{_where(module, line)}: {module} ({mine}) imports {target} ({theirs}), "
                           f"a folder of the same layer")
    return bad


def import_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    # The root's re-export of the API runs on first use of fmnist_mlp.train, after the root (and
    # its __version__, which data.http reads) has loaded: an edge that cannot close a circle.
    graph = {m: sorted({t for t, _ in imports if (m, t) != FRONT_DOOR})
             for m, imports in EDGES.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_every_folder_has_a_layer():
    assert {_group(m) for m in MODULES if m != ENTRY_POINT} <= set(RANKS)


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "fake.py"
    source.write_text("import numpy\n"
                      "from fmnist_mlp.nn import layers, MLP\n"
                      "def late():\n"
                      "    from ..config.plan import build\n"
                      "    import fmnist_mlp.data.facts as facts\n"
                      "    from . import losses\n", encoding="utf-8")
    assert sorted(_imports("fmnist_mlp.nn.fake", source)) == [
        ("fmnist_mlp.config.plan", 4), ("fmnist_mlp.data.facts", 5), ("fmnist_mlp.nn", 2),
        ("fmnist_mlp.nn.layers", 2), ("fmnist_mlp.nn.losses", 6)]
    assert any(t == "fmnist_mlp.cli" for t, _ in EDGES[ENTRY_POINT])


def test_imports_run_one_way_down_the_layers():
    bad = layering_violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_circles():
    cycles = import_cycles()
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent, timeout=60).stdout
    return set(out.split())


HEAVY = ("yaml", "click", "requests", "tqdm", "urllib3", "fmnist_mlp.config")


@pytest.mark.parametrize("statement", ["import fmnist_mlp.nn, fmnist_mlp.optim",
                                       "from fmnist_mlp.optim import make_optimizer; "
                                       "from fmnist_mlp.nn import MLP; "
                                       "MLP.from_config({'model': {'hidden': [8]}, 'seed': 0})"])
def test_the_engine_imports_numpy_only(statement):
    loaded = _loaded_after(statement)
    assert "numpy" in loaded
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"{statement!r} loaded {heavy}"


def test_the_package_root_is_cheap_and_opens_the_front_door_on_first_use():
    loaded = _loaded_after("import fmnist_mlp")
    assert not sorted(m for m in loaded if m.split(".")[0] in ("numpy", "yaml", "click", "tqdm")
                      or m == "fmnist_mlp.api")
    loaded = _loaded_after("import fmnist_mlp; fmnist_mlp.train, fmnist_mlp.load")
    assert "fmnist_mlp.api" in loaded and "fmnist_mlp.training.session" not in loaded
    assert not any(m == "fmnist_mlp.cli" or m.startswith("fmnist_mlp.cli.") for m in loaded)
    importers = [m for m, imports in EDGES.items() if any(t == "fmnist_mlp.api" for t, _ in imports)]
    assert importers == ["fmnist_mlp"]          # the front door is the root's, and no one else's


def test_the_datasets_facts_load_without_numpy_or_the_network_stack():
    loaded = _loaded_after("import fmnist_mlp.data.facts; from fmnist_mlp.data import CLASS_NAMES, "
                           "NUM_FEATURES, IMAGE_SHAPE")
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("numpy", "requests", "tqdm", "urllib3"))
    assert not heavy, heavy
    assert "fmnist_mlp.data.dataset" not in loaded


def test_the_data_package_still_offers_its_api_lazily():
    from fmnist_mlp.data import CLASS_NAMES, load_raw, make_splits
    from fmnist_mlp.data import dataset, facts

    assert CLASS_NAMES is facts.CLASS_NAMES and len(CLASS_NAMES) == facts.NUM_CLASSES == 10
    assert load_raw is dataset.load_raw and make_splits is dataset.make_splits
    with pytest.raises(ImportError):
        from fmnist_mlp.data import no_such_name  # noqa: F401
