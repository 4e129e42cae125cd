"""`export_corpus` and `corpus_size`, what `lmforge corpora export | list` call."""

import pytest

from lmforge.collect.builtin import CORPORA, corpus_info, corpus_records, corpus_size, export_corpus
from lmforge.errors import UserError
from lmforge.records import read_jsonl, read_parquet


def test_export_corpus_by_suffix(tmp_path):
    assert export_corpus("reviews", tmp_path / "r.jsonl", limit=12) == 12
    assert [r.text for r in read_jsonl(tmp_path / "r.jsonl")] == [r.text for r in corpus_records("reviews", 12)]
    assert export_corpus("reviews", tmp_path / "r.PARQUET", limit=5) == 5
    assert len(list(read_parquet(tmp_path / "r.PARQUET"))) == 5
    with pytest.raises(UserError, match=r"--out must end in \.jsonl, \.jsonl\.gz or \.parquet \(got 'r\.csv'\)"):
        export_corpus("reviews", tmp_path / "r.csv")
    with pytest.raises(UserError, match="unknown corpus 'wiki'; allowed: " + ", ".join(CORPORA)):
        export_corpus("wiki", tmp_path / "w.jsonl")
    assert not (tmp_path / "w.jsonl").exists()


def test_corpus_size_counts_documents_and_characters():
    size = corpus_size("reviews")
    texts = [r.text for r in corpus_records("reviews")]
    assert (size.documents, size.characters) == (len(texts), sum(map(len, texts)))
    assert (size.name, size.lang, size.license) == tuple(corpus_info("reviews")[k] for k in ("name", "lang", "license"))
