"""The corpus types: :class:`Document`, :class:`Corpus` and :class:`CorpusError`."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class CorpusError(ValueError):
    """The corpus cannot be built (empty, missing, unreadable, dataset unavailable)."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes
    ----------
    doc_id : str
        Stable identifier, e.g. ``"numpy:numpy/linalg/_linalg.py:svd"`` or a file path.
    text : str
        The document's text.
    source : str
        Which source it came from (``"python-docs"``, ``"numpy"``, ``"file"``, ...).
    """

    doc_id: str
    text: str
    source: str = ""


@dataclass(frozen=True)
class Corpus(Sequence):
    """An ordered, immutable list of :class:`Document` with its provenance.

    Attributes
    ----------
    name : str
        Short description (``"default"``, a path, a dataset name).
    documents : tuple of Document
        In their deterministic order.
    provenance : dict
        Where the text came from (package versions, paths, dataset names).
    """

    name: str
    documents: tuple[Document, ...]
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.documents:
            raise CorpusError(
                f"corpus {self.name!r} has no documents (no non-empty text found); pass a file, "
                "a folder of .txt/.md/.rst/.jsonl files, or leave --corpus out for the default"
            )

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i):  # type: ignore[override]
        return self.documents[i]

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of every document's id and text, in order."""
        h = hashlib.sha256()
        for d in self.documents:
            h.update(d.doc_id.encode())
            h.update(b"\0")
            h.update(d.text.encode("utf-8", "surrogatepass"))
            h.update(b"\1")
        return h.hexdigest()

    @property
    def n_chars(self) -> int:
        """Total number of characters."""
        return sum(len(d.text) for d in self.documents)

    def summary(self) -> dict:
        """Name, documents, characters, fingerprint and provenance as a JSON-able dict."""
        return {
            "name": self.name,
            "n_documents": len(self),
            "n_chars": self.n_chars,
            "fingerprint": self.fingerprint,
            "provenance": self.provenance,
        }
