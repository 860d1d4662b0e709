"""Text corpora: the embedded default English corpus and user-supplied text.

The default corpus is real human-written English that ships with installed packages, so it
works offline: the Python documentation topics in the standard library (``pydoc_data.topics``,
the text of the language reference's help pages) followed by the docstrings of the Python
standard library, NumPy, SciPy and scikit-learn, read from their source files with :mod:`ast`
(nothing is imported). About 11 M characters, 2.5 M+ tokens for a GPT-style BPE tokenizer.

Order is deterministic: sources in the order of :data:`DEFAULT_SOURCES`, files sorted by path,
docstrings in source order (module, then classes and functions depth-first). Test suites and
private modules (``_``-prefixed folders excepted) are skipped; doctest examples (``>>>`` blocks)
are removed, docstrings shorter than ``min_chars`` or with fewer than 55 % letters are dropped,
and exact duplicates are kept once. The content depends on the installed versions, which the
corpus records in :attr:`Corpus.provenance`; :attr:`Corpus.fingerprint` hashes the text itself.

Users can pass their own text instead (:func:`load_corpus`): a text file (one document per
blank-line-separated paragraph; ``.jsonl``: one document per line, key ``"text"``), a folder (one
document per ``.txt``/``.md``/``.rst``/``.jsonl`` file, recursively, sorted), a list of strings,
or, online, a Hugging Face dataset name (needs the ``datasets`` package).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_SOURCES: tuple[str, ...] = ("python-docs", "stdlib", "numpy", "scipy", "sklearn")
"""Sources of :func:`default_corpus`, in order. :data:`SOURCES` lists all available ones."""

_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")


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


# --------------------------------------------------------------------------------------------
# The embedded default corpus


def _python_docs() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(f"python-docs:{k}", topics[k], "python-docs") for k in sorted(topics)]


_DOCTEST = re.compile(r"^[ \t]*>>>.*?(?:\n[ \t]*\n|\Z)", re.M | re.S)


def _clean_docstring(doc: str) -> str:
    """Drop doctest blocks (a ``>>>`` line up to the next blank line) and trailing space."""
    return _DOCTEST.sub("\n", doc).strip()


def _is_prose(text: str, min_chars: int) -> bool:
    if len(text) < min_chars:
        return False
    letters = sum(c.isalpha() for c in text)
    return letters >= 0.55 * len(text)


def _docstrings(tree: ast.Module, prefix: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of the module, its classes and functions, in source order."""
    stack: list[tuple[ast.AST, str]] = [(tree, prefix)]
    while stack:
        node, name = stack.pop()
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield name, doc
        children = [
            (c, f"{name}:{c.name}" if node is tree else f"{name}.{c.name}")
            for c in getattr(node, "body", [])
            if isinstance(c, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        stack.extend(reversed(children))


def _skip_path(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in {"tests", "test", "testing", "idlelib", "site-packages"} for p in parts)


def _package_docstrings(source: str, root: Path, min_chars: int) -> list[Document]:
    docs: list[Document] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent if source != "stdlib" else root).as_posix()
        if _skip_path(rel):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for name, doc in _docstrings(tree, f"{source}:{rel}"):
            text = _clean_docstring(doc)
            if _is_prose(text, min_chars):
                docs.append(Document(name, text, source))
    return docs


def _package_root(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CorpusError(f"the corpus source {module!r} needs the package {module!r} installed")
    return Path(spec.origin).parent


def _source(name: str, module: str | None) -> Callable[[int], list[Document]]:
    def build(min_chars: int) -> list[Document]:
        if module is None:
            root = Path(sysconfig.get_paths()["stdlib"])
        else:
            root = _package_root(module)
        return _package_docstrings(name, root, min_chars)

    return build


SOURCES: dict[str, Callable[[int], list[Document]]] = {
    "python-docs": lambda min_chars: _python_docs(),
    "stdlib": _source("stdlib", None),
    "numpy": _source("numpy", "numpy"),
    "scipy": _source("scipy", "scipy"),
    "sklearn": _source("sklearn", "sklearn"),
    "pandas": _source("pandas", "pandas"),
    "matplotlib": _source("matplotlib", "matplotlib"),
    "torch": _source("torch", "torch"),
}
"""Registry of embedded text sources: name -> builder(min_chars) -> documents."""

_DISTRIBUTIONS = {"numpy": "numpy", "scipy": "scipy", "sklearn": "scikit-learn"}
_DISTRIBUTIONS |= {"pandas": "pandas", "matplotlib": "matplotlib", "torch": "torch"}


def _version(source: str) -> str:
    if source in ("python-docs", "stdlib"):
        return sys.version.split()[0]
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[source])
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def default_corpus(sources: Sequence[str] = DEFAULT_SOURCES, min_chars: int = 200) -> Corpus:
    """The embedded default English corpus (offline; cached in the process).

    Parameters
    ----------
    sources : sequence of str
        Names from :data:`SOURCES`, in the order wanted. The default gives ~2.5 M tokens.
    min_chars : int
        Docstrings shorter than this (after removing doctest examples) are dropped.

    Returns
    -------
    Corpus
        ``name="default"``; ``provenance`` records the sources and the package versions.
    """
    sources = tuple(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise CorpusError(f"unknown corpus source(s) {unknown}; choose from {sorted(SOURCES)}")
    return _default_corpus(sources, int(min_chars))


@functools.lru_cache(maxsize=4)
def _default_corpus(sources: tuple[str, ...], min_chars: int) -> Corpus:
    docs: list[Document] = []
    seen: set[str] = set()
    for s in sources:
        for d in SOURCES[s](min_chars):
            if d.text not in seen:
                seen.add(d.text)
                docs.append(d)
    provenance = {
        "kind": "embedded",
        "sources": {s: _version(s) for s in sources},
        "min_chars": min_chars,
        "description": "pydoc_data.topics (Python docs) + docstrings of installed packages",
    }
    logger.info("default corpus: %d documents from %s", len(docs), ", ".join(sources))
    return Corpus(
        "default" if sources == DEFAULT_SOURCES else "+".join(sources), tuple(docs), provenance
    )


# --------------------------------------------------------------------------------------------
# User text


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from exc


def _jsonl_documents(path: Path, text_column: str) -> list[Document]:
    docs = []
    for i, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            text = json.loads(line)[text_column]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(
                f"{path}:{i + 1} is not a JSON object with a {text_column!r} string"
            ) from exc
        if str(text).strip():
            docs.append(Document(f"{path.name}:{i}", str(text), "file"))
    return docs


def _file_documents(path: Path, text_column: str) -> list[Document]:
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text_column)
    paragraphs = re.split(r"\n[ \t]*\n", _read_text(path))
    return [
        Document(f"{path.name}:{i}", p.strip(), "file")
        for i, p in enumerate(paragraphs)
        if p.strip()
    ]


def _folder_documents(folder: Path, text_column: str) -> list[Document]:
    docs: list[Document] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix not in _TEXT_SUFFIXES:
            continue
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".jsonl":
            docs += [
                Document(f"{rel}:{d.doc_id}", d.text, "folder")
                for d in _jsonl_documents(path, text_column)
            ]
        else:
            text = _read_text(path).strip()
            if text:
                docs.append(Document(rel, text, "folder"))
    return docs


def _hf_documents(name: str, split: str, text_column: str, max_documents: int) -> list[Document]:
    dataset, _, config = name.partition(":")
    try:
        import datasets  # noqa: F401 - optional dependency, imported lazily
    except ImportError as exc:
        raise CorpusError(
            f"{name!r} is not a file or folder; as a Hugging Face dataset name it needs the "
            "`datasets` package (`pip install datasets`) and internet access. Offline, leave "
            "--corpus out for the embedded default corpus or pass a text file/folder"
        ) from exc
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset, config or None, split=split, streaming=True)
    except Exception as exc:  # network, unknown name, ... all reported the same way
        raise CorpusError(
            f"cannot load the Hugging Face dataset {name!r} (split {split!r}): {exc}. Offline, "
            "leave --corpus out for the embedded default corpus"
        ) from exc
    docs = []
    for i, row in enumerate(ds):
        if len(docs) >= max_documents:
            break
        if text_column not in row:
            raise CorpusError(f"dataset {name!r} has no column {text_column!r}: {sorted(row)}")
        text = str(row[text_column])
        if text.strip():
            docs.append(Document(f"{name}:{split}:{i}", text, "huggingface"))
    return docs


