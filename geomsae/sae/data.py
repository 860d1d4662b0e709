"""Where training batches come from: an in-memory array or an on-disk activation cache.

Both are seen as a list of *chunks* (the whole array is one chunk; a cache has one chunk per
shard). A pass shuffles the chunk order, loads ``buffer_chunks`` chunks at a time (so memory stays
bounded by the buffer), drops excluded rows (BOS, very high norm), shuffles the buffer and cuts it
into batches; rows left over carry into the next buffer. The stream is a pure function of the
seed, so a resumed run regenerates it and skips the batches it has already trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """One loadable piece of the data.

    Attributes
    ----------
    n_rows : int
        Rows in the chunk (before exclusion).
    load : callable
        ``load() -> (activations (n_rows, d_in), positions (n_rows,) or None)``.
    """

    n_rows: int
    load: Callable[[], tuple[Tensor, Tensor | None]]


class ChunkedSource:
    """Chunks of activations with a fixed ``d_in`` (use :func:`as_source` to build one).

    Parameters
    ----------
    chunks : sequence of Chunk
    d_in : int
    buffer_chunks : int
        Chunks held in memory at a time while streaming.
    """

    def __init__(self, chunks: Sequence[Chunk], d_in: int, buffer_chunks: int = 4):
        if not chunks or sum(c.n_rows for c in chunks) == 0:
            raise ValueError("the activation source is empty; harvest or pass some activations")
        self.chunks = list(chunks)
        self.d_in = int(d_in)
        self.buffer_chunks = max(1, int(buffer_chunks))

    @property
    def n_rows(self) -> int:
        """Total rows before exclusion."""
        return sum(c.n_rows for c in self.chunks)

    def _load(self, i: int) -> tuple[Tensor, Tensor | None]:
        x, pos = self.chunks[i].load()
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(
                f"chunk {i} has shape {tuple(x.shape)}, expected (n_samples, {self.d_in})"
            )
        return x, pos

    def stream(
        self,
        seed: int,
        keep: Callable[[Tensor, Tensor | None], Tensor] | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless stream of buffers ``(data, order)``: ``data`` holds the rows of a few chunks
        (the array itself, uncopied, for a one-chunk source) and ``order`` the shuffled indices
        of its kept rows."""
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
            chunk_order = torch.randperm(len(self.chunks), generator=gen).tolist()
            for start in range(0, len(chunk_order), self.buffer_chunks):
                parts, keeps = [], []
                for i in chunk_order[start : start + self.buffer_chunks]:
                    x, pos = self._load(i)
                    parts.append(x)
                    if keep is not None:
                        keeps.append(keep(x, pos))
                data = torch.cat(parts) if len(parts) > 1 else parts[0]
                kept = torch.cat(keeps).nonzero().squeeze(1) if keeps else None
                n = len(data) if kept is None else len(kept)
                if n == 0:
                    continue
                order = torch.randperm(n, generator=gen)
                yield data, (order if kept is None else kept[order])
            epoch += 1

    def batches(
        self,
        batch_size: int,
        seed: int,
        keep: Callable[[Tensor, Tensor | None], Tensor] | None = None,
        start: int = 0,
    ) -> Iterator[Tensor]:
        """Endless stream of float32 (batch_size, d_in) batches, the first ``start`` skipped.

        Batches are gathered from the buffer only when they are used, so skipping on resume
        and a large in-memory array cost no copies.
        """
        leftover = torch.empty(0, self.d_in)
        produced = 0
        for data, order in self.stream(seed, keep):
            pos = 0
            if len(leftover):
                need = batch_size - len(leftover)
                if need > len(order):
                    leftover = torch.cat([leftover, data[order].float()])
                    continue
                batch = torch.cat([leftover, data[order[:need]].float()])
                pos = need
                if produced >= start:
                    yield batch
                produced += 1
            while pos + batch_size <= len(order):
                if produced >= start:
                    yield data[order[pos : pos + batch_size]].float()
                produced += 1
                pos += batch_size
            leftover = data[order[pos:]].float()

    def sample(self, n: int, seed: int, keep=None) -> Tensor:
        """``n`` rows (fewer if the data are smaller) from a shuffled pass, shape (n, d_in)."""
        out, got = [], 0
        for data, order in self.stream(seed, keep):
            out.append(data[order[: n - got]].float())
            got += len(out[-1])
            if got >= n or got >= self.n_rows:
                break
        return torch.cat(out)


def _array_source(x, d_in: int | None) -> ChunkedSource:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
    if t.ndim != 2:
        raise ValueError(
            f"activations must have shape (n_samples, d_in), got {tuple(t.shape)}; flatten "
            "(batch, pos, d_model) arrays with x.reshape(-1, d_model)"
        )
    if d_in is not None and t.shape[1] != d_in:
        raise ValueError(
            f"activations have d_in={t.shape[1]} but the config says d_in={d_in}; "
            "set SAEConfig(d_in=...) to the width of the hooked activations"
        )
    if not torch.is_floating_point(t):
        raise ValueError(f"activations must be floating point, got {t.dtype}")
    t = t.detach()
    return ChunkedSource([Chunk(len(t), lambda: (t, None))], t.shape[1])


def as_source(
    activations, d_in: int | None = None, hook: str | None = None, buffer_chunks: int = 4
) -> ChunkedSource:
    """A :class:`ChunkedSource` from an array/tensor (n, d_in), a cache, or a ChunkedSource.

    Caches are :mod:`geomsae.activations` stores (``open_cache(path)``, ``ArrayStore``) or the
    path of a cache folder; they are streamed shard by shard and ``hook`` picks the hook (the
    store's first by default). Rows at position 0 (BOS) are marked for exclusion.
    """
    if isinstance(activations, ChunkedSource):
        src = activations
    elif isinstance(activations, (Tensor, np.ndarray)):
        src = _array_source(activations, d_in)
    else:
        src = _cache_source(activations, hook, buffer_chunks)
    if d_in is not None and src.d_in != d_in:
        raise ValueError(
            f"activations have d_in={src.d_in} but the config says d_in={d_in}; "
            "set SAEConfig(d_in=...) to the width of the hooked activations"
        )
    return src


def _cache_source(obj, hook: str | None, buffer_chunks: int, rows_per_chunk: int = 65536):
    from pathlib import Path

    from geomsae.activations import ActivationSource, open_cache

    store = open_cache(obj) if isinstance(obj, (str, Path)) else obj
    if not isinstance(store, ActivationSource):
        raise TypeError(
            f"cannot train on a {type(obj).__name__}; pass an array/tensor of shape "
            "(n_samples, d_in), an activation cache (geomsae.activations.open_cache) or its path"
        )
    if hook is not None and hook not in store.hooks:
        hook = None if len(store.hooks) == 1 else hook  # a single-hook cache is unambiguous
    hook = store._hook(hook)
    n = len(store)
    if hasattr(store, "chunk_bounds"):
        bounds = store.chunk_bounds()
    else:
        bounds = [(a, min(a + rows_per_chunk, n)) for a in range(0, n, rows_per_chunk)]
    meta = store.metadata
    positions = None if meta is None else torch.from_numpy(np.asarray(meta.position))

    def loader(a: int, b: int):
        def load():
            pos = None if positions is None else positions[a:b]
            return store.rows(slice(a, b), hook=hook), pos

        return load

    chunks = [Chunk(b - a, loader(a, b)) for a, b in bounds if b > a]
    return ChunkedSource(chunks, store.d_in, buffer_chunks)
