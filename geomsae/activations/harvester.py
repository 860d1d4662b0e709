"""Harvest activations of any hook(s) of a model over a corpus into an on-disk cache.

One forward pass serves every requested hook, and it stops after the deepest requested layer
(``stop_at_layer``), so harvesting layer 6 of a 30-layer model runs 7 blocks, not 30. Rows are
written in shards of bounded size, never held all at once. Under ``torchrun`` each rank takes a
disjoint slice of the documents and writes its own shards into the same folder and manifest.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from geomsae.activations.hooks import (
    DEFAULT_HOOK,
    hook_names,
    model_key,
    run_hooks,
    stop_layer,
    validate_hooks,
)
from geomsae.activations.manifest import (
    DOCUMENTS,
    FORMAT,
    VERSION,
    VOCAB,
    key_hash,
)
from geomsae.activations.resume import (
    barrier,
    check_writable,
    clear_folder,
    dist_info,
    existing_state,
    rank_quota,
)
from geomsae.activations.shards import STORAGE_DTYPES, CacheError
from geomsae.activations.store import ActivationStore, open_cache
from geomsae.activations.windows import document_order, iter_token_batches, iter_windows
from geomsae.activations.writer import RankWriter, merge_progress
from geomsae.atomic import write_json_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest (everything except the model, the corpus and the folder)."""

    n_tokens: int
    """Number of activation rows (tokens) to collect, summed over ranks."""
    layers: tuple[int, ...] = (6,)
    """Layers substituted into ``{layer}`` of ``hook``."""
    hook: str | tuple[str, ...] = DEFAULT_HOOK
    """Hook name(s) in TransformerLens spelling; ``{layer}`` is replaced by each layer."""
    context_length: int = 128
    """Tokens per context window, BOS included."""
    batch_tokens: int = 4096
    """Upper bound on tokens (padding included) per forward pass."""
    exclude_special: bool = True
    """Drop BOS and other special tokens (their activations are outliers)."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    shard_rows: int = 32768
    """Rows per shard (memory used while harvesting is about shard_rows x d_in x hooks)."""
    group_windows: int | None = 512
    """Windows sorted by length within groups of this many before batching (less padding);
    None packs them in corpus order. Shards are cut at group ends."""
    seed: int | None = 0
    """Seed of the document order (None keeps the corpus order)."""

    def __post_init__(self) -> None:
        if isinstance(self.n_tokens, bool) or not isinstance(self.n_tokens, (int, np.integer)):
            raise ValueError(f"n_tokens must be an integer, got {self.n_tokens!r}")
        if self.n_tokens <= 0:
            raise ValueError(f"n_tokens must be positive, got {self.n_tokens}")
        layers = (self.layers,) if isinstance(self.layers, int) else tuple(self.layers)
        if not layers:
            raise ValueError("give at least one layer")
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))
        if isinstance(self.hook, list):
            object.__setattr__(self, "hook", tuple(self.hook))
        if self.context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {self.context_length}")
        if self.batch_tokens < self.context_length:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be at least context_length "
                f"({self.context_length})"
            )
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}")
        if self.shard_rows <= 0:
            raise ValueError(f"shard_rows must be positive, got {self.shard_rows}")
        if self.group_windows is not None and self.group_windows <= 0:
            raise ValueError(f"group_windows must be positive or None, got {self.group_windows}")

    @property
    def hooks(self) -> list[str]:
        """The concrete hook names."""
        return hook_names(self.hook, self.layers)


def default_cache_dir() -> Path:
    """``$GEOMSAE_CACHE_DIR`` or ``~/.cache/geomsae``: where caches go when no folder is given."""
    root = os.environ.get("GEOMSAE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geomsae"


def harvest(
    n_tokens: int,
    out: str | Path | None = None,
    *,
    model=None,
    corpus=None,
    layers: int | tuple[int, ...] = (6,),
    hook: str | tuple[str, ...] = DEFAULT_HOOK,
    context_length: int = 128,
    batch_tokens: int = 4096,
    exclude_special: bool = True,
    dtype: str = "float32",
    shard_rows: int = 32768,
    group_windows: int | None = 512,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> ActivationStore:
    """Ensure a cache of ``n_tokens`` activation rows exists in ``out`` and open it.

    A complete cache with the same key (model, hooks, corpus fingerprint, context length,
    special-token policy, dtype, seed, window grouping) and at least ``n_tokens`` rows is
    reused as is; a smaller one is extended; an interrupted harvest resumes from its last
    complete shard.

    Parameters
    ----------
    n_tokens : int
        Rows to collect (tokens; BOS/special tokens and padding are not counted).
    out : str or Path, optional
        Cache folder. Default: ``default_cache_dir()/activations/<key hash>``.
    model : str or TransformerBridge, optional
        Model name for :func:`geomsae.models.load_model` (default: the embedded SmolLM2) or a
        loaded bridge.
    corpus : optional
        Anything :func:`geomsae.text.load_corpus` takes (default: the embedded corpus).
    layers, hook, context_length, batch_tokens, exclude_special, dtype, shard_rows,
    group_windows, seed
        See :class:`HarvestConfig`.
    device : str or torch.device, optional
        Where to run the model when it is loaded by name.
    overwrite : bool
        Delete a mismatched, corrupt or incomplete cache in ``out`` instead of raising.
    verify : bool
        Check shard checksums when reusing or resuming.
    progress : bool
        Show a tqdm progress bar (rank 0 only).

    Returns
    -------
    ActivationStore
        The cache, limited to ``n_tokens`` rows (fewer if the corpus ran out).

    Raises
    ------
    ValueError
        Bad arguments: ``n_tokens <= 0``, layer outside the model, unknown hook, empty corpus,
        unwritable folder.
    CacheError
        ``out`` holds a cache that is corrupt or does not match the request.
    """
    from geomsae.models import DEFAULT_MODEL, load_model
    from geomsae.text import load_corpus

    cfg = HarvestConfig(
        n_tokens=n_tokens, layers=layers, hook=hook, context_length=context_length,
        batch_tokens=batch_tokens, exclude_special=exclude_special, dtype=dtype,
        shard_rows=shard_rows, group_windows=group_windows, seed=seed,
    )  # fmt: skip
    rank, world_size = dist_info()
    docs = load_corpus(corpus)
    hooks = cfg.hooks
    key = {
        "model": model_key(model if model is not None else DEFAULT_MODEL),
        "hooks": hooks,
        "corpus": docs.fingerprint,
        "context_length": cfg.context_length,
        "exclude_special": cfg.exclude_special,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "group_windows": cfg.group_windows,
    }
    kh = key_hash(key)
    folder = Path(out) if out is not None else default_cache_dir() / "activations" / kh[:16]
    if overwrite and rank == 0 and folder.exists():
        clear_folder(folder)
    barrier(world_size)
    check_writable(folder)
    state = existing_state(folder, key, cfg.n_tokens, rank, world_size, verify)
    if isinstance(state, ActivationStore):
        logger.info("reusing the activation cache %s (%d rows)", folder, len(state))
        return state

    bridge = (
        model
        if model is not None and not isinstance(model, str)
        else load_model(model, device=device)
    )
    templates = [cfg.hook] if isinstance(cfg.hook, str) else list(cfg.hook)
    validate_hooks(bridge, hooks, cfg.layers if any("{layer}" in t for t in templates) else ())
    n_ctx = getattr(bridge.cfg, "n_ctx", None)
    if n_ctx is not None and cfg.context_length > n_ctx:
        raise ValueError(
            f"context_length {cfg.context_length} exceeds the model's context of {n_ctx} tokens"
        )
    if state is None:
        state = _new_state(key, kh, hooks, bridge, cfg, rank, world_size)
    elif state["d_in"] != _d_in(bridge, hooks[0]):
        raise CacheError(f"progress in {folder} has d_in {state['d_in']}, the model differs")
    if rank == 0:
        _write_side_files(folder, bridge.tokenizer, docs)
    writer = RankWriter(folder, state, cfg.shard_rows)
    exhausted = _harvest_rank(bridge, docs, cfg, hooks, writer, rank, world_size, progress)
    writer.finish(exhausted)
    barrier(world_size)
    if rank == 0:
        extra = {"model": key["model"], "corpus": docs.summary(), "config": asdict(cfg)}
        extra["config"]["world_size"] = world_size
        merge_progress(folder, world_size, extra)
    barrier(world_size)
    store = open_cache(folder, verify=False)
    return open_cache(folder, verify=False, n_tokens=min(cfg.n_tokens, len(store)))


def _d_in(bridge, hook: str) -> int:
    """Width of ``hook``'s activations, from a two-token forward pass."""
    tokens = bridge.to_tokens("a")[:, :2]
    act = run_hooks(bridge, tokens, [hook], stop_layer(bridge, [hook]))[hook]
    return int(act.shape[-1])