def _looks_like_path(spec: str) -> bool:
    """A missing path, as opposed to a dataset name such as ``"owner/name:config"``."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or Path(spec).suffix in _TEXT_SUFFIXES:
        return True
    return not re.fullmatch(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?", spec)


def load_corpus(
    spec: str | Path | Corpus | Sequence[str] | None = None,
    *,
    text_column: str = "text",
    split: str = "train",
    max_documents: int = 200_000,
) -> Corpus:
    """Build a corpus from a specification.

    Parameters
    ----------
    spec : str, Path, Corpus, list of str or None
        ``None`` or ``"default"``: :func:`default_corpus`; ``"embedded:numpy,scipy"``: the
        embedded sources named (see :data:`SOURCES`). A :class:`Corpus`: returned as is.
        A list of strings: one document each. An existing file: one document per
        blank-line-separated paragraph (``.jsonl``: one per line, key ``text_column``). An
        existing folder: one document per ``.txt``/``.md``/``.rst`` file (``.jsonl``: one per
        line), recursively, sorted by path. Any other string: a Hugging Face dataset name,
        ``"name"`` or ``"name:config"`` (online; needs the ``datasets`` package).
    text_column : str
        Key holding the text in ``.jsonl`` files and datasets.
    split : str
        Dataset split.
    max_documents : int
        At most this many dataset rows are read (streamed).

    Returns
    -------
    Corpus

    Raises
    ------
    CorpusError
        Empty corpus, unreadable file, dataset unavailable.
    """
    if spec is None or (isinstance(spec, str) and spec in ("", "default")):
        return default_corpus()
    if isinstance(spec, str) and spec.startswith("embedded:"):
        return default_corpus(tuple(s.strip() for s in spec[9:].split(",") if s.strip()))
    if isinstance(spec, Corpus):
        return spec
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        docs = [Document(f"text:{i}", str(t), "list") for i, t in enumerate(spec) if str(t).strip()]
        return Corpus("list", tuple(docs), {"kind": "list"})
    path = Path(spec)
    if path.is_file():
        docs = _file_documents(path, text_column)
        return Corpus(str(path), tuple(docs), {"kind": "file", "path": str(path.resolve())})
    if path.is_dir():
        docs = _folder_documents(path, text_column)
        return Corpus(str(path), tuple(docs), {"kind": "folder", "path": str(path.resolve())})
    if _looks_like_path(str(spec)):
        raise CorpusError(f"corpus path {str(spec)!r} does not exist (pass a file or folder)")
    docs = _hf_documents(str(spec), split, text_column, max_documents)
    provenance = {"kind": "huggingface", "dataset": str(spec), "split": split}
    return Corpus(str(spec), tuple(docs), provenance)
