"""Shared fixtures: a tiny randomly initialised Llama (same bridge as the real model) and text."""

from __future__ import annotations

import pytest

TINY_TEXTS = [
    f"Document {i}. The quick brown fox jumps over the lazy dog, "
    + f"and numbers like 3.14 and 2.72 appear in sentence number {i}. " * (1 + i % 5)
    for i in range(40)
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_activation_cache(tmp_path_factory):
    """Harvests given no folder go to a temporary cache, never to ~/.cache/geomsae."""
    patch = pytest.MonkeyPatch()
    patch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path_factory.mktemp("geomsae_cache")))
    yield
    patch.undo()


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: the machine is shared, and small problems run faster."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_model():
    """A 4-layer, d_model=32 random Llama in a TransformerBridge, byte-level tokenizer, BOS = 1.

    Shared by the whole session: treat it as read-only.
    """
    from geomsae.models import tiny_model as build

    return build(n_layers=4, d_model=32, n_ctx=64, seed=0)


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    """40 short English-like documents of 100-400 characters."""
    return list(TINY_TEXTS)
