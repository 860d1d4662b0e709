"""Per-token metadata stored beside the activation vectors.

Row ``i`` of every hook's activations and of every metadata column describe the same token.
The rows of a window are consecutive and in text order, and consecutive windows of a document
usually follow each other, so the surrounding context of a token is read off the neighbouring
rows that continue the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLUMNS = ("doc_index", "window", "position", "token_id")
"""Metadata columns stored in every shard (int64 arrays of shape (n_samples,))."""


@dataclass(frozen=True)
class TokenMetadata:
    """Where each activation row came from.

    Attributes
    ----------
    doc_index : ndarray of shape (n_samples,)
        Index of the document in the corpus (see ``doc_ids``).
    window : ndarray of shape (n_samples,)
        Index of the context window within the harvesting stream of its rank.
    position : ndarray of shape (n_samples,)
        Position of the token in its context window (the BOS token is position 0).
    token_id : ndarray of shape (n_samples,)
        Token id.
    doc_ids : sequence of str
        Document identifiers, indexed by ``doc_index``.
    vocab : sequence of str
        Decoded string of every token id (empty when unknown).
    """

    doc_index: np.ndarray
    window: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    doc_ids: Sequence[str] = ()
    vocab: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.token_id)

    def doc_id(self, i: int) -> str:
        """Identifier of the document of row ``i``."""
        k = int(self.doc_index[i])
        return self.doc_ids[k] if k < len(self.doc_ids) else str(k)

    def token_str(self, i: int | np.ndarray) -> str | list[str]:
        """Decoded token string(s) of row(s) ``i``."""
        if np.ndim(i) == 0:
            return self._decode(int(self.token_id[int(i)]))
        return self._lookup(self.vocab, self.token_id[np.asarray(i)]).tolist()

    @staticmethod
    def _lookup(names: Sequence[str], index: np.ndarray) -> np.ndarray:
        """Vectorised ``names[index]`` with ``"<k>"`` for indices past the end."""
        table = np.asarray(list(names), dtype=object)
        index = np.asarray(index, dtype=np.int64)
        out = np.array([f"<{k}>" for k in index], dtype=object) if len(table) == 0 else None
        if out is not None:
            return out
        inside = index < len(table)
        out = table[np.where(inside, index, 0)]
        if not inside.all():
            out[~inside] = [f"<{k}>" for k in index[~inside]]
        return out

    def _decode(self, token: int) -> str:
        return self.vocab[token] if token < len(self.vocab) else f"<{token}>"

    def context(self, i: int, before: int = 10, after: int = 4, mark: str = "«»") -> str:
        """Text around row ``i``: up to ``before``/``after`` tokens of the same document.

        The token itself is wrapped in the two characters of ``mark`` (nothing if empty).
        """
        n = len(self)
        lo, hi = max(0, i - before), min(n, i + after + 1)
        # link[j]: row lo+j+1 continues the text of row lo+j (same document, same or next window)
        doc, win, pos = (a[lo:hi] for a in (self.doc_index, self.window, self.position))
        step = np.diff(win)
        link = (np.diff(doc) == 0) & (((step == 0) & (np.diff(pos) > 0)) | (step == 1))
        k = i - lo
        left_ok = np.cumprod(link[:k][::-1]).astype(bool)  # rows i-1, i-2, ... still linked
        right_ok = np.cumprod(link[k:]).astype(bool)  # rows i+1, i+2, ...
        rows_left = np.arange(i - 1, lo - 1, -1)[left_ok][::-1]
        rows_right = np.arange(i + 1, hi)[right_ok]
        token = self._decode(int(self.token_id[i]))
        if mark:
            token = f"{mark[0]}{token}{mark[-1]}"
        pieces = [self._decode(int(t)) for t in self.token_id[rows_left]]
        pieces.append(token)
        pieces += [self._decode(int(t)) for t in self.token_id[rows_right]]
        return "".join(pieces)

    def to_frame(self):
        """A pandas DataFrame with the four columns plus ``doc_id`` and ``token`` strings."""
        import pandas as pd

        frame = pd.DataFrame({c: np.asarray(getattr(self, c)) for c in COLUMNS})
        frame["doc_id"] = self._lookup(self.doc_ids, self.doc_index)
        frame["token"] = self._lookup(self.vocab, self.token_id)
        return frame
