"""The embedded default corpus: Python docs topics and docstrings of installed packages.

See :mod:`geomsae.text` for what it contains and how it is built.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import logging
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from geomsae.text.corpus import Corpus, CorpusError, Document

logger = logging.getLogger(__name__)

DEFAULT_SOURCES: tuple[str, ...] = ("python-docs", "stdlib", "numpy", "scipy", "sklearn")
"""Sources of :func:`default_corpus`, in order. :data:`SOURCES` lists all available ones."""


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
