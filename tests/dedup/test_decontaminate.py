"""Decontamination: documents sharing a word 13-gram (character 13-gram in Chinese) with an eval set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.dedup.decontaminate import Decontaminate, gram_hashes, load_index, normalize, word_tokens
from lmforge.errors import ConfigError
from lmforge.flow import run_recipe
from lmforge.flow.recipe import load_recipe
from lmforge.pipeline import run_chain
from lmforge.records import Record

MITO = "Which of the following best describes the main function of the mitochondria in a eukaryotic cell?"
TRAIN = ("A train leaves the station at noon travelling at sixty miles per hour; "
         "how far has it gone by three o'clock?")
TRAIN_ANSWER = "It has travelled one hundred and eighty miles in three hours."  # 11 words: one whole n-gram
MMLU = [
    {"question": MITO, "answer": "It produces most of the chemical energy that powers the cell's reactions."},
    {"question": TRAIN, "answer": TRAIN_ANSWER},
    {"question": "What is the capital city of the French Republic, seat of its government?",
     "answer": "Paris"},
]
FOUR_INVENTIONS = "下列关于我国古代四大发明的说法中，哪一项是正确的？"
ECONOMY = "１９９８年，我国经济继续保持稳定增长，物价涨幅进一步回落。"
CEVAL = [FOUR_INVENTIONS, ECONOMY, "北京"]  # "北京": too short to use


@pytest.fixture
def evals(tmp_path: Path) -> Path:
    d = tmp_path / "evals"
    d.mkdir()
    (d / "mmlu.jsonl").write_text("".join(json.dumps(x) + "\n" for x in MMLU), encoding="utf-8")
    (d / "ceval.txt").write_text("\n".join(CEVAL) + "\n\n", encoding="utf-8")
    return d


def stage(evals: Path, **cfg) -> Decontaminate:
    return Decontaminate(eval_files=[str(evals / "mmlu.jsonl"), str(evals / "ceval.txt")],
                         text_field=["question", "answer"], **cfg)


def run(st: Decontaminate, texts: list[str]) -> tuple[list[Record], list[Record], dict]:
    dropped: list[Record] = []
    out, stats = run_chain([st], [Record(id=f"d{i}", text=t) for i, t in enumerate(texts)], dropped.append)
    kept = list(out)
    return kept, dropped, {"dropped": dict(stats[0].dropped), **stats[0].counters}


def ids(directory: Path, pattern: str) -> list[str]:
    return [row["id"] for p in sorted(directory.glob(pattern)) for row in pq.read_table(p).to_pylist()]


def words(text: str) -> list[str]:
    return text.rstrip("?.").replace(";", "").split()


def test_english_doc_with_a_benchmark_question_is_dropped(evals):
    doc = ("Study notes for biology class. WHICH of the following best describes the main function of the "
           "mitochondria, in a eukaryotic cell!! The answer is energy production.")
    clean = "Mitochondria produce most of the energy of a eukaryotic cell, which is why they are studied."
    kept, dropped, stats = run(stage(evals), [doc, clean])
    assert [r.id for r in kept] == ["d1"] and "decontaminate" not in kept[0].meta
    (bad,) = dropped
    assert bad.drop_reason == "contaminated" and bad.meta["drop_stage"] == "decontaminate"
    assert bad.meta["decontaminate"] == {"ngrams": 16 - 13 + 1, "eval_files": ["mmlu.jsonl"]}
    assert stats == {"dropped": {"contaminated": 1}, "contaminated_docs": 1, "matched_ngrams": 4,
                     "eval:mmlu.jsonl": 1}


def test_twelve_shared_words_are_not_enough_thirteen_are(evals):
    w = words(MITO)
    assert len(w) == 16
    texts = [
        "Notes: " + " ".join(w[:12]) + " -- we skip this topic today.",
        "Notes: " + " ".join(w[:13]) + " -- we skip this topic today.",
        "Quiz recap, " + " ".join(w[3:15]) + ", and so on.",
        "Quiz recap, " + " ".join(w[3:16]) + ", and so on.",
    ]
    kept, dropped, _ = run(stage(evals), texts)
    assert [r.id for r in kept] == ["d0", "d2"]
    assert [(r.id, r.meta["decontaminate"]["ngrams"]) for r in dropped] == [("d1", 1), ("d3", 1)]


def test_chinese_doc_sharing_a_character_13_gram(evals):
    texts = [
        "据统计，1998年我国经济继续保持稳定增长，但出口有所下降。",  # 17 characters in common
        "据统计，我国经济继续保持稳定增长，但出口有所下降。",  # 12: 我国经济继续保持稳定增长
        "据统计，年我国经济继续保持稳定增长，但出口有所下降。",  # 13
        "人民日报讯，新年伊始，各地群众以多种方式欢度元旦佳节。北京的天气很好。",
    ]
    kept, dropped, stats = run(stage(evals), texts)
    assert [r.id for r in kept] == ["d1", "d3"]
    assert [(r.id, r.meta["decontaminate"]) for r in dropped] == [
        ("d0", {"ngrams": 5, "eval_files": ["ceval.txt"]}),
        ("d2", {"ngrams": 1, "eval_files": ["ceval.txt"]}),
    ]
    assert stats["eval:ceval.txt"] == 2


def test_flag_keeps_the_document_and_records_the_match(evals):
    mixed = f"学习笔记：{FOUR_INVENTIONS} Also: {TRAIN}"
    kept, dropped, stats = run(stage(evals, action="flag"), [mixed, "Nothing to see here, a normal day."])
    assert dropped == [] and len(kept) == 2
    # 23 characters and 22 words ("o'clock" is two) in common; files listed in the order given
    assert kept[0].meta["decontaminate"] == {
        "contaminated": True,
        "ngrams": (23 - 13 + 1) + (22 - 13 + 1),
        "eval_files": ["mmlu.jsonl", "ceval.txt"],
    }
    assert "decontaminate" not in kept[1].meta
    assert stats == {"dropped": {}, "contaminated_docs": 1, "matched_ngrams": 21, "eval:ceval.txt": 1,
                     "eval:mmlu.jsonl": 1}


def test_short_items_count_whole_and_tiny_ones_are_skipped(evals):
    texts = [
        "Worked solution: it has travelled one hundred and eighty miles in three hours, as expected.",
        "Worked solution: it has travelled one hundred and eighty miles in three.",  # 10 of 11 words
        "Paris is lovely in spring, and 北京 is lovely in autumn.",  # items 'Paris' and '北京' are skipped
    ]
    kept, dropped, _ = run(stage(evals), texts)
    assert [r.id for r in dropped] == ["d0"] and dropped[0].meta["decontaminate"]["ngrams"] == 1
    assert [r.id for r in kept] == ["d1", "d2"]


def test_min_matches(evals):
    doc = f"Exam prep: {MITO} Think about it."  # 4 shared 13-grams
    assert len(run(stage(evals, min_matches=4), [doc])[1]) == 1
    assert len(run(stage(evals, min_matches=5), [doc])[0]) == 1


def test_eval_paths_resolve_from_the_current_directory(evals, monkeypatch):
    monkeypatch.chdir(evals.parent)
    st = Decontaminate(eval_files=["evals/*.txt"])
    assert st.config.eval_files == [os.path.join(os.getcwd(), "evals", "*.txt")]
    kept, dropped, _ = run(st, [ECONOMY, MITO])
    assert [r.id for r in dropped] == ["d0"] and [r.id for r in kept] == ["d1"]


def test_index_is_built_once_per_process_and_rebuilt_after_an_edit(evals):
    st = stage(evals)
    first = load_index(st.config)
    assert load_index(stage(evals).config) is first
    with (evals / "ceval.txt").open("a", encoding="utf-8") as fh:
        fh.write("酒店的位置不错，但是房间的隔音太差了，晚上睡不好觉。\n")
    assert load_index(st.config) is not first
    assert len(run(st, ["评论：酒店的位置不错，但是房间的隔音太差了。"])[1]) == 1


def test_hashes_are_stable_across_processes():
    # Pinned values: workers on other machines must compute the very same hashes.
    tokens = word_tokens(normalize("The QUICK, brown fox!"))
    assert [int(x) for x in gram_hashes(tokens, 3)] == [5722198350808150979, 15918603588070588652]


def test_config_errors_name_the_field(evals, tmp_path):
    with pytest.raises(ConfigError, match=r"decontaminate\.eval_files: no file matches 'missing/\*\.jsonl'"):
        Decontaminate(eval_files=["missing/*.jsonl"])
    with pytest.raises(ConfigError, match=r"decontaminate: give eval_files and/or eval_tasks"):
        Decontaminate(eval_files=[])
    with pytest.raises(ConfigError, match=r"eval_tasks \['zh_sentimen'\] are not built-in tasks; allowed: \["):
        Decontaminate(eval_tasks=["zh_sentimen"])
    with pytest.raises(ConfigError, match=r"decontaminate\.action"):
        Decontaminate(eval_files=[str(evals)], action="remove")
    with pytest.raises(ConfigError, match=r"decontaminate\.text_field: no usable eval item .*mmlu\.jsonl"):
        run(Decontaminate(eval_files=[str(evals / "mmlu.jsonl")]), ["some text"])  # the default field 'text'
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("input: {files: ['corpus/*.jsonl']}\npipeline:\n"
                      "  - lmforge.dedup.decontaminate:Decontaminate: {eval_files: [nowhere.jsonl]}\n")
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.lmforge\.dedup\.decontaminate:\w+\.eval_files"):
        load_recipe(recipe)


def test_recipe_run_drops_to_quarantine_and_counts(evals, tmp_path):
    (tmp_path / "corpus").mkdir()
    docs = [f"Exam prep: {MITO}", "A normal sentence about the weather in spring, nothing more.",
            "据统计，1998年我国经济继续保持稳定增长，但出口有所下降。", "这本书的内容很好，印刷清晰。"]
    (tmp_path / "corpus" / "docs.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                for i, t in enumerate(docs)),
        encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "input: {files: ['corpus/*.jsonl'], shard_size: 2}\nexecutor: {kind: local, workers: 1}\npipeline:\n"
        "  - lmforge.dedup.decontaminate:Decontaminate:\n"
        f"      {{eval_files: ['{evals}'], text_field: [question]}}\n")
    result = run_recipe(load_recipe(recipe), tmp_path / "run", base_dir=tmp_path)
    stage_dir = result.run_dir / "stages" / "01-decontaminate"
    assert ids(stage_dir, "shard-*.parquet") == ["d1", "d3"]
    assert ids(stage_dir, "quarantine-*.parquet") == ["d0", "d2"]
    (entry,) = [s for s in json.loads((result.run_dir / "stats.json").read_text())["stages"]
                if s["name"] == "decontaminate"]
    assert entry["dropped"] == {"contaminated": 2}
    assert entry["counters"] == {"contaminated_docs": 2, "eval:ceval.txt": 1, "eval:mmlu.jsonl": 1,
                                 "matched_ngrams": 4 + 5}
