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

from geomsae.text.corpus import Corpus, CorpusError, Document
from geomsae.text.embedded import DEFAULT_SOURCES, SOURCES, default_corpus
from geomsae.text.loaders import load_corpus

__all__ = [
    "DEFAULT_SOURCES",
    "SOURCES",
    "Corpus",
    "CorpusError",
    "Document",
    "default_corpus",
    "load_corpus",
]