def _new_state(key, kh, hooks, bridge, cfg, rank, world_size) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "key": key, "key_hash": kh, "hooks": hooks,
        "d_in": _d_in(bridge, hooks[0]), "dtype": cfg.dtype, "rank": rank,
        "world_size": world_size, "n_tokens_requested": cfg.n_tokens, "shards": [], "done": False,
    }  # fmt: skip


def _write_side_files(folder: Path, tokenizer, docs) -> None:
    if not (folder / VOCAB).exists():
        vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        write_json_atomic(folder / VOCAB, vocab)  # type: ignore[arg-type]
    if not (folder / DOCUMENTS).exists():
        write_json_atomic(folder / DOCUMENTS, [d.doc_id for d in docs])  # type: ignore[arg-type]


def _special_ids(bridge) -> torch.Tensor:
    tok = bridge.tokenizer
    ids = set(tok.all_special_ids)
    if tok.bos_token_id is not None:
        ids.add(tok.bos_token_id)
    return torch.tensor(sorted(ids), dtype=torch.long)


def _harvest_rank(bridge, docs, cfg, hooks, writer: RankWriter, rank, world_size, progress):
    """Fill this rank's quota; return whether the corpus ran out first."""
    tok = bridge.tokenizer
    prepend = getattr(bridge.cfg, "default_prepend_bos", True)
    bos = tok.bos_token_id if prepend else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    specials = _special_ids(bridge)
    stop = stop_layer(bridge, hooks)
    device = next(bridge.parameters()).device
    quota = rank_quota(cfg.n_tokens, rank, world_size)
    if writer.rows_done >= quota:  # resumed after this rank had finished
        return False
    order = document_order(len(docs), cfg.seed, rank, world_size)
    texts = [d.text for d in docs]
    windows = iter_windows(texts, order, tok, cfg.context_length, bos)
    windows = itertools.dropwhile(functools.partial(_before, writer.next_window), windows)
    bar = tqdm(total=quota, initial=writer.rows_done, unit="tok", desc="harvest",
               disable=not progress or rank != 0, dynamic_ncols=True)  # fmt: skip
    end = writer.next_window
    with bar:
        for batch in iter_token_batches(windows, cfg.batch_tokens, pad, cfg.group_windows):
            if writer.rows_done >= quota:
                break
            acts = run_hooks(bridge, batch.tokens.to(device), hooks, stop)
            keep = batch.valid
            if cfg.exclude_special:
                keep &= ~torch.isin(batch.tokens, specials)
            keep_np = keep.numpy().reshape(-1)
            n_rows = int(keep_np.sum())
            take = min(n_rows, quota - writer.rows_done)
            T = batch.tokens.shape[1]
            meta = {
                "doc_index": np.repeat(batch.doc_index, T)[keep_np][:take],
                "window": np.repeat(batch.windows, T)[keep_np][:take],
                "position": np.tile(np.arange(T), len(batch.windows))[keep_np][:take],
                "token_id": batch.tokens.numpy().reshape(-1)[keep_np][:take],
            }
            flat_keep = keep.reshape(-1).to(device)
            writer.add({h: a.flatten(0, 1)[flat_keep][:take] for h, a in acts.items()}, meta)
            bar.update(take)
            if batch.group_end:
                end = batch.next_window
            if writer.rows_done >= quota:  # a shard cut inside a group is redone on extension
                writer.flush(end, truncated=take < n_rows or not batch.group_end)
            elif batch.group_end and writer.full:
                writer.flush(end)
        writer.flush(end)
    exhausted = writer.rows_done < quota
    if exhausted:
        logger.warning("rank %d: the corpus ran out after %d of %d tokens", rank,
                       writer.rows_done, quota)  # fmt: skip
    return exhausted


def _before(first: int, window) -> bool:
    return window.index < first
