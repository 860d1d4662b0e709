"""User text: files, folders, lists of strings and Hugging Face datasets -> :class:`Corpus`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from geomsae.text.corpus import Corpus, CorpusError, Document
from geomsae.text.embedded import default_corpus

_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")


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
