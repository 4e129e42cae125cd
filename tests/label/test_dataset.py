import json
from collections import Counter

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.label.dataset import (
    build_dataset,
    check_leakage,
    duplicate_groups,
    duplicate_pairs,
    kfold,
    leakage_free_split,
    load_hf,
    load_source,
    save_dataset,
)
from lmforge.tasks.builtin import load_task
from lmforge.tasks.examples import ClassificationExample, Example, InstructionExample, TaskData
from lmforge.tasks.loaders import load_csv
from lmforge.tasks.spans import bio_to_spans, spans_to_bio
from lmforge.tasks.splits import split

ZH = "酒店的位置不错，但是房间的隔音太差了，晚上睡不好觉，早餐种类也很少。"
EN = "The global statement is a declaration which holds for the entire current code block of the program."


def test_duplicate_pairs_finds_exact_and_near_copies_in_both_languages():
    texts = [ZH, "  " + ZH.replace("，", ",").replace("。", "。 ") + "\n",  # equal after NFKC and whitespace folding
             ZH[:-1] + "!!",  # near: an edited ending
             EN, EN + " Really.",  # near: a word added
             "这本书的内容很好，印刷清晰，送货也很快。", "A function definition is an executable statement.",
             EN.replace("entire", "whole")]  # one word in 18 changed: Jaccard of word 3-grams 13/19, below 0.8
    pairs = {(p.a, p.b): p for p in duplicate_pairs(texts)}
    assert pairs[(0, 1)].kind == "exact" and pairs[(0, 1)].similarity == 1.0
    assert pairs[(0, 2)].kind == "near" and 0.6 < pairs[(0, 2)].similarity < 1.0
    assert pairs[(3, 4)].kind == "near"
    assert not any(k in key for k in (5, 6, 7) for key in pairs)  # unrelated or too different: not paired
    assert {(p.a, p.b) for p in duplicate_pairs(texts, None)} == {(0, 1)}  # exact only
    groups = duplicate_groups(texts)
    assert groups[0] == groups[1] == groups[2] == 0 and groups[3] == groups[4] == 3 and len(set(groups)) == 5


def _with_near_copies(n_groups: int = 60) -> list[Example]:
    """Reviews, each group with a near-copy (an exclamation added), labels alternating by group."""
    base = [e for e in load_task("zh_sentiment", max_per_class=2 * n_groups).train if len(e.text) >= 30][:n_groups]
    out = []
    for i, e in enumerate(base):
        out.append(ClassificationExample(text=e.text, label=e.label, meta={"group": i}))
        out.append(ClassificationExample(text=e.text + "！！", label=e.label, meta={"group": i}))
    return out


def test_leakage_free_split_keeps_near_copies_together_where_a_plain_split_leaks():
    rows = _with_near_copies()
    plain = split(rows, 0.2, 0.2, seed=0, stratify_by="label")
    leaks = check_leakage(dict(zip(("train", "val", "test"), plain, strict=True)))
    assert not leaks.ok and sum(leaks.counts().values()) == len(leaks.pairs) > 5
    parts = leakage_free_split(rows, 0.2, 0.2, seed=0)
    assert check_leakage(dict(zip(("train", "val", "test"), parts, strict=True))).ok
    for part in parts:
        assert all(c == 2 for c in Counter(e.meta["group"] for e in part).values())
    assert sorted(e.text for p in parts for e in p) == sorted(e.text for e in rows)
    assert [abs(len(p) - n) <= 4 for p, n in zip(parts, [72, 24, 24], strict=True)] == [True] * 3
    again = leakage_free_split(rows, 0.2, 0.2, seed=0)
    assert [[e.text for e in p] for p in parts] == [[e.text for e in p] for p in again]


def test_the_builtin_sentiment_splits_hold_near_duplicates_and_build_dataset_removes_them():
    task = load_task("zh_sentiment")
    report = check_leakage(task.splits())
    assert len(report.pairs) >= 5  # near-identical reviews across the built-in splits (exact ones are deduped)
    assert all(p["kind"] == "near" and p["split_a"] != p["split_b"] for p in report.pairs)
    rows, kind = load_source("builtin:zh_sentiment")
    rebuilt = build_dataset(rows, kind)
    assert rebuilt.meta["leakage"]["ok"] and rebuilt.meta["leakage"]["leaking_pairs"] == 0
    sizes = [len(p) for p in rebuilt.splits().values()]
    assert sum(sizes) == len(rows) and abs(sizes[2] - 0.1 * len(rows)) < 50
    counts = rebuilt.label_counts()
    assert abs(counts["test"]["pos"] / sizes[2] - counts["train"]["pos"] / sizes[0]) < 0.01  # stratified


