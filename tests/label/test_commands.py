"""The `lmforge label` commands called as Python functions give what the command line gives."""

import json

import pytest

from lmforge.cli.main import main
from lmforge.errors import ConfigError, InputError
from lmforge.label.commands import (
    annotator_agreement,
    answer_log_path,
    export_labelstudio,
    import_labelstudio,
    label_issues,
    open_session,
    split_source,
    weak_label_source,
    write_answers,
)
from lmforge.label.labelstudio import write_tasks
from lmforge.label.store import AnswerStore
from lmforge.tasks.builtin import load_task
from lmforge.tasks.examples import TaskData


def _rows(tmp_path, n, with_labels=True, name="reviews.jsonl"):
    rows = load_task("zh_sentiment", max_per_class=n).train[:n]
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": e.text, **({"label": e.label} if with_labels else {})},
                                       ensure_ascii=False) + "\n" for i, e in enumerate(rows)), encoding="utf-8")
    return path, rows


def _splits(task: TaskData) -> dict[str, list[str]]:
    return {name: [e.text for e in part] for name, part in task.splits().items()}


def test_split_source_writes_what_the_command_writes(tmp_path, capsys):
    path, rows = _rows(tmp_path, 60)
    assert main(["label", "split", str(path), "--out", str(tmp_path / "cli"), "--folds", "3", "--seed", "1"]) == 0
    capsys.readouterr()
    result = split_source(str(path), tmp_path / "py", folds=3, seed=1)
    assert result.folds == 3 and result.info["leaking_pairs"] == 0
    assert result.info["sizes"] == {k: len(v) for k, v in result.task.splits().items()}
    assert sum(result.info["sizes"].values()) == len(rows)
    assert _splits(TaskData.load(tmp_path / "py")) == _splits(TaskData.load(tmp_path / "cli")) == _splits(result.task)
    for f in range(3):
        assert _splits(TaskData.load(tmp_path / "py" / f"fold-{f}")) == _splits(TaskData.load(tmp_path / "cli" / f"fold-{f}"))
    assert split_source(str(path), tmp_path / "nofolds").folds == 0 and not (tmp_path / "nofolds" / "fold-0").exists()


def test_write_answers_keeps_standing_answers_and_refuses_a_missing_log(tmp_path):
    store = AnswerStore(tmp_path / "log.jsonl")
    store.answer("a", "很好", label="pos")
    store.answer("b", "很差", label="neg")
    store.answer("c", "一般", label="neg")
    store.undo()
    assert write_answers(tmp_path / "log.jsonl", tmp_path / "lab.jsonl") == 2
    saved = [json.loads(line) for line in (tmp_path / "lab.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["label"]) for r in saved] == [("a", "pos"), ("b", "neg")]
    with pytest.raises(InputError, match="answer log not found"):
        write_answers(tmp_path / "missing.jsonl", tmp_path / "x.jsonl")


def test_label_studio_round_trip_and_agreement(tmp_path):
    path, rows = _rows(tmp_path, 20, with_labels=False)
    done = export_labelstudio(str(path), tmp_path / "tasks.json", ["neg", "pos"])
    assert done.tasks == 20 and done.config_path == tmp_path / "tasks.config.xml" and done.config_path.is_file()
    exported = json.loads(done.path.read_text(encoding="utf-8"))
    for i, (task, row) in enumerate(zip(exported, rows, strict=True)):
        other = row.label if i != 5 else ("pos" if row.label == "neg" else "neg")
        task["annotations"] = [{"completed_by": who, "result": [{"from_name": "label", "to_name": "text",
                                                                  "type": "choices", "value": {"choices": [lab]}}]}
                               for who, lab in ((1, row.label), (2, other))]
    write_tasks(exported, tmp_path / "export.json")
    result = import_labelstudio(tmp_path / "export.json", tmp_path / "ds")
    assert len(result.imported.tasks) == 20 and result.imported.counts["annotations"] == 40
    assert sum(result.info["sizes"].values()) == 20
    assert result.agreement is not None and result.agreement["disagreements"] == 1
    task = TaskData.load(tmp_path / "ds")
    assert {e.meta["id"]: e.label for e in task.train + task.val + task.test} == {f"r{i}": e.label
                                                                                 for i, e in enumerate(rows)}
    report = annotator_agreement(tmp_path / "export.json", top=5)
    assert report["pairwise"]["1 vs 2"]["agreement"] == pytest.approx(19 / 20)
    assert [d["item"] for d in report["disagreement_examples"]] == ["r5"]


def test_import_of_single_annotations_has_no_agreement(tmp_path):
    path, rows = _rows(tmp_path, 20)
    done = export_labelstudio(str(path), tmp_path / "tasks.json", with_annotations=True)
    assert done.tasks == len(rows)
    assert import_labelstudio(done.path, tmp_path / "ds").agreement is None


def test_weak_labels_match_the_command_and_the_gold_labels(tmp_path, capsys):
    path, rows = _rows(tmp_path, 200)
    assert main(["label", "weak", str(path), "--lfs", "zh_sentiment", "--out", str(tmp_path / "cli.jsonl")]) == 0
    capsys.readouterr()
    weak = weak_label_source(str(path), "zh_sentiment", out=tmp_path / "py.jsonl")
    assert weak.has_gold and weak.method == "label_model" and len(weak.items) == len(rows)
    written = (tmp_path / "py.jsonl").read_text(encoding="utf-8")
    assert written == (tmp_path / "cli.jsonl").read_text(encoding="utf-8")
    assert weak.written == len(written.splitlines()) > 0.4 * len(rows)
    gold = {f"r{i}": e.label for i, e in enumerate(rows)}
    assert weak.result.metrics["accuracy"] > 0.75
    assert all(json.loads(line)["label"] in gold.values() for line in written.splitlines())
    assert weak_label_source(str(path), "zh_sentiment", method="majority").written is None


def test_label_issues_finds_a_flipped_label(tmp_path):
    path, rows = _rows(tmp_path, 150)
    lines = path.read_text(encoding="utf-8").splitlines()
    flipped = {0, 1, 2}
    for i in flipped:
        row = json.loads(lines[i])
        row["label"] = "pos" if row["label"] == "neg" else "neg"
        lines[i] = json.dumps(row, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = label_issues(str(path), out=tmp_path / "issues.jsonl")
    assert len(found.examples) == len(rows)
    assert flipped & {s["index"] for s in found.suspects}
    saved = [json.loads(line) for line in (tmp_path / "issues.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["index"] for s in saved] == [s["index"] for s in found.suspects]
    assert saved[0]["text"] == found.examples[saved[0]["index"]].text


def test_open_session_takes_labels_from_predictions_and_logs_beside_the_data(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "text": "很好", "prediction": "pos"}\n{"id": "b", "text": "很差", "prediction": "neg"}\n',
                    encoding="utf-8")
    session = open_session(str(path), annotator="me")
    assert session.labels == ["neg", "pos"] and session.annotator == "me" and session.name == "items.jsonl"
    assert session.store.path == tmp_path / "items.answers.jsonl" == answer_log_path(str(path))
    assert answer_log_path("builtin:zh_sentiment").name == "label-zh_sentiment.answers.jsonl"
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"text": "很好"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="--labels is needed"):
        open_session(str(bare))
    assert open_session(str(bare), tmp_path / "log.jsonl", ["x", "y"]).store.path == tmp_path / "log.jsonl"
