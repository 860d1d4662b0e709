"""What a harvest finds on disk: a cache to reuse or extend, or progress to resume.

Also the small helpers every rank shares: distributed rank/world size, barriers, per-rank
quotas, the writability check and clearing a folder of the files a harvest writes.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import torch

from geomsae.activations.manifest import (
    DOCUMENTS,
    MANIFEST,
    VOCAB,
    check_shard,
    key_differences,
    progress_path,
    read_json,
    read_manifest,
)
from geomsae.activations.shards import CacheError
from geomsae.activations.store import ActivationStore, open_cache
from geomsae.activations.writer import progress_from_manifest
from geomsae.atomic import TEMP_PREFIX, write_json_atomic

logger = logging.getLogger(__name__)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the torch.distributed group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier(world_size: int) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size > 1:
        torch.distributed.barrier()


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file there, or raise one clear ValueError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_PREFIX}probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(
            f"cannot write to the output folder {folder} ({exc.strerror or exc}); "
            "pass a writable folder (--out)"
        ) from exc


def clear_folder(folder: Path) -> None:
    """Delete the files a harvest writes (and nothing else) from ``folder``."""
    patterns = ("shard-r*.safetensors", "progress-rank*.json", f"{TEMP_PREFIX}*")
    for path in itertools.chain.from_iterable(folder.glob(p) for p in patterns):
        path.unlink(missing_ok=True)
    for name in (MANIFEST, VOCAB, DOCUMENTS):
        (folder / name).unlink(missing_ok=True)


def rank_quota(n_tokens: int, rank: int, world_size: int) -> int:
    """Rows rank ``rank`` collects: an even split, the first ranks taking the remainder."""
    return n_tokens // world_size + (rank < n_tokens % world_size)


def existing_state(
    folder: Path, key: dict, n_tokens: int, rank: int, world_size: int, verify: bool
) -> ActivationStore | dict | None:
    """A reusable store, a progress state to resume/extend, or None for a fresh harvest."""
    hint = "pass overwrite=True (--overwrite) or another folder"
    progress = progress_path(folder, rank)
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        diffs = key_differences(manifest["key"], key)
        if diffs:
            raise CacheError(
                f"the cache in {folder} was harvested differently: {'; '.join(diffs)}; {hint}"
            )
        if manifest["n_tokens"] >= n_tokens or manifest.get("exhausted"):
            store = open_cache(folder, verify=verify)
            return open_cache(folder, verify=False, n_tokens=min(n_tokens, len(store)))
        if manifest.get("world_size", 1) != world_size:
            raise CacheError(
                f"cannot extend the cache in {folder}, harvested with "
                f"{manifest.get('world_size', 1)} processes, with {world_size}; {hint}"
            )
        open_cache(folder, verify=verify)  # never build on a corrupt cache
        state = progress_from_manifest(manifest, rank, n_tokens)
        write_json_atomic(progress, state)
        barrier(world_size)
        if rank == 0:
            (folder / MANIFEST).unlink()
        logger.info("extending the activation cache %s from %d rows", folder, manifest["n_tokens"])
        return state
    if not progress.exists():
        return None
    state = read_json(progress, "progress file")
    diffs = key_differences(state.get("key", {}), key)
    if diffs or state.get("world_size") != world_size:
        diffs += [f"world_size: {state.get('world_size')} vs {world_size}"] * (
            state.get("world_size") != world_size
        )
        raise CacheError(
            f"an interrupted harvest in {folder} does not match: {'; '.join(diffs)}; {hint}"
        )
    for entry in state["shards"]:
        check_shard(folder, entry, state["hooks"], state["d_in"], state["dtype"], verify)
    quota = rank_quota(n_tokens, rank, world_size)
    while (
        state["shards"]
        and state["shards"][-1]["truncated"]
        and (sum(s["rows"] for s in state["shards"]) < quota)
    ):
        state["shards"].pop()
    state.update(n_tokens_requested=n_tokens, done=False)
    logger.info("resuming the harvest in %s after %d shards", folder, len(state["shards"]))
    return state
