"""Layers never import upward (STYLE.md §1): the order of DESIGN.md, as refined in docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "exitnet"

# Lower number = lower layer. A module may import only modules of its own layer or lower ones.
LAYERS: dict[str, int] = {
    "_version": 0,
    "_utils": 0,
    "rows": 0,
    "scores": 0,
    "timing": 0,
    "outputs": 0,
    "heads": 0,
    "data": 0,
    "backbones": 0,
    "points": 1,
    "cost": 1,
    "model": 2,
    "_batches": 2,
    "policies": 3,
    "checkpoint": 4,
    "train": 5,
    "calibration": 6,
    "runtime": 6,
    "analysis": 6,
    "placement": 6,
    "plots": 7,
    "demo": 7,
    "tiers": 7,
    "bench": 7,
    "commands": 7,
    "cli": 8,
}


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "exitnet" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def test_no_upward_imports() -> None:
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        if rel.parts == ("__init__",):
            continue  # the package root re-exports everything
        own = LAYERS.get(rel.parts[0])
        assert own is not None, f"{rel}: add this module to LAYERS in tests/test_layers.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # no relative imports here
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                layer = _layer_of(name)
                if layer is not None and layer > own:
                    offenders.append(f"{rel} (layer {own}) imports {name} (layer {layer})")
    assert not offenders, "upward imports:\n" + "\n".join(sorted(set(offenders)))


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = ["exitnet", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (relative and lazy imports too), resolved to module names."""
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # imports for type hints only do not run
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            if t in modules and t != own:
                found.add(t)
    return found


def test_sub_modules_import_no_cycle() -> None:
    """Sub-modules too: no module imports, directly or through others (lazy imports included), one that imports
    it back (a cycle such as calibration/_core <-> calibration/risk). A package's ``__init__`` re-exports its
    sub-modules and is left out."""
    paths = {(_module_name(p)): p for p in PKG.rglob("*.py")}
    modules = set(paths)
    graph = {m: {t for t in _imports(p, modules) if not paths[t].name == "__init__.py"}
             for m, p in paths.items() if p.name != "__init__.py"}  # fmt: skip
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*trail[trail.index(t) :], t]))
            elif t not in state:
                visit(t, [*trail, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
