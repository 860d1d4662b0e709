"""Read activations: a memory-mapped on-disk cache or an in-memory array, behind one API.

Consumers (the SAE trainer, geometry studies) take any :class:`ActivationSource`:

>>> store = as_activation_store(np.zeros((10, 4), dtype=np.float32))
>>> len(store), store.d_in
(10, 4)
>>> [b.shape for b in store.iter_batches(4, shuffle=False)]
[torch.Size([4, 4]), torch.Size([4, 4]), torch.Size([2, 4])]

:func:`open_cache` opens a folder written by :func:`geomsae.activations.harvest`; rows are
memory-mapped and only the rows asked for are read, so a store of any size costs no memory.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from geomsae.activations.manifest import DOCUMENTS, VOCAB, check_shard, read_manifest
from geomsae.activations.metadata import COLUMNS, TokenMetadata
from geomsae.activations.shards import CacheError, memmap_tensor, to_torch


class ActivationSource(abc.ABC):
    """Rows of activations for one or more hooks (rows aligned across hooks).

    Subclasses provide ``hooks``, ``d_in``, ``__len__`` and ``_read(hook, index)``; everything
    else (batches, shuffling, sampling) is shared.
    """

    hooks: tuple[str, ...]
    d_in: int

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _read(self, hook: str, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` (sorted int64 array) of ``hook`` in the stored dtype (any device)."""

    @property
    def metadata(self) -> TokenMetadata | None:
        """Per-row :class:`TokenMetadata` (``None`` for plain arrays)."""
        return None

    @property
    def hook(self) -> str:
        """The default hook (the first one)."""
        return self.hooks[0]

    def resolve_hook(self, hook: str | None) -> str:
        """``hook`` checked against :attr:`hooks` (``None``: the default hook)."""
        return self._hook(hook)

    def _hook(self, hook: str | None) -> str:
        if hook is None:
            return self.hook
        if hook not in self.hooks:
            raise ValueError(f"hook {hook!r} is not in this store; it has {list(self.hooks)}")
        return hook

    def rows(
        self,
        index,
        hook: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Rows ``index`` (int, slice or integer array) as a tensor of shape (n, d_in).

        On ``device`` (the CPU by default), converted to ``dtype``.
        """
        n = len(self)
        if isinstance(index, slice):
            idx = np.arange(n)[index]
        else:
            idx = np.asarray(index, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"row index out of range for a store of {n} rows")
            idx = np.where(idx < 0, idx + n, idx)
        order = np.argsort(idx, kind="stable")
        out = self._read(self._hook(hook), idx[order])
        if not np.all(order[:-1] < order[1:]):  # undo the sort unless it was already in order
            out = out[torch.from_numpy(np.argsort(order, kind="stable")).to(out.device)]
        return out.to(device=device or "cpu", dtype=dtype)

    def __getitem__(self, index) -> torch.Tensor:
        out = self.rows(index)
        return out[0] if np.ndim(index) == 0 and not isinstance(index, slice) else out

    def to_tensor(
        self,
        max_rows: int | None = None,
        hook: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """The first ``max_rows`` rows (all by default) as one in-memory tensor (n, d_in)."""
        n = len(self) if max_rows is None else min(int(max_rows), len(self))
        return self.rows(slice(0, n), hook=hook, dtype=dtype, device=device)

    def sample(
        self, n: int, seed: int = 0, hook: str | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, np.ndarray]:
        """``n`` rows drawn without replacement (all if fewer): (rows, sorted row indices)."""
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(self), size=min(int(n), len(self)), replace=False))
        return self.rows(idx, hook=hook, dtype=dtype), idx

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        hook: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        drop_last: bool = False,
        buffer_rows: int = 1 << 18,
    ) -> Iterator[torch.Tensor]:
        """One pass over the rows in batches of shape (batch_size, d_in).

        With ``shuffle`` the order is a global permutation drawn from ``seed``; rows are read
        ``buffer_rows`` at a time, so memory stays bounded whatever the store's size.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        hook = self._hook(hook)
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        buffer_rows = max(batch_size, (buffer_rows // batch_size) * batch_size)
        for start in range(0, n, buffer_rows):
            stop = min(n, start + buffer_rows)
            idx = np.arange(start, stop) if order is None else order[start:stop]
            chunk = self.rows(idx, hook=hook, dtype=dtype, device=device)
            for b in range(0, len(chunk), batch_size):
                batch = chunk[b : b + batch_size]
                if drop_last and len(batch) < batch_size:
                    return
                yield batch

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`iter_batches` yields."""
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)


class ArrayStore(ActivationSource):
    """An in-memory array of shape (n_samples, d_in) behind the store API (no copy)."""

    def __init__(
        self,
        data: np.ndarray | torch.Tensor,
        hook: str = "activations",
        metadata: TokenMetadata | None = None,
    ) -> None:
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(data)
        if not isinstance(data, torch.Tensor) or data.ndim != 2:
            raise ValueError(
                "activations must be a 2-D array of shape (n_samples, d_in), got "
                f"{getattr(data, 'shape', type(data).__name__)}"
            )
        if metadata is not None and len(metadata) != len(data):
            raise ValueError(f"metadata has {len(metadata)} rows, activations {len(data)}")
        self.data = data.detach()
        self.hooks = (hook,)
        self.d_in = int(data.shape[1])
        self._metadata = metadata

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def _read(self, hook: str, index: np.ndarray) -> torch.Tensor:
        return self.data[torch.from_numpy(index).to(self.data.device)]

    @property
    def metadata(self) -> TokenMetadata | None:
        return self._metadata


class ActivationStore(ActivationSource):
    """A harvested activation cache folder, memory-mapped (open it with :func:`open_cache`).

    Attributes
    ----------
    path : Path
        The cache folder.
    manifest : dict
        Its ``manifest.json``.
    hooks : tuple of str
        Hook names, e.g. ``("blocks.6.hook_resid_post",)``.
    d_in : int
        Width of every activation row.
    """

    def __init__(self, path: str | Path, verify: bool = True, n_tokens: int | None = None):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.hooks = tuple(m["hooks"])
        self.d_in = int(m["d_in"])
        self.dtype = str(m["dtype"])
        self._shards = [
            check_shard(self.path, s, list(self.hooks), self.d_in, self.dtype, verify)
            for s in m["shards"]
        ]
        rows = [s["rows"] for s in m["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._n = int(self._offsets[-1])
        if n_tokens is not None:
            if n_tokens > self._n:
                raise CacheError(f"cache {self.path} has {self._n} rows, {n_tokens} requested")
            self._n = int(n_tokens)
        self._maps: dict[tuple[str, int], np.memmap] = {}

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, n={len(self)}, hooks={list(self.hooks)})"

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` row range of each shard (for readers that stream shard by shard)."""
        bounds = zip(self._offsets[:-1].tolist(), self._offsets[1:].tolist())
        return [(a, min(b, self._n)) for a, b in bounds if a < self._n]

    def _map(self, name: str, k: int) -> np.ndarray:
        if (name, k) not in self._maps:
            header, start = self._shards[k]
            path = self.path / self.manifest["shards"][k]["file"]
            self._maps[name, k] = memmap_tensor(path, name, header, start)
        return self._maps[name, k]

    def _gather(self, name: str, index: np.ndarray) -> list[np.ndarray]:
        shard = np.searchsorted(self._offsets, index, side="right") - 1
        parts = []
        for k in np.unique(shard):
            local = index[shard == k] - self._offsets[k]
            arr = self._map(name, int(k))
            contiguous = len(local) and local[-1] - local[0] + 1 == len(local)
            parts.append(arr[local[0] : local[-1] + 1] if contiguous else arr[local])
        return parts

    def _read(self, hook: str, index: np.ndarray) -> torch.Tensor:
        parts = self._gather(hook, index)
        if not parts:
            return torch.empty((0, self.d_in), dtype=torch.float32)
        return torch.cat([to_torch(p, self.dtype) for p in parts])

    @cached_property
    def metadata(self) -> TokenMetadata:
        """Per-row :class:`TokenMetadata` (columns read into memory, ~32 bytes per row)."""
        idx = np.arange(len(self))
        cols = {c: np.concatenate(self._gather(c, idx) or [np.empty(0, np.int64)]) for c in COLUMNS}
        vocab = _read_list(self.path / VOCAB)
        docs = _read_list(self.path / DOCUMENTS)
        return TokenMetadata(
            **{c: np.asarray(v, np.int64) for c, v in cols.items()}, doc_ids=docs, vocab=vocab
        )

    def summary(self) -> dict:
        """Rows, hooks, d_in, dtype, model, corpus and content hash as a JSON-able dict."""
        m = self.manifest
        return {
            "path": str(self.path),
            "n_tokens": len(self),
            "hooks": list(self.hooks),
            "d_in": self.d_in,
            "dtype": self.dtype,
            "model": m["key"].get("model"),
            "corpus": m.get("corpus", {}).get("name"),
            "n_shards": len(m["shards"]),
            "content_hash": m["content_hash"],
        }


def _read_list(path: Path) -> list[str]:
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def open_cache(
    path: str | Path, verify: bool = True, n_tokens: int | None = None
) -> ActivationStore:
    """Open a harvested activation cache folder as a memory-mapped :class:`ActivationStore`.

    Parameters
    ----------
    path : str or Path
        Folder with ``manifest.json`` and the shards.
    verify : bool
        Check every shard's SHA-256 against the manifest (reads the files once, ~1 s/GB).
        Sizes, shapes and dtypes are always checked.
    n_tokens : int, optional
        Expose only the first ``n_tokens`` rows.

    Raises
    ------
    CacheError
        Missing, incomplete (interrupted harvest), corrupt or inconsistent cache.
    """
    return ActivationStore(path, verify=verify, n_tokens=n_tokens)


def as_activation_store(obj) -> ActivationSource:
    """Accept a store, a cache folder, or an array of shape (n_samples, d_in)."""
    if isinstance(obj, ActivationSource):
        return obj
    if isinstance(obj, (str, Path)):
        return open_cache(obj)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return ArrayStore(obj)
    raise ValueError(
        "expected an ActivationStore, a cache folder or an array of shape (n_samples, d_in), "
        f"got {type(obj).__name__}"
    )
