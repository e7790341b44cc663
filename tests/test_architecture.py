"""Layers point down only: walks every import of the installed package (top of file or inside functions) and
fails on any circle between modules or any import of a module from a higher layer.

The layer order is data, here; docs/architecture.md draws it. Within a layer, modules may import each other as
long as no circle forms.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. An entry names a module and, if it is a package, everything inside it (the longest entry wins),
# except the containers below, which name only their own __init__: a new module beside them must be placed.
LAYERS = [
    ("core", ["asvp", "asvp.errors", "asvp.io", "asvp.config", "asvp.constants", "asvp.options", "asvp.method",
              "asvp.subspace", "asvp.variants", "asvp.metrics", "asvp.onnx_utils", "asvp.tasks", "asvp.fingerprint",
              "asvp.standins"]),
    ("graph_passes", ["asvp.graph_passes"]),
    ("engines", ["asvp.runtime", "asvp.runtime.engines", "asvp.runtime.serving"]),
    ("exporter", ["asvp.exporter"]),
    ("evaluation", ["asvp.runtime.evaluation"]),
    # fingerprint and attacks are siblings on the served-model plumbing of evaluation: neither imports the other
    # (test_attacks_and_fingerprint_are_siblings); the list needs an order, so fingerprint comes first.
    ("fingerprint", ["asvp.runtime.fingerprint"]),
    ("attacks", ["asvp.runtime.attacks"]),
    ("api", ["asvp.api", "asvp.api_serving"]),
    ("cli", ["asvp.cli", "asvp.demo"]),
]
CONTAINERS = {"asvp", "asvp.runtime"}
# Folders of the repository that are not the product: nothing the package installs may import them.
NOT_PRODUCT = {"benchmarks", "research", "tests"}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for p in entries:
            inside = module.startswith(p + ".") and p not in CONTAINERS
            if (module == p or inside) and len(p) > best_len:
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


@pytest.mark.parametrize("module", ["asvp.newthing", "asvp.runtime.newthing"])
def test_a_module_missing_from_the_layers_fails(module):
    """The check can fail: a new module beside the containers' own modules is in no layer until LAYERS says so."""
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of(module)


def test_every_layer_entry_is_a_module():
    """A stale entry (a module moved or deleted) would place nothing and hide nothing: each entry must exist."""
    mods = set(all_modules())
    stale = [p for _, entries in LAYERS for p in entries if p not in mods]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file, anywhere in it (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_product_imports_no_research_nor_benchmarks():
    bad = [f"{m} imports {sorted(top_level_imports(p) & NOT_PRODUCT)}" for m, p in all_modules().items()
           if top_level_imports(p) & NOT_PRODUCT]
    assert not bad, "the product imports a folder outside it:\n" + "\n".join(bad)


def test_the_checker_sees_a_planted_research_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from research.fingerprint_eval import KEY\n    import benchmarks.gpu\n    return KEY\n")
    assert top_level_imports(f) & NOT_PRODUCT == {"research", "benchmarks"}


def test_no_upward_imports():
    graph = import_graph()
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
           for m, deps in graph.items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_attacks_and_fingerprint_are_siblings():
    """The owner's fingerprint never depends on the attacker, and the attacker never on the fingerprint."""
    graph = import_graph()
    pairs = (("asvp.runtime.attacks", "asvp.runtime.fingerprint"), ("asvp.runtime.fingerprint", "asvp.runtime.attacks"))
    bad = [f"{m} imports {d}" for a, b in pairs for m, deps in graph.items() if layer_of(m) == layer_of(a)
           for d in sorted(deps) if layer_of(d) == layer_of(b)]
    assert not bad, "\n".join(bad)


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


OWN_TOPS = ("asvp", "benchmarks", "research")


def private_imports(path: Path) -> list[str]:
    """Private names (`_x`, not dunders) that a file takes from another of the project's modules: `from m import _x`,
    or `m._x` on a module it imported (`import asvp.m as m`, `from asvp import m`)."""
    tree = ast.parse(path.read_text())
    own_aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in OWN_TOPS:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"from {node.module} import {a.name}")
                own_aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            own_aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in OWN_TOPS}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in own_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def project_files() -> list[Path]:
    files = list(all_modules().values())
    for top in ("benchmarks", "research"):
        files += sorted((ROOT / top).glob("*.py"))
    return files


def test_no_private_name_is_imported_across_modules():
    bad = [f"{p.relative_to(ROOT)}: {what}" for p in project_files() for what in private_imports(p)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_checker_sees_a_planted_private_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from asvp.runtime.attacks.run import _helper\nfrom asvp import api\napi._fp\n")
    assert private_imports(f) == ["from asvp.runtime.attacks.run import _helper", "api._fp"]
