"""The Python examples of the pages of ``docs/`` run as written (each page's blocks in
order, in one namespace, from a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    "dimension.md",
    "graph.md",
    "manifolds.md",
    pytest.param("models-text-activations.md", marks=pytest.mark.slow),  # embedded model
    "neighbors.md",
    "sae.md",
    "superposition.md",
    "tslasso.md",
    "tangent.md",
]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for code in blocks:
        exec(compile(code, f"docs/{page}", "exec"), namespace)
