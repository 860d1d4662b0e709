"""Corpus -> context windows -> token batches, deterministically and lazily.

Each document is tokenized on its own (no special tokens), cut into consecutive windows of
``context_length - 1`` tokens (``context_length`` when the model has no BOS token), and each
window gets the model's BOS token in front, as ``model.to_tokens`` would do. Windows are grouped
into right-padded batches holding at most ``batch_tokens`` tokens (padding included); within
groups of consecutive windows they are sorted by length first, so document ends share batches
and little compute goes to padding. With a causal model right padding cannot change the real
positions, so no attention mask is needed and padded positions are simply dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """One context window: ``tokens`` (BOS first, if any) from document ``doc_index``."""

    index: int
    doc_index: int
    tokens: np.ndarray


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded windows.

    Attributes
    ----------
    tokens : Tensor of shape (n_windows, seq_len)
        Token ids, padded with ``pad_id``.
    lengths : Tensor of shape (n_windows,)
        Real length of each window.
    windows : ndarray of shape (n_windows,)
        Window indices.
    doc_index : ndarray of shape (n_windows,)
        Document index of each window.
    next_window : int or None
        Set on the last batch of a group: every window below it has then been batched.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    windows: np.ndarray
    doc_index: np.ndarray
    next_window: int | None = None

    @property
    def group_end(self) -> bool:
        """Whether this batch closes a group of windows (a safe place to cut a shard)."""
        return self.next_window is not None

    @property
    def valid(self) -> torch.Tensor:
        """Boolean mask (n_windows, seq_len) of the real (non-padding) positions."""
        pos = torch.arange(self.tokens.shape[1])
        return pos[None, :] < self.lengths[:, None]


def document_order(n_documents: int, seed: int | None, rank: int = 0, world_size: int = 1):
    """Indices of the documents rank ``rank`` reads, in order.

    ``seed=None`` keeps the corpus order; otherwise a seeded permutation. Ranks take disjoint
    interleaved slices (``order[rank::world_size]``).
    """
    order = np.arange(n_documents)
    if seed is not None:
        order = np.random.default_rng(seed).permutation(n_documents)
    return order[rank::world_size]


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (and without length warnings)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    finally:
        transformers.logging.set_verbosity(verbosity)


def iter_windows(
    documents: Sequence[str],
    order: np.ndarray,
    tokenizer,
    context_length: int,
    bos_id: int | None,
    chunk: int = 64,
) -> Iterator[Window]:
    """Windows of the documents ``order`` (texts in ``documents``), numbered from 0."""
    body = context_length - (bos_id is not None)
    if body < 1:
        raise ValueError(
            f"context_length must be at least 2 with a BOS token, got {context_length}"
        )
    prefix = np.array([] if bos_id is None else [bos_id], dtype=np.int64)
    index = 0
    for start in range(0, len(order), chunk):
        docs = order[start : start + chunk]
        for doc, ids in zip(docs, tokenize(tokenizer, [documents[i] for i in docs])):
            ids = np.asarray(ids, dtype=np.int64)
            for s in range(0, len(ids), body):
                yield Window(index, int(doc), np.concatenate([prefix, ids[s : s + body]]))
                index += 1


def iter_token_batches(
    windows: Iterator[Window], batch_tokens: int, pad_id: int, group_windows: int | None = None
) -> Iterator[TokenBatch]:
    """Pack windows into batches of at most ``batch_tokens`` padded tokens.

    With ``group_windows``, windows are taken in groups by index (``index // group_windows``);
    inside a group they are sorted by decreasing length (stable) before packing, so short
    windows (document ends) share batches and little padding is wasted. Without it, windows are
    packed in order and every batch is its own group. The last batch of a group has
    ``next_window`` set: every window below it has then been batched, which is where a harvest
    can safely cut a shard. A window longer than ``batch_tokens`` forms a batch on its own.
    """
    group: list[Window] = []
    longest = 0
    for w in windows:
        if group_windows:
            full = w.index // group_windows != group[0].index // group_windows if group else False
        else:
            full = bool(group) and max(longest, len(w.tokens)) * (len(group) + 1) > batch_tokens
        if full:
            yield from _pack_group(group, batch_tokens, pad_id, sort=bool(group_windows))
            group, longest = [], 0
        group.append(w)
        longest = max(longest, len(w.tokens))
    if group:
        yield from _pack_group(group, batch_tokens, pad_id, sort=bool(group_windows))


def _pack_group(
    group: list[Window], batch_tokens: int, pad_id: int, sort: bool
) -> Iterator[TokenBatch]:
    if sort:
        group = sorted(group, key=lambda w: -len(w.tokens))  # stable: ties keep their order
    next_window = max(w.index for w in group) + 1
    batches: list[list[Window]] = [[]]
    longest = 0
    for w in group:
        longest = max(longest, len(w.tokens))
        if batches[-1] and longest * (len(batches[-1]) + 1) > batch_tokens:
            batches.append([])
            longest = len(w.tokens)
        batches[-1].append(w)
    for i, b in enumerate(batches):
        yield _pack(b, pad_id, next_window if i == len(batches) - 1 else None)


def _pack(windows: list[Window], pad_id: int, next_window: int | None) -> TokenBatch:
    seq_len = max(len(w.tokens) for w in windows)
    tokens = torch.full((len(windows), seq_len), pad_id, dtype=torch.long)
    for row, w in enumerate(windows):  # a handful of windows per batch
        tokens[row, : len(w.tokens)] = torch.from_numpy(w.tokens)
    return TokenBatch(
        tokens=tokens,
        lengths=torch.tensor([len(w.tokens) for w in windows]),
        windows=np.array([w.index for w in windows], dtype=np.int64),
        doc_index=np.array([w.doc_index for w in windows], dtype=np.int64),
        next_window=next_window,
    )
