import itertools

from lmforge.cli.main import main
from lmforge.collect.builtin import BuiltinConfig, builtin_records, corpus_records
from lmforge.records import read_jsonl, read_parquet


def test_corpora_are_real_text_with_provenance():
    pd = list(itertools.islice(corpus_records("peoples_daily"), 50))
    assert pd[0].text.startswith("迈向充满希望的新世纪")
    tags = pd[1].meta["peoples_daily"]["pos_tags"]
    assert "".join(w for w, _ in tags) == pd[1].text  # tags align with the running text
    assert ["江", "nr"] in tags and ["新华社", "nt"] in tags
    reviews = list(itertools.islice(corpus_records("reviews"), 10))
    assert [r.meta["reviews"]["label"] for r in reviews[:4]] == ["pos", "neg", "pos", "neg"]
    en = list(itertools.islice(corpus_records("python_docstrings"), 20))
    assert all(r.lang == "en" and len(r.text) >= 200 and "PSF" in r.provenance["license"] for r in en)
    assert all(r.lang == "zh" for r in pd + reviews)


def test_order_and_ids_are_reproducible():
    cfg = BuiltinConfig(max_docs_per_corpus=30)
    a = [(r.id, r.text) for r in builtin_records(cfg)]
    assert a == [(r.id, r.text) for r in builtin_records(cfg)]
    assert len(a) == 120 and len({i for i, _ in a}) == 120


def test_corpora_cli_list_and_export(tmp_path, capsys):
    assert main(["corpora", "list"]) == 0
    listing = capsys.readouterr().out
    assert "peoples_daily" in listing and "14,400" in listing and "MIT" in listing
    assert main(["corpora", "export", "reviews", "--out", str(tmp_path / "r.jsonl.gz"), "--limit", "25"]) == 0
    assert len(list(read_jsonl(tmp_path / "r.jsonl.gz"))) == 25
    assert main(["corpora", "export", "peoples_daily", "--out", str(tmp_path / "p.parquet"), "--limit", "7"]) == 0
    assert [r.text for r in read_parquet(tmp_path / "p.parquet")] == [r.text for r in corpus_records("peoples_daily", 7)]
    assert main(["corpora", "export", "wikipedia", "--out", str(tmp_path / "x.jsonl")]) == 2


def test_several_sources_are_read_one_after_the_other(tmp_path):
    from lmforge.pipeline.input import InputConfig, iter_input

    (tmp_path / "notes.txt").write_text("一个本地文件里的文字。", encoding="utf-8")
    cfg = InputConfig.model_validate({"builtin": {"corpora": ["reviews"], "max_docs_per_corpus": 3},
                                      "files": {"paths": ["notes.txt"]}})
    records = list(iter_input(cfg, tmp_path, tmp_path / "work"))
    assert [r.source for r in records][:3] == ["builtin:reviews"] * 3
    assert records[3].text == "一个本地文件里的文字。" and len(records) == 4
