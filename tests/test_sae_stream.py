"""Training straight from a model: the streamed rows equal a harvest's, memory stays bounded
(chunks are run lazily, a buffer at a time), exclusions apply, and training from the stream is
deterministic and learns."""

from __future__ import annotations

import pytest
import torch

from geomsae.activations import harvest
from geomsae.sae import SAEConfig, stream_from_model, train
from geomsae.sae.trainer import _keep_fn

HOOK = "blocks.2.hook_resid_post"
KW = dict(hook=HOOK, context_length=32, batch_tokens=256, chunk_tokens=300, buffer_chunks=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order (lexicographic by rounded values), to compare as multisets."""
    keys = torch.round(x.double() * 1e4)
    idx = sorted(range(len(x)), key=lambda i: keys[i].tolist())
    return x[idx]


def test_stream_yields_the_harvested_rows(tiny_model, tiny_texts, tmp_path):
    src = stream_from_model(1500, model=tiny_model, corpus=tiny_texts, **KW)
    store = harvest(1500, tmp_path, model=tiny_model, corpus=tiny_texts, layers=2,
                    context_length=32, batch_tokens=256, group_windows=None,
                    progress=False)  # fmt: skip
    assert src.n_rows == len(store) == 1500
    assert src.d_in == store.d_in == 32
    assert len(src.chunks) == 5  # about 300 tokens each
    streamed = torch.cat([c.load()[0] for c in src.chunks])
    # the same tokens through the same model: the same rows, in another order (up to rounding
    # from different batch shapes)
    torch.testing.assert_close(
        _sorted_rows(streamed), _sorted_rows(store.to_tensor()), atol=1e-4, rtol=1e-4
    )


def test_stream_runs_the_model_lazily_one_buffer_at_a_time(tiny_model, tiny_texts):
    src = stream_from_model(3000, model=tiny_model, corpus=tiny_texts, **KW)
    loads = []
    for i, c in enumerate(src.chunks):
        object.__setattr__(c, "load", lambda f=c.load, i=i: loads.append(i) or f())
    batches = src.batches(64, seed=0)
    next(batches)
    assert len(loads) == 2  # buffer_chunks forwards so far, not the whole corpus
    epoch = [next(batches) for _ in range(3000 // 64 - 1)]
    assert sorted(loads) == list(range(len(src.chunks)))  # a pass runs every chunk once
    assert all(len(b) == 64 for b in epoch)


def test_special_tokens_and_bos(tiny_model, tiny_texts):
    kept = stream_from_model(800, model=tiny_model, corpus=tiny_texts, **KW)
    pos = torch.cat([c.load()[1] for c in kept.chunks])
    assert int(pos.min()) == 1  # BOS (position 0) dropped as a special token
    full = stream_from_model(800, model=tiny_model, corpus=tiny_texts, exclude_special=False, **KW)
    x, pos = full.chunks[0].load()
    assert int((pos == 0).sum()) > 0
    keep = _keep_fn(SAEConfig(d_in=32, exclude_bos=True, init_samples=256), full)
    assert torch.equal(keep(x, pos), pos != 0)


def test_train_from_the_model_is_deterministic_and_learns(tiny_model, tiny_texts):
    c = SAEConfig(arch="topk", d_in=32, n_features=64, k=4, batch_size=128, lr=3e-3,
                  init_samples=512, train_tokens=128 * 30, lr_warmup_steps=3)  # fmt: skip
    runs = [
        train(
            c,
            stream_from_model(2000, model=tiny_model, corpus=tiny_texts, **KW),
            progress=False,
            log_every=10,
        )  # fmt: skip
        for _ in range(2)
    ]
    for k, v in runs[0].state_dict().items():
        assert torch.equal(v, runs[1].state_dict()[k]), k
    h = runs[0].history_
    assert h[-1]["fvu"] < 0.8 * h[0]["fvu"]


def test_stream_rejects_bad_arguments(tiny_model, tiny_texts):
    with pytest.raises(ValueError, match="unknown hook"):
        stream_from_model(100, model=tiny_model, corpus=tiny_texts, hook="blocks.2.nope")
    with pytest.raises(ValueError, match="outside the model"):
        stream_from_model(100, model=tiny_model, corpus=tiny_texts, hook="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="positive"):
        stream_from_model(0, model=tiny_model, corpus=tiny_texts)