def test_build_dataset_audits_given_splits_instead_of_redrawing_them(caplog):
    rows = [ClassificationExample(text=ZH, label="neg", meta={"split": "train"}), ClassificationExample(text=ZH + "！", label="neg",
                                                                            meta={"split": "test"}),
            ClassificationExample(text=EN, label="pos", meta={"split": "train"})]
    task = build_dataset(rows)
    assert [len(p) for p in task.splits().values()] == [2, 0, 1]
    assert task.meta["leakage"]["counts"] == {"train/test near": 1}
    assert "pairs of (near-)identical texts across the given splits" in caplog.text


def test_kfold_holds_each_example_out_once_stratified_with_groups_together():
    rows = _with_near_copies(50)
    folds = kfold(rows, k=5, seed=1)
    held = [e.text for _, h in folds for e in h]
    assert sorted(held) == sorted(e.text for e in rows)
    for train, heldout in folds:
        assert not {e.meta["group"] for e in train} & {e.meta["group"] for e in heldout}
        assert len(train) + len(heldout) == len(rows) and 16 <= len(heldout) <= 24
        share = sum(e.label == "pos" for e in heldout) / len(heldout)
        assert abs(share - 0.5) <= 0.15
    assert [[e.text for e in h] for _, h in folds] == [[e.text for e in h] for _, h in kfold(rows, k=5, seed=1)]
    with pytest.raises(ConfigError, match="k must be an integer of at least 2"):
        kfold(rows, k=1)
    with pytest.raises(InputError, match="3 distinct texts cannot make 5 folds"):
        kfold(rows[:6], k=5)


def test_bio_to_spans_inverts_spans_to_bio():
    text = "Angela Merkel 访问了北京和上海 in 2019."
    spans = [(0, 13, "PER"), (17, 19, "LOC"), (20, 22, "LOC")]
    tokens, tags, _ = spans_to_bio(text, spans)
    assert bio_to_spans(text, tokens, tags) == spans
    chars = list("新华社记者")
    assert bio_to_spans("新华社记者", chars, ["B-ORG", "I-ORG", "I-ORG", "O", "O"]) == [(0, 3, "ORG")]
    # an I- that does not continue its type starts an entity, as repair_bio reads it
    assert bio_to_spans("ab", ["a", "b"], ["I-PER", "I-LOC"]) == [(0, 1, "PER"), (1, 2, "LOC")]
    with pytest.raises(InputError, match="token 'x' is not in the text"):
        bio_to_spans("abc", ["a", "x"], ["O", "O"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "hf"])
def test_save_and_read_back_in_every_format(tmp_path, fmt):
    cls = build_dataset(_with_near_copies(20), seed=3)
    ner_rows = load_task("zh_ner", max_sentences=40)
    ner = build_dataset(ner_rows.train + ner_rows.val + ner_rows.test, "ner")
    for task in (cls, ner):
        out = save_dataset(task, tmp_path / f"{task.kind}-{fmt}", fmt)
        if fmt == "jsonl":
            back = TaskData.load(out)
        elif fmt == "hf":
            back = load_hf(out)
            import datasets

            dd = datasets.load_from_disk(str(out))
            assert set(dd) == {"train", "validation", "test"}
            feature = dd["train"].features["label" if task.kind == "classification" else "tags"]
            assert (getattr(feature, "feature", feature)).names == task.labels
        else:
            back = TaskData(task.kind, *(load_csv(out / f"{n}.csv", task.kind) for n in ("train", "val", "test")),
                            labels=json.loads((out / "task.json").read_text())["labels"])
        assert back.labels == task.labels
        for name, rows in task.splits().items():
            got = back.splits()[name]
            if task.kind == "classification":
                assert [(e.text, e.label) for e in got] == [(e.text, e.label) for e in rows]
            else:
                assert [(e.tokens, e.tags) for e in got] == [(e.tokens, e.tags) for e in rows]
    with pytest.raises(ConfigError, match="format must be one of jsonl, csv, hf"):
        save_dataset(cls, tmp_path / "x", "parquet")


def test_instruction_pairs_are_grouped_by_prompt():
    rows = [InstructionExample(prompt=f"给这条评论判断情感：{t}", response=r) for t, r in
            [(ZH, "负面"), (ZH + "！", "负面"), ("这本书的内容很好，印刷清晰，送货也很快，值得推荐给大家。", "正面")]]
    rows += [InstructionExample(prompt=f"Summarize what `f{i}` does:", response=f"It returns {i} and nothing else at all.")
             for i in range(30)]
    task = build_dataset(rows, "instruction", val_frac=0.2, test_frac=0.2)
    assert task.labels == [] and task.meta["leakage"]["ok"]
    where = {e.prompt: name for name, part in task.splits().items() for e in part}
    assert where[rows[0].prompt] == where[rows[1].prompt]  # near-identical prompts share a split
