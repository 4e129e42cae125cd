import json
import xml.etree.ElementTree as ET

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.label.labelstudio import (
    example_spans,
    export_tasks,
    import_annotations,
    label_config,
    to_tasks,
    write_tasks,
)
from lmforge.label.session import load_items
from lmforge.tasks.builtin import load_task
from lmforge.tasks.examples import ClassificationExample, NerExample
from lmforge.tasks.loaders import load_label_studio
from lmforge.tasks.spans import spans_to_bio


def _reviews(n=12):
    rows = load_task("zh_sentiment", max_per_class=12).train[:n]
    return [ClassificationExample(text=e.text, label=e.label, meta={"id": f"r{i}"}) for i, e in enumerate(rows)]


def _ner():
    texts = [("新华社记者在北京报道，江泽民主席会见了客人。", [(0, 3, "ORG"), (6, 8, "LOC"), (11, 14, "PER")]),
             ("Angela Merkel visited Paris 🇫🇷 and Berlin.", [(0, 13, "PER"), (22, 27, "LOC"), (35, 41, "LOC")]),
             ("𠮷野家在上海开了新店", [(0, 3, "ORG"), (4, 6, "LOC")]),  # a character beyond the BMP first
             ("没有实体的句子", [])]
    out = []
    for i, (text, spans) in enumerate(texts):
        tokens, tags, _ = spans_to_bio(text, spans)
        out.append(NerExample(text=text, tokens=tokens, tags=tags, meta={"id": f"s{i}"}))
    return out, [s for _, s in texts]


def test_label_config_matches_the_tasks():
    root = ET.fromstring(label_config("classification", ["neg", "pos"]))
    choices = root.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "text"
    assert [c.get("value") for c in choices] == ["neg", "pos"]
    assert root.find("Text").get("value") == "$text"
    root = ET.fromstring(label_config("ner", ["PER", "LOC", "A&B"]))
    assert [c.get("value") for c in root.find("Labels")] == ["PER", "LOC", "A&B"]  # escaped, still valid XML
    with pytest.raises(ConfigError, match="kind must be classification or ner"):
        label_config("instruction", ["x"])


def test_classification_round_trip_through_label_studio_json(tmp_path):
    rows = _reviews()
    path = write_tasks(to_tasks(rows, "classification", with_annotations=True), tmp_path / "export.json")
    back = import_annotations(path)
    assert back.kind == "classification"
    assert [(e.text, e.label, e.meta["id"]) for e in back.examples] == [(e.text, e.label, e.meta["id"]) for e in rows]
    # the loader `lmforge finetune` uses reads the same file to the same examples
    assert [(e.text, e.label) for e in load_label_studio(path)] == [(e.text, e.label) for e in rows]


def test_ner_round_trip_keeps_character_spans_including_beyond_the_bmp(tmp_path):
    rows, spans = _ner()
    tasks = to_tasks(rows, "ner", with_annotations=True)
    flag = tasks[1]["annotations"][0]["result"][2]["value"]
    assert (flag["start"], flag["end"], flag["text"]) == (37, 43, "Berlin")  # UTF-16 units: 🇫🇷 is 4, not 2
    path = write_tasks(tasks, tmp_path / "ner.json")
    back = import_annotations(path)
    assert back.kind == "ner"
    assert [example_spans(e) for e in back.examples] == spans
    assert [(e.tokens, e.tags) for e in back.examples] == [(e.tokens, e.tags) for e in rows]
    assert [(e.tokens, e.tags) for e in load_label_studio(path)] == [(e.tokens, e.tags) for e in rows]


def test_predictions_become_pre_annotations_that_the_web_app_reads_back(tmp_path):
    rows = _reviews(4)
    probs = [{"neg": 0.9, "pos": 0.1}, ("pos", 0.55), "neg", None]
    path = export_tasks(rows, "classification", tmp_path / "tasks.json", ["neg", "pos"], predictions=probs,
                        model_version="tfidf-lr")
    tasks = json.loads(path.read_text(encoding="utf-8"))
    first = tasks[0]["predictions"][0]
    assert first["model_version"] == "tfidf-lr" and first["score"] == 0.9
    assert first["result"][0]["value"] == {"choices": ["neg"]} and first["result"][0]["type"] == "choices"
    assert "score" not in tasks[2]["predictions"][0] and "predictions" not in tasks[3]
    assert all("annotations" not in t for t in tasks)
    assert ET.fromstring((tmp_path / "tasks.config.xml").read_text()).find("Choices") is not None
    items = load_items(path)
    assert [(it.id, it.prediction, it.score) for it in items] == [("r0", "neg", 0.9), ("r1", "pos", 0.55),
                                                                  ("r2", "neg", None), ("r3", None, None)]
    ner, _ = _ner()
    preds = [[(0, 3, "ORG", 0.8), (6, 8, "LOC", 0.6)], ner[1].tags, None, []]
    path = export_tasks(ner, "ner", tmp_path / "ner-tasks.json", ["PER", "LOC", "ORG"], predictions=preds)
    tasks = json.loads(path.read_text(encoding="utf-8"))
    assert tasks[0]["predictions"][0]["score"] == 0.6  # a sentence is as sure as its least sure span
    items = load_items(path, "ner")
    assert items[0].prediction == [[0, 3, "ORG"], [6, 8, "LOC"]]
    assert items[1].prediction == [[0, 13, "PER"], [22, 27, "LOC"], [35, 41, "LOC"]]
    with pytest.raises(InputError, match="3 predictions for 4 examples"):
        to_tasks(ner, "ner", predictions=preds[:3])


def test_several_annotators_are_kept_apart(tmp_path):
    rows = _reviews(3)
    tasks = to_tasks(rows, "classification")
    votes = [("pos", "pos", "neg"), ("neg", "neg", "neg"), ("pos", "neg", None)]
    for task, row in zip(tasks, votes, strict=True):
        task["annotations"] = [{"completed_by": {"id": k, "email": f"a{k}@x"}, "was_cancelled": v is None,
                                "result": [] if v is None else [{"from_name": "label", "to_name": "text",
                                                                 "type": "choices", "value": {"choices": [v]}}]}
                               for k, v in enumerate(row)]
    tasks[1]["annotations"][2]["ground_truth"] = True
    tasks.append({"data": {"text": "没人标注"}, "annotations": []})
    back = import_annotations(write_tasks(tasks, tmp_path / "multi.json"))
    assert back.ratings() == [{"a0@x": "pos", "a1@x": "pos", "a2@x": "neg"}, {"a0@x": "neg", "a1@x": "neg",
                                                                             "a2@x": "neg"},
                              {"a0@x": "pos", "a1@x": "neg"}]
    assert back.counts == {"tasks": 4, "annotations": 8, "cancelled": 1, "not_annotated": 1, "bad": 0}
    assert [e.label for e in back.examples] == ["pos", "neg", "pos"]  # ground truth, else the first
