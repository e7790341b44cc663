"""Layers point down only: walks every import of the installed package (top of file or inside functions) and
fails on any circle between modules or any import of a module from a higher layer.

The layer order is data, here; docs/architecture.md draws it. Within a layer, modules may import each other as
long as no circle forms.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A module belongs to the first layer whose prefix matches (longest prefixes win).
LAYERS = [
    ("core", ["asvp", "asvp.errors", "asvp.io", "asvp.config", "asvp.method", "asvp.metrics", "asvp.onnx_utils",
              "asvp.tasks"]),
    ("graph_passes", ["asvp.graph_passes"]),
    ("engines", ["asvp.runtime", "asvp.runtime.engines", "asvp.runtime.serving"]),
    ("exporter", ["asvp.exporter"]),
    ("evaluation", ["asvp.runtime.evaluation"]),
    ("attacks", ["asvp.runtime.attacks"]),
    ("api", ["asvp.api", "asvp.api_serving"]),
    ("cli", ["asvp.cli", "asvp.demo"]),
]


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"module {module} is in no layer: add it to LAYERS"
    return best


def all_modules() -> dict[str, Path]:
    """Module name -> source file, for every package pyproject.toml installs (the package-dir mapping puts
    exporter/, graph_passes/ and runtime/ under asvp)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = tool.get("package-dir", {})
    found = {}
    for pkg in tool["packages"]:
        folder = ROOT / dirs.get(pkg, pkg.replace(".", "/"))
        for f in sorted(folder.glob("*.py")):
            found[pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"] = f
    return found


def test_every_package_folder_is_installed():
    """A new sub-package that pyproject.toml does not list would be missing from a real install (and from this walk)."""
    listed = {p.parent for p in all_modules().values()}
    for top in ("asvp", "exporter", "graph_passes", "runtime"):
        for init in (ROOT / top).rglob("__init__.py"):
            assert init.parent in listed, f"{init.parent.relative_to(ROOT)} is not in pyproject's packages"


def own_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every asvp module `name` imports, anywhere in the file ("from asvp.x import y" counts y if it is a module)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "asvp"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "asvp":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    out.discard(name)
    return {m for m in out if m in known}


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    return {m: own_imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in all_modules():
        layer_of(m)


def test_no_upward_imports():
    graph = import_graph()
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
           for m, deps in graph.items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    """The walk must be able to fail: a function-level import of a higher layer is found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from asvp import api\n    return api\n")
    deps = own_imports("asvp.method", f, set(all_modules()))
    assert "asvp.api" in deps and layer_of("asvp.api") > layer_of("asvp.method")
