"""Harvesting and the activation cache, on the tiny random Llama (no real model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geomsae.activations import (
    ArrayStore,
    CacheError,
    as_activation_store,
    harvest,
    hook_names,
    open_cache,
    stop_layer,
)
from geomsae.activations.hooks import run_hooks
from geomsae.activations.windows import document_order, iter_token_batches, iter_windows
from geomsae.text import CorpusError

HOOK = "blocks.1.hook_resid_post"
KW = dict(
    layers=(1,), context_length=24, batch_tokens=96, shard_rows=150, group_windows=4, progress=False
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a loaded 2-core machine run far faster on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cache(tiny_model, tiny_texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    return harvest(700, out, model=tiny_model, corpus=tiny_texts, **KW)


def _direct(model, tokens, hook=HOOK):
    """Full forward of one window through run_with_cache (no stopping, no batching)."""
    with torch.inference_mode():
        _, c = model.run_with_cache(torch.as_tensor(tokens)[None])
    return c[hook][0]


# -- windows and batches ------------------------------------------------------------------------


def test_windows_cover_each_document_in_order(tiny_model, tiny_texts):
    tok = tiny_model.tokenizer
    order = np.arange(len(tiny_texts))
    windows = list(iter_windows(tiny_texts, order, tok, 16, bos_id=1, chunk=7))
    assert [w.index for w in windows] == list(range(len(windows)))
    for doc in range(len(tiny_texts)):
        ws = [w for w in windows if w.doc_index == doc]
        assert all(w.tokens[0] == 1 and 2 <= len(w.tokens) <= 16 for w in ws)
        joined = np.concatenate([w.tokens[1:] for w in ws])
        assert joined.tolist() == tok(tiny_texts[doc], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("group_windows", [None, 7])
def test_batches_respect_the_token_budget_and_cover_each_window_once(
    tiny_model, tiny_texts, group_windows
):
    windows = list(iter_windows(tiny_texts, np.arange(40), tiny_model.tokenizer, 16, 1))
    batches = list(iter_token_batches(iter(windows), 50, 0, group_windows))
    assert all(b.tokens.numel() <= 50 for b in batches)
    order = np.concatenate([b.windows for b in batches])
    assert sorted(order.tolist()) == list(range(len(windows)))
    if group_windows is None:
        assert order.tolist() == list(range(len(windows))) and all(b.group_end for b in batches)
    seen: set[int] = set()
    for b in batches:
        for row, w in enumerate(b.windows):
            n = len(windows[w].tokens)
            assert int(b.lengths[row]) == n
            assert b.tokens[row, :n].tolist() == windows[w].tokens.tolist()
            assert not b.valid[row, n:].any() and b.valid[row, :n].all()
        seen |= set(b.windows.tolist())
        if b.group_end:  # every window below next_window has been batched, none beyond
            assert seen == set(range(b.next_window))


def test_grouping_by_length_wastes_less_padding(tiny_model):
    lengths = np.random.default_rng(0).integers(1, 40, size=60)
    texts = ["ab" * (k // 2) + "a" * (k % 2) for k in lengths]  # many short document ends
    windows = list(iter_windows(texts, np.arange(60), tiny_model.tokenizer, 16, 1))

    def padding(group_windows):
        bs = list(iter_token_batches(iter(windows), 64, 0, group_windows))
        return 1 - sum(int(b.valid.sum()) for b in bs) / sum(b.tokens.numel() for b in bs)

    assert padding(32) < 0.5 * padding(None)


def test_document_order_splits_disjointly_across_ranks():
    assert document_order(5, None).tolist() == [0, 1, 2, 3, 4]
    parts = [document_order(11, seed=3, rank=r, world_size=3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert document_order(11, 3).tolist() != list(range(11))


# -- hooks and early stopping ----------------------------------------------------------------


def test_hook_names_and_stop_layer(tiny_model):
    assert hook_names("blocks.{layer}.hook_resid_post", [0, 2]) == [
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    assert stop_layer(tiny_model, ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]) == 3
    assert stop_layer(tiny_model, ["blocks.3.hook_resid_post"]) is None  # last block
    assert stop_layer(tiny_model, ["ln_final.hook_normalized"]) is None


def test_stopped_forward_skips_later_blocks_and_matches_full(tiny_model):
    # count the attention computations of each block (a stopped block is entered, then raises)
    calls = {i: 0 for i in range(4)}
    handles = [
        tiny_model.blocks[i].attn.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: calls.__setitem__(i, calls[i] + 1), with_kwargs=True
        )
        for i in range(4)
    ]
    try:
        tokens = tiny_model.to_tokens(["a short text", "another one here"])
        early = run_hooks(tiny_model, tokens, [HOOK], stop=2)[HOOK]
        assert calls == {0: 1, 1: 1, 2: 0, 3: 0}
        full = run_hooks(tiny_model, tokens, [HOOK], stop=None)[HOOK]
        assert calls == {0: 2, 1: 2, 2: 1, 3: 1}
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(early, full)


# -- harvest: alignment, BOS, round trip ------------------------------------------------------


def test_rows_match_a_direct_forward_and_metadata_aligns(cache, tiny_model, tiny_texts):
    meta = cache.metadata
    assert len(cache) == len(meta) == 700 and cache.d_in == 32
    x = cache.to_tensor()
    tok = tiny_model.tokenizer
    for w in np.unique(meta.window)[[0, 3, -1]]:
        rows = np.flatnonzero(meta.window == w)
        doc = int(meta.doc_index[rows[0]])
        ids = tok(tiny_texts[doc], add_special_tokens=False)["input_ids"]
        # windows of a document are numbered consecutively and hold 23 text tokens after BOS
        offset = (w - meta.window[meta.doc_index == doc].min()) * 23
        window = [1] + ids[offset : offset + 23]
        assert meta.token_id[rows].tolist() == window[1 : 1 + len(rows)]
        assert meta.position[rows].tolist() == list(range(1, 1 + len(rows)))
        ref = _direct(tiny_model, window)
        torch.testing.assert_close(x[rows], ref[meta.position[rows]], atol=1e-5, rtol=1e-5)


def test_bos_is_excluded_by_default_and_kept_on_request(cache, tiny_model, tiny_texts, tmp_path):
    assert not (cache.metadata.token_id == 1).any() and cache.metadata.position.min() == 1
    kept = harvest(
        300, tmp_path, model=tiny_model, corpus=tiny_texts, exclude_special=False, **KW
    ).metadata
    bos = kept.position == 0
    assert bos.any() and (kept.token_id[bos] == 1).all()
    n_windows = len(np.unique(kept.window))
    assert bos.sum() in (n_windows, n_windows - 1)  # the last window may be cut before BOS


def test_context_follows_the_text_only():
    from geomsae.activations import TokenMetadata

    meta = TokenMetadata(
        doc_index=np.array([0, 0, 0, 1, 1, 0, 0]),
        window=np.array([0, 0, 1, 2, 2, 0, 3]),
        position=np.array([1, 2, 1, 1, 2, 3, 2]),
        token_id=np.arange(7),
        vocab=list("abcdefg"),
    )
    assert meta.context(1, before=5, after=5) == "a«b»c"  # stops where document 1 starts
    assert meta.context(4, before=5, after=5) == "d«e»"
    assert meta.context(5, before=5, after=5, mark="") == "f"  # window 0 -> 3 is not the text


def test_metadata_context_and_strings(cache):
    meta = cache.metadata
    i = 50
    ctx = meta.context(i, before=5, after=3)
    assert f"«{meta.token_str(i)}»" in ctx
    assert meta.doc_id(i).startswith("text:")
    frame = meta.to_frame()
    assert len(frame) == len(meta) and frame.token[i] == meta.token_str(i)


def test_cache_round_trip_and_manifest(cache):
    reopened = open_cache(cache.path)
    torch.testing.assert_close(reopened.to_tensor(), cache.to_tensor())
    m = json.loads((cache.path / "manifest.json").read_text())
    assert m["hooks"] == [HOOK] and m["d_in"] == 32 and m["n_tokens"] == 700
    assert m["shapes"] == {HOOK: [700, 32]}
    assert m["key"]["context_length"] == 24 and m["dtype"] == "float32"
    assert len(m["shards"]) >= 4 and m["shards"][-1]["truncated"]
    assert sum(e - s for s, e in reopened.chunk_bounds()) == 700
    from safetensors.torch import load_file

    first = load_file(cache.path / m["shards"][0]["file"])
    torch.testing.assert_close(first[HOOK], reopened.to_tensor(len(first[HOOK])))


def test_iter_batches_is_a_seeded_permutation(cache):
    x = cache.to_tensor()
    batches = list(cache.iter_batches(64, shuffle=True, seed=1, buffer_rows=128))
    assert [len(b) for b in batches] == [64] * 10 + [60]
    y = torch.cat(batches)
    assert not torch.equal(y, x)
    order = torch.argsort(y[:, 0])
    torch.testing.assert_close(y[order], x[torch.argsort(x[:, 0])])
    again = torch.cat(list(cache.iter_batches(64, shuffle=True, seed=1, buffer_rows=128)))
    torch.testing.assert_close(again, y)
    assert len(list(cache.iter_batches(64, shuffle=False, drop_last=True))) == 10
    torch.testing.assert_close(cache[[5, 2]], x[[5, 2]])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_several_hooks_in_half_precision(cache, tiny_model, tiny_texts, tmp_path, dtype):
    hooks = ("blocks.{layer}.hook_resid_post", "blocks.{layer}.hook_mlp_out")
    store = harvest(700, tmp_path, model=tiny_model, corpus=tiny_texts,
                    **{**KW, "layers": (0, 1), "hook": hooks, "dtype": dtype})  # fmt: skip
    assert store.hooks == (
        "blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
        "blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out",
    )  # fmt: skip
    half = store.to_tensor(hook=HOOK)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, cache.to_tensor(), atol=0.05, rtol=0.02)
    assert store.manifest["dtype"] == dtype
    assert not torch.equal(store.to_tensor(hook="blocks.0.hook_mlp_out"), half)


def test_array_store_has_the_same_api():
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    store = as_activation_store(data)
    assert isinstance(store, ArrayStore) and len(store) == 10 and store.d_in == 4
    assert store.metadata is None
    torch.testing.assert_close(store.to_tensor(3), torch.from_numpy(data[:3]))
    rows = torch.cat(list(store.iter_batches(4, seed=0)))
    assert sorted(rows[:, 0].tolist()) == data[:, 0].tolist()
    with pytest.raises(ValueError, match="2-D"):
        as_activation_store(np.zeros(5))


# -- reuse, extension, resume, corruption ----------------------------------------------------


def test_reuse_and_extension_equal_a_fresh_harvest(tiny_model, tiny_texts, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    harvest(200, a, model=tiny_model, corpus=tiny_texts, **KW)
    shard = (a / "shard-r0-00000.safetensors").stat().st_mtime_ns
    again = harvest(150, a, model=tiny_model, corpus=tiny_texts, **KW)  # reused, a prefix
    assert len(again) == 150 and (a / "shard-r0-00000.safetensors").stat().st_mtime_ns == shard
    extended = harvest(500, a, model=tiny_model, corpus=tiny_texts, **KW)
    fresh = harvest(500, b, model=tiny_model, corpus=tiny_texts, **KW)
    torch.testing.assert_close(extended.to_tensor(), fresh.to_tensor())
    assert (extended.metadata.token_id == fresh.metadata.token_id).all()


def test_interrupted_harvest_resumes_from_the_last_shard(
    tiny_model, tiny_texts, tmp_path, monkeypatch
):
    import geomsae.activations.harvester as harvest_mod

    calls = {"n": 0}
    real = harvest_mod.run_hooks

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # call 1 probes d_in, calls 2-5 fill two shards
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(harvest_mod, "run_hooks", crashing)
    with pytest.raises(KeyboardInterrupt):
        harvest(600, tmp_path / "c", model=tiny_model, corpus=tiny_texts, **KW)
    progress = json.loads((tmp_path / "c" / "progress-rank0.json").read_text())
    assert not (tmp_path / "c" / "manifest.json").exists() and len(progress["shards"]) >= 2
    with pytest.raises(CacheError, match="interrupted"):
        open_cache(tmp_path / "c")
    calls["n"] = 100
    resumed = harvest(600, tmp_path / "c", model=tiny_model, corpus=tiny_texts, **KW)
    n_resumed, calls["n"] = calls["n"] - 100, 100
    fresh = harvest(600, tmp_path / "d", model=tiny_model, corpus=tiny_texts, **KW)
    assert n_resumed <= calls["n"] - 100 - 4  # the two finished shards were not redone
    torch.testing.assert_close(resumed.to_tensor(), fresh.to_tensor())


def test_corrupt_cache_is_reported_never_reused(tiny_model, tiny_texts, tmp_path):
    out = tmp_path / "e"
    store = harvest(300, out, model=tiny_model, corpus=tiny_texts, **KW)
    shard = out / store.manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="corrupt"):
        open_cache(out)
    with pytest.raises(CacheError, match="corrupt"):
        harvest(300, out, model=tiny_model, corpus=tiny_texts, **KW)
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(CacheError, match="truncated"):
        open_cache(out, verify=False)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt"):
        open_cache(out)
    fixed = harvest(300, out, model=tiny_model, corpus=tiny_texts, overwrite=True, **KW)
    assert len(open_cache(fixed.path)) == 300


def test_mismatched_cache_is_reported(cache, tiny_model, tiny_texts):
    with pytest.raises(CacheError, match="context_length"):
        harvest(
            700, cache.path, model=tiny_model, corpus=tiny_texts, **{**KW, "context_length": 32}
        )
    with pytest.raises(CacheError, match="corpus"):
        harvest(700, cache.path, model=tiny_model, corpus=tiny_texts[:-1], **KW)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": (9,)}, ValueError, "outside the model"),
        ({"hook": "blocks.{layer}.hook_resid_pots"}, ValueError, "unknown hook"),
        ({"corpus": ["  ", ""]}, CorpusError, "no documents"),
        ({"n_tokens": 0}, ValueError, "positive"),
        ({"n_tokens": -5}, ValueError, "positive"),
    ],
)
def test_bad_input_gets_one_clear_error(tiny_model, tiny_texts, tmp_path, kwargs, error, match):
    args = {"n_tokens": 100, "model": tiny_model, "corpus": tiny_texts, **KW, **kwargs}
    with pytest.raises(error, match=match):
        harvest(out=tmp_path / "bad", **args)


def test_explicit_hook_names_ignore_the_layer_list(tiny_model, tiny_texts, tmp_path):
    hooks = ("hook_embed", "blocks.0.hook_resid_pre")
    kw = {**KW, "layers": (6,), "hook": hooks}  # layer 6 does not exist, but is not used
    store = harvest(60, tmp_path, model=tiny_model, corpus=tiny_texts, **kw)
    assert store.hooks == hooks
    # a Llama has no positional embedding: the residual stream starts as the token embedding
    torch.testing.assert_close(store.to_tensor(hook=hooks[0]), store.to_tensor(hook=hooks[1]))


def test_non_token_hook_and_long_context_are_refused(tiny_model, tiny_texts, tmp_path):
    with pytest.raises(ValueError, match="not one vector per token"):
        harvest(50, tmp_path / "p", model=tiny_model, corpus=tiny_texts,
                **{**KW, "hook": "blocks.{layer}.attn.hook_pattern"})  # fmt: skip
    with pytest.raises(ValueError, match="exceeds the model's context"):
        harvest(50, tmp_path / "q", model=tiny_model, corpus=tiny_texts,
                **{**KW, "context_length": 65, "batch_tokens": 200})  # fmt: skip


def test_unwritable_output_folder(tiny_model, tiny_texts, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write to the output folder"):
        harvest(100, blocker / "sub", model=tiny_model, corpus=tiny_texts, **KW)


# -- distributed ------------------------------------------------------------------------------


def _rank_main(rank: int, world_size: int, folder: str, port: int) -> None:
    import torch.distributed as dist

    from geomsae.models import tiny_model

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        model = tiny_model(n_layers=4, d_model=32, n_ctx=64, seed=0)
        from tests.conftest import TINY_TEXTS

        store = harvest(501, folder, model=model, corpus=TINY_TEXTS, **KW)
        assert len(store) == 501
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_share_one_cache(tiny_model, tiny_texts, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, str(tmp_path), port), nprocs=2, join=True)
    store = open_cache(tmp_path)
    m = store.manifest
    assert m["world_size"] == 2 and len(store) == 501
    ranks = np.repeat([s["rank"] for s in m["shards"]], [s["rows"] for s in m["shards"]])
    assert (ranks == 0).sum() == 251 and (ranks == 1).sum() == 250
    docs = store.metadata.doc_index
    assert not set(docs[ranks == 0]) & set(docs[ranks == 1])  # disjoint slices of the corpus
    # every rank's rows are the model's activations: check one window of each rank
    tok = tiny_model.tokenizer
    x = store.to_tensor()
    for r in (0, 1):
        rows = np.flatnonzero((ranks == r) & (store.metadata.window == 0))
        doc = int(docs[rows[0]])
        window = [1] + tok(tiny_texts[doc], add_special_tokens=False)["input_ids"][:23]
        ref = _direct(tiny_model, window)[store.metadata.position[rows]]
        torch.testing.assert_close(x[rows], ref, atol=1e-5, rtol=1e-5)
    # one process may reuse the two-rank cache, but not extend it (the slices would differ)
    assert len(harvest(400, tmp_path, model=tiny_model, corpus=tiny_texts, **KW)) == 400
    with pytest.raises(CacheError, match="harvested with 2 processes"):
        harvest(800, tmp_path, model=tiny_model, corpus=tiny_texts, **KW)


# -- default folder and the study ----------------------------------------------------------------


def test_default_folder_is_keyed_and_reused(tiny_model, tiny_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path))
    a = harvest(120, model=tiny_model, corpus=tiny_texts, **KW)
    assert a.path.parent == tmp_path / "activations"
    b = harvest(100, model=tiny_model, corpus=tiny_texts, **KW)
    c = harvest(100, model=tiny_model, corpus=tiny_texts, **{**KW, "layers": (2,)})
    assert b.path == a.path and len(b) == 100 and c.path != a.path


def test_harvest_study_smoke(tmp_path):
    from studies.harvest import SMOKE, run

    report = run(SMOKE.__class__(**{**SMOKE.__dict__, "out": tmp_path}))
    assert report["cache"]["n_tokens"] == 600 and report["hooks"][0]["rows"] == 600
    for name in ("manifest.json", "report.json", "report.md", "norms.png"):
        assert (tmp_path / name).exists()
    assert open_cache(tmp_path).d_in == 64


def test_memory_stays_bounded_while_harvesting_and_reading(
    tiny_model, tiny_texts, tmp_path, monkeypatch
):
    from geomsae.activations.writer import RankWriter

    peak = {"writer": 0, "read": 0}
    real_add = RankWriter.add

    def add(self, acts, meta):
        real_add(self, acts, meta)
        peak["writer"] = max(peak["writer"], self._buffered)

    monkeypatch.setattr(RankWriter, "add", add)
    store = harvest(1500, tmp_path, model=tiny_model, corpus=tiny_texts, **KW)
    group = KW["group_windows"] * KW["context_length"]
    assert peak["writer"] < KW["shard_rows"] + group  # one shard + one group of windows
    assert len(store.manifest["shards"]) >= 1500 // (KW["shard_rows"] + group)
    real_read = store._read

    def read(hook, index):
        peak["read"] = max(peak["read"], len(index))
        return real_read(hook, index)

    store._read = read
    n = sum(len(b) for b in store.iter_batches(50, shuffle=True, buffer_rows=200))
    assert n == 1500 and peak["read"] == 200
