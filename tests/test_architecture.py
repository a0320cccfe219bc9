"""The tree draws the architecture: imports flow one way, and ``passes/`` holds passes only.

Layers, top to bottom (a module may import from its own layer and the layers below):
cli → features (quantize, prune, tune, distill) → runtime, bundle → compiler → passes, schedules,
rewrite → channels → frontend, targets → ir, registry, errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import relaycomp
from relaycomp.registry import PASSES

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"relaycomp": ROOT / "relaycomp", "relaycomp.passes": ROOT / "passes",
           "relaycomp.targets": ROOT / "targets"}
LAYERS = [
    {"relaycomp.cli"},
    {"relaycomp.quantize", "relaycomp.prune", "relaycomp.tune", "relaycomp.distill",
     "relaycomp.precision"},
    {"relaycomp.runtime", "relaycomp.bundle"},
    {"relaycomp.compiler"},
    {"relaycomp.passes", "relaycomp.schedules", "relaycomp.rewrite"},
    {"relaycomp.channels"},
    {"relaycomp.frontend", "relaycomp.targets"},
    {"relaycomp.ir", "relaycomp.registry", "relaycomp.errors"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "relaycomp" and parts and parts[0] in ("passes", "targets"):
                continue
            found[name] = path
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only:
    never executed, so they cannot make an import cycle)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path) -> set[str]:
    """Modules of relaycomp that ``name`` imports (anywhere in it, lazily too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    return None


def _cycle() -> list[str] | None:
    """One import cycle among relaycomp's modules (package ``__init__``s excluded: they only
    re-export), or None."""
    graph = {m: {d for d in deps if MODULES[d].name != "__init__.py"}
             for m, deps in GRAPH.items() if MODULES[m].name != "__init__.py"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_there_is_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_cycle_finder_finds_a_cycle():
    GRAPH["relaycomp.errors"].add("relaycomp.registry")  # registry imports errors already
    try:
        assert _cycle() is not None
    finally:
        GRAPH["relaycomp.errors"].discard("relaycomp.registry")


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if m != "relaycomp" and _layer(m) is None]
    assert not loose, f"modules outside the layers: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "relaycomp"))
def test_imports_flow_down_the_layers(module):
    upward = [dep for dep in GRAPH[module] if dep != "relaycomp"
              and _layer(dep) is not None and _layer(dep) < _layer(module)]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_features_do_not_import_each_other():
    features = sorted(LAYERS[1])
    for module, deps in GRAPH.items():
        own = next((f for f in features if module.startswith(f + ".") or module == f), None)
        if own is None:
            continue
        others = [d for d in deps for f in features if f != own and d.startswith(f + ".")]
        assert not others, f"{module} imports another feature: {others}"


def test_the_driver_names_no_feature():
    for module in ("relaycomp.compiler.build", "relaycomp.cli.main"):
        source = MODULES[module].read_text()
        for feature in ("quantize", "prune", "tune", "distill"):
            assert f"relaycomp.{feature}" not in source, f"{module} names {feature}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if m.startswith("relaycomp.passes.")))
def test_every_module_in_passes_is_one_registered_pass_named_after_it(module):
    name = module.rsplit(".", 1)[1]
    assert name in PASSES, f"passes/{name}.py registers no pass called '{name}'"
    source = MODULES[module].read_text()
    assert source.count("@register_pass(") == 1, f"passes/{name}.py registers more than one pass"
    assert relaycomp.passes.__doc__

