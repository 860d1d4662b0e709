"""The embedded default corpus and user-supplied text."""

from __future__ import annotations

import ast
import builtins
import json

import pytest

from geomsae.text import (
    DEFAULT_SOURCES,
    SOURCES,
    Corpus,
    CorpusError,
    Document,
    default_corpus,
    load_corpus,
)
from geomsae.text.embedded import _default_corpus as uncached
from geomsae.text.embedded import _docstrings


def test_python_docs_source_is_deterministic_with_provenance():
    a = uncached.__wrapped__(("python-docs",), 200)
    b = uncached.__wrapped__(("python-docs",), 200)
    assert a == b and a.fingerprint == b.fingerprint
    assert len(a) > 70 and a.n_chars > 400_000  # pydoc_data.topics: ~465k characters
    assert [d.doc_id for d in a] == sorted(d.doc_id for d in a)
    assert a.provenance["sources"]["python-docs"].count(".") == 2  # the Python version
    assert (
        "assignment statements"
        in a[[d.doc_id for d in a].index("python-docs:assignment")].text.lower()
    )


def test_package_docstrings_are_cleaned_prose():
    corpus = default_corpus(("numpy",), min_chars=300)
    assert corpus.provenance["sources"]["numpy"][0].isdigit()
    assert all(len(d.text) >= 300 and d.source == "numpy" for d in corpus)
    assert not any(line.lstrip().startswith(">>>") for d in corpus for line in d.text.splitlines())
    assert all(sum(c.isalpha() for c in d.text) >= 0.55 * len(d.text) for d in corpus)
    assert not any("/tests/" in d.doc_id for d in corpus)
    assert len({d.text for d in corpus}) == len(corpus)  # duplicates kept once
    assert any(d.doc_id.endswith(":svd") for d in corpus)


def test_docstrings_walk_in_source_order():
    src = '"""Module doc."""\nclass A:\n    """A doc."""\n    def f(self):\n        """f doc."""\n'
    src += 'def g():\n    """g doc."""\n'
    found = list(_docstrings(ast.parse(src), "pkg:m.py"))
    assert found == [
        ("pkg:m.py", "Module doc."),
        ("pkg:m.py:A", "A doc."),
        ("pkg:m.py:A.f", "f doc."),
        ("pkg:m.py:g", "g doc."),
    ]


def test_embedded_spec_selects_sources():
    corpus = load_corpus("embedded:python-docs")
    assert corpus.name == "python-docs" and {d.source for d in corpus} == {"python-docs"}


def test_unknown_source():
    with pytest.raises(CorpusError, match="unknown corpus source"):
        default_corpus(("nonsense",))
    with pytest.raises(CorpusError, match="unknown corpus source"):
        load_corpus("embedded:numpy,nonsense")
    assert set(DEFAULT_SOURCES) <= set(SOURCES)


def test_user_file_folder_list_and_jsonl(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("First paragraph\nstill first.\n\n  \nSecond one.\n\n\nThird.")
    corpus = load_corpus(f)
    assert [d.text for d in corpus] == ["First paragraph\nstill first.", "Second one.", "Third."]
    assert corpus.provenance["kind"] == "file"

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("bee")
    (folder / "a.txt").write_text("ay")
    (folder / "sub" / "c.rst").write_text("sea")
    (folder / "skip.bin").write_text("binary")
    (folder / "rows.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + '{"text": "two"}\n')
    corpus = load_corpus(folder)
    assert [d.doc_id for d in corpus] == ["a.txt", "b.md", "rows.jsonl:rows.jsonl:0",
                                          "rows.jsonl:rows.jsonl:2", "sub/c.rst"]  # fmt: skip
    assert [d.text for d in corpus] == ["ay", "bee", "one", "two", "sea"]

    listed = load_corpus(["x y", "", "z"])
    assert [d.text for d in listed] == ["x y", "z"]
    assert load_corpus(listed) is listed


def test_empty_and_missing_inputs_give_one_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="no documents"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CorpusError, match="no documents"):
        load_corpus(tmp_path / "empty_dir")
    with pytest.raises(CorpusError, match="no documents"):
        load_corpus([])
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text key"}\n')
    with pytest.raises(CorpusError, match="'text'"):
        load_corpus(bad)
    with pytest.raises(CorpusError):
        Corpus("x", ())
    assert isinstance(CorpusError("x"), ValueError)


def test_dataset_name_without_datasets_package(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(CorpusError, match="`datasets` package"):
        load_corpus("Salesforce/wikitext:wikitext-103-raw-v1")


def test_dataset_rows_are_streamed(monkeypatch):
    import sys
    import types

    calls = {}

    def load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": "first"}, {"text": "  "}, {"text": "second"}, {"text": "third"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    corpus = load_corpus("org/data:cfg", split="validation", max_documents=2)
    assert calls == {"name": "org/data", "config": "cfg", "split": "validation", "streaming": True}
    assert [d.text for d in corpus] == ["first", "second"]
    assert corpus.provenance == {
        "kind": "huggingface",
        "dataset": "org/data:cfg",
        "split": "validation",
    }
    with pytest.raises(CorpusError, match="no column 'body'"):
        load_corpus("org/data", text_column="body")


def test_document_is_immutable():
    d = Document("id", "text", "src")
    with pytest.raises(AttributeError):
        d.text = "other"  # type: ignore[misc]


@pytest.mark.slow
def test_default_corpus_has_over_a_million_smollm2_tokens():
    from geomsae.models import load_model

    corpus = default_corpus()
    assert corpus.name == "default" and tuple(corpus.provenance["sources"]) == DEFAULT_SOURCES
    assert default_corpus() is corpus  # cached in the process
    tok = load_model().tokenizer
    texts = [d.text for d in corpus]
    n = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    assert n > 1_000_000  # measured 2.54M
