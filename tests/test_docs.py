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


@pytest.mark.slow
def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """The README's notebook example, as written, on a fresh activation cache (~2 min)."""
    blocks = python_blocks(DOCS.parent / "README.md")
    assert len(blocks) == 1
    monkeypatch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["est"].support_.shape == (4,)
    assert namespace["store"].d_in == 576
