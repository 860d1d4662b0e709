"""Write one rank's shards and progress file; merge every rank's progress into the manifest.

Crash safety: a shard is written atomically first, then the progress file that lists it (also
atomically). A crash between the two leaves an unlisted shard that the resumed harvest simply
overwrites; a crash anywhere else leaves a consistent progress file to resume from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from geomsae.activations.manifest import (
    FORMAT,
    MANIFEST,
    VERSION,
    content_hash,
    progress_path,
    read_json,
    shard_name,
)
from geomsae.activations.metadata import COLUMNS
from geomsae.activations.shards import STORAGE_DTYPES, CacheError, write_shard
from geomsae.atomic import write_json_atomic

logger = logging.getLogger(__name__)


class RankWriter:
    """Buffers one rank's rows and writes them as shards of about ``shard_rows`` rows.

    ``state`` is the progress file's content: the cache ``key``, ``hooks``, ``d_in``, the shards
    written so far (each with ``rows``, ``window_start``, ``window_end``, ``truncated``,
    ``sha256``).
    """

    def __init__(self, folder: Path, state: dict, shard_rows: int) -> None:
        self.folder = folder
        self.state = state
        self.shard_rows = shard_rows
        self.dtype = STORAGE_DTYPES[state["dtype"]]
        self._acts: dict[str, list[torch.Tensor]] = {h: [] for h in state["hooks"]}
        self._meta: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
        self._buffered = 0
        self._window_start = self.next_window

    @property
    def rows_done(self) -> int:
        """Rows written to shards plus rows buffered."""
        return sum(s["rows"] for s in self.state["shards"]) + self._buffered

    @property
    def next_window(self) -> int:
        """First window not yet written (where a resumed harvest starts)."""
        shards = self.state["shards"]
        return shards[-1]["window_end"] if shards else 0

    def add(self, acts: dict[str, torch.Tensor], meta: dict[str, np.ndarray]) -> None:
        """Buffer rows: ``acts[hook]`` of shape (n, d_in) and metadata columns of shape (n,)."""
        for h in self._acts:
            self._acts[h].append(acts[h].to(device="cpu", dtype=self.dtype))
        for c in COLUMNS:
            self._meta[c].append(np.asarray(meta[c], dtype=np.int64))
        self._buffered += len(meta["token_id"])

    @property
    def full(self) -> bool:
        """Whether the buffer holds a shard's worth of rows."""
        return self._buffered >= self.shard_rows

    def flush(self, window_end: int, truncated: bool = False) -> None:
        """Write the buffered rows as the next shard and record it in the progress file."""
        if self._buffered == 0:
            return
        index = len(self.state["shards"])
        name = shard_name(self.state["rank"], index)
        tensors = {h: torch.cat(v) for h, v in self._acts.items()}
        tensors |= {c: torch.from_numpy(np.concatenate(v)) for c, v in self._meta.items()}
        sha = write_shard(self.folder / name, tensors)
        self.state["shards"].append(
            {
                "file": name,
                "rank": self.state["rank"],
                "rows": self._buffered,
                "window_start": self._window_start,
                "window_end": int(window_end),
                "truncated": bool(truncated),
                "sha256": sha,
            }
        )
        write_json_atomic(progress_path(self.folder, self.state["rank"]), self.state)
        logger.debug("wrote %s (%d rows)", name, self._buffered)
        self._acts = {h: [] for h in self._acts}
        self._meta = {c: [] for c in COLUMNS}
        self._buffered = 0
        self._window_start = int(window_end)

    def finish(self, exhausted: bool) -> None:
        """Mark this rank done (``exhausted``: the corpus ran out before the quota)."""
        self.state["done"] = True
        self.state["exhausted"] = bool(exhausted)
        write_json_atomic(progress_path(self.folder, self.state["rank"]), self.state)


def merge_progress(folder: Path, world_size: int, extra: dict) -> dict:
    """Merge the ``world_size`` progress files into ``manifest.json`` and delete them.

    Shards are listed rank by rank. ``extra`` adds descriptive fields (model, corpus, ...).
    """
    states = [read_json(progress_path(folder, r), "progress file") for r in range(world_size)]
    for r, s in enumerate(states):
        if not s.get("done"):
            raise CacheError(f"rank {r} of the harvest in {folder} did not finish")
    first = states[0]
    shards = [sh for s in states for sh in s["shards"]]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "key": first["key"],
        "key_hash": first["key_hash"],
        "hooks": first["hooks"],
        "d_in": first["d_in"],
        "dtype": first["dtype"],
        "world_size": world_size,
        "n_tokens": sum(sh["rows"] for sh in shards),
        "shapes": {h: [sum(sh["rows"] for sh in shards), first["d_in"]] for h in first["hooks"]},
        "n_tokens_requested": first["n_tokens_requested"],
        "exhausted": any(s.get("exhausted") for s in states),
        "shards": shards,
        "content_hash": content_hash(shards),
        **extra,
    }
    write_json_atomic(folder / MANIFEST, manifest)
    for r in range(world_size):
        progress_path(folder, r).unlink(missing_ok=True)
    return manifest


def progress_from_manifest(manifest: dict, rank: int, n_tokens_requested: int) -> dict:
    """A progress state for ``rank`` that extends a complete cache (truncated shards dropped)."""
    shards = [s for s in manifest["shards"] if s["rank"] == rank]
    while shards and shards[-1]["truncated"]:
        shards.pop()
    return {
        "key": manifest["key"],
        "key_hash": manifest["key_hash"],
        "hooks": manifest["hooks"],
        "d_in": manifest["d_in"],
        "dtype": manifest["dtype"],
        "rank": rank,
        "world_size": manifest.get("world_size", 1),
        "n_tokens_requested": n_tokens_requested,
        "shards": shards,
        "done": False,
    }
