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
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                layer = _layer_of(name)
                if layer is not None and layer > own:
                    offenders.append(f"{rel} (layer {own}) imports {name} (layer {layer})")
    assert not offenders, "upward imports:\n" + "\n".join(sorted(set(offenders)))
