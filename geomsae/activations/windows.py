"""Corpus -> context windows -> token batches, deterministically and lazily.

Each document is tokenized on its own (no special tokens), cut into consecutive windows of
``context_length - 1`` tokens (``context_length`` when the model has no BOS token), and each
window gets the model's BOS token in front, as ``model.to_tokens`` would do. Windows are grouped
into right-padded batches holding at most ``batch_tokens`` tokens (padding included). With a
causal model right padding cannot change the real positions, so no attention mask is needed and
padded positions are simply dropped.
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
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    windows: np.ndarray
    doc_index: np.ndarray

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
    windows: Iterator[Window], batch_tokens: int, pad_id: int
) -> Iterator[TokenBatch]:
    """Group consecutive windows into batches of at most ``batch_tokens`` padded tokens.

    A window longer than ``batch_tokens`` forms a batch on its own.
    """
    pending: list[Window] = []
    longest = 0
    for w in windows:
        new_longest = max(longest, len(w.tokens))
        if pending and new_longest * (len(pending) + 1) > batch_tokens:
            yield _pack(pending, longest, pad_id)
            pending, new_longest = [], len(w.tokens)
        pending.append(w)
        longest = new_longest
    if pending:
        yield _pack(pending, longest, pad_id)


def _pack(windows: list[Window], seq_len: int, pad_id: int) -> TokenBatch:
    tokens = torch.full((len(windows), seq_len), pad_id, dtype=torch.long)
    for row, w in enumerate(windows):  # a handful of windows per batch
        tokens[row, : len(w.tokens)] = torch.from_numpy(w.tokens)
    return TokenBatch(
        tokens=tokens,
        lengths=torch.tensor([len(w.tokens) for w in windows]),
        windows=np.array([w.index for w in windows], dtype=np.int64),
        doc_index=np.array([w.doc_index for w in windows], dtype=np.int64),
    )
