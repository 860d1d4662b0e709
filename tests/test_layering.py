"""The import layering of docs/index.md holds.

A module imports only from layers at or below its own,
geometry never imports models, and the library never imports ``studies``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "geomsae"

LAYERS = {
    "atomic": 0,
    "models": 0,
    "text": 0,
    "activations": 1,
    "sae": 2,
    "baselines": 2,
    "neighbors": 3,
    "tangent": 3,
    "dimension": 3,
    "graph": 3,
    "manifolds": 3,
    "grassmann": 3,
    "tslasso": 4,
    "superposition": 4,
}
# Geometry works on plain arrays: it must not reach down into models, text or activations.
GEOMETRY = {"neighbors", "tangent", "dimension", "graph", "manifolds", "grassmann"}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "geomsae" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if node.module == "geomsae"]
    return out


FILES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_layers(path: Path) -> None:
    rel = path.relative_to(ROOT)
    own = rel.parts[0].removesuffix(".py")
    if own not in LAYERS:  # package __init__ and anything not yet placed
        own_layer = None
    else:
        own_layer = LAYERS[own]
    for mod in _imports(path):
        assert not mod.startswith("studies"), f"{rel} imports {mod}: library never imports studies"
        target = _top(mod)
        if target is None or own_layer is None or target == own:
            continue
        assert target in LAYERS, f"{rel} imports geomsae.{target}, which has no layer in this test"
        assert LAYERS[target] <= own_layer, (
            f"{rel} (layer {own_layer}) imports geomsae.{target} (layer {LAYERS[target]})"
        )
        if own in GEOMETRY:
            assert target not in {"models", "text", "activations"}, (
                f"{rel}: geometry imports geomsae.{target}"
            )


def test_every_module_has_a_layer() -> None:
    tops = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in FILES}
    tops -= {"__init__", "__pycache__"}
    missing = sorted(tops - set(LAYERS))
    assert not missing, f"add these geomsae modules to LAYERS in tests/test_layering.py: {missing}"
