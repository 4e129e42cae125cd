import json

from lmforge.cli.main import main
from lmforge.label.guard import LabelServerConfig
from lmforge.label.labelstudio import write_tasks
from lmforge.label.session import MAX_COMMENT_CHARS
from lmforge.label.store import AnswerStore
from lmforge.tasks.builtin import load_task
from lmforge.tasks.examples import TaskData


def _reviews_file(tmp_path, n=60, with_labels=True):
    rows = load_task("zh_sentiment", max_per_class=n).train[:n]
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": e.text, **({"label": e.label} if with_labels else {})},
                                       ensure_ascii=False) + "\n" for i, e in enumerate(rows)), encoding="utf-8")
    return path, rows


def test_help_lists_the_commands_with_examples(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # help is laid out for a window (typer's own console): give it a wide one
    assert main(["label", "--help"]) == 0
    text = capsys.readouterr().out
    for command in ("serve", "answers", "split", "export-ls", "import-ls", "weak", "agreement", "issues"):
        assert command in text
    assert "lmforge label serve reviews.jsonl --labels neg,pos" in text
    assert main(["label", "serve", "--help"]) == 0
    text = capsys.readouterr().out
    assert "127.0.0.1" in text and "--allow-host" in text
    assert f"default: {LabelServerConfig().max_body_bytes}" in text and f"default: {MAX_COMMENT_CHARS}" in text


def test_split_with_folds(tmp_path, capsys):
    path, rows = _reviews_file(tmp_path)
    assert main(["label", "split", str(path), "--out", str(tmp_path / "ds"), "--folds", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "leaking pairs across splits: 0" in printed and "3 folds" in printed
    task = TaskData.load(tmp_path / "ds")
    assert sum(len(p) for p in task.splits().values()) == len(rows) and task.labels == ["neg", "pos"]
    held = [e.text for f in range(3) for e in TaskData.load(tmp_path / "ds" / f"fold-{f}").val]
    assert sorted(held) == sorted(e.text for e in task.train + task.val)


def test_export_then_import_label_studio(tmp_path, capsys):
    path, rows = _reviews_file(tmp_path, 20, with_labels=False)
    tasks = tmp_path / "tasks.json"
    assert main(["label", "export-ls", str(path), "--out", str(tasks), "--labels", "neg,pos"]) == 0
    assert (tmp_path / "tasks.config.xml").is_file() and "20 tasks" in capsys.readouterr().out
    exported = json.loads(tasks.read_text(encoding="utf-8"))
    assert [t["data"]["lmforge_id"] for t in exported] == [f"r{i}" for i in range(20)]
    # two annotators complete the tasks in Label Studio; they disagree on two
    for i, (task, row) in enumerate(zip(exported, rows, strict=True)):
        other = row.label if i not in (3, 7) else ("pos" if row.label == "neg" else "neg")
        task["annotations"] = [{"completed_by": who, "result": [{"from_name": "label", "to_name": "text",
                                                                  "type": "choices", "value": {"choices": [lab]}}]}
                               for who, lab in ((1, row.label), (2, other))]
    write_tasks(exported, tmp_path / "export.json")
    assert main(["label", "import-ls", str(tmp_path / "export.json"), "--out", str(tmp_path / "ds")]) == 0
    printed = capsys.readouterr().out
    assert "20 annotated tasks (40 annotations)" in printed and "2 tasks with disagreements" in printed
    task = TaskData.load(tmp_path / "ds")
    got = {e.meta["id"]: e.label for e in task.train + task.val + task.test}
    assert got == {f"r{i}": e.label for i, e in enumerate(rows)}
    assert main(["label", "agreement", str(tmp_path / "export.json")]) == 0
    printed = capsys.readouterr().out
    assert "1 vs 2" in printed and "0.900" in printed and "Fleiss' kappa" in printed
    assert printed.count("→") == 2


def test_weak_labels_builtin_reviews_and_writes_them(tmp_path, capsys, monkeypatch):
    from lmforge.cli.console import out as stdout

    monkeypatch.setattr(stdout, "_width", 160)  # a wide terminal (restored to "ask the terminal" afterwards)
    path, rows = _reviews_file(tmp_path, 200)
    out = tmp_path / "weak.jsonl"
    assert main(["label", "weak", str(path), "--lfs", "zh_sentiment", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "praise_lexicon" in printed and "learned accuracy" in printed and "accuracy on covered texts" in printed
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    gold = {f"r{i}": e.label for i, e in enumerate(rows)}
    assert len(written) > 0.4 * len(rows)
    assert sum(w["label"] == gold[w["id"]] for w in written) / len(written) > 0.75


def test_answers_and_issues(tmp_path, capsys):
    store = AnswerStore(tmp_path / "log.jsonl")
    store.answer("a", "很好", label="pos")
    store.answer("b", "很差", label="neg")
    store.undo()
    assert main(["label", "answers", str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "lab.jsonl")]) == 0
    saved = [json.loads(line) for line in (tmp_path / "lab.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["text"], r["label"]) for r in saved] == [("a", "很好", "pos")]
    path, rows = _reviews_file(tmp_path, 150)
    lines = path.read_text(encoding="utf-8").splitlines()
    wrong = json.loads(lines[0])
    wrong["label"] = "pos" if wrong["label"] == "neg" else "neg"
    path.write_text("\n".join([json.dumps(wrong, ensure_ascii=False)] + lines[1:]) + "\n", encoding="utf-8")
    assert main(["label", "issues", str(path), "--out", str(tmp_path / "issues.jsonl")]) == 0
    assert "labels look wrong" in capsys.readouterr().out
    assert (tmp_path / "issues.jsonl").is_file()
    assert main(["label", "answers", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.jsonl")]) == 2


def test_split_reads_labels_from_lmforge_records(tmp_path, capsys):
    from lmforge.records import Record, write_parquet

    rows = load_task("zh_sentiment", max_per_class=30).train
    stage = tmp_path / "run" / "stages" / "01-clean"
    stage.mkdir(parents=True)
    write_parquet(stage / "shard-00000.parquet", [Record(id=f"d{i}", text=e.text, meta={"reviews": {"label": e.label}})
                                                  for i, e in enumerate(rows)])
    (stage / "shard-00000.done").write_text("")
    assert main(["label", "split", str(tmp_path / "run"), "--label-field", "reviews.label", "--out",
                 str(tmp_path / "ds"), "--format", "csv"]) == 0
    assert "leaking pairs across splits: 0" in capsys.readouterr().out
    written = sum(len((tmp_path / "ds" / f"{n}.csv").read_text(encoding="utf-8").splitlines()) - 1
                  for n in ("train", "val", "test"))
    assert written == len(rows)
