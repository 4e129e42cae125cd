from collections import Counter

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.tasks.examples import (
    ClassificationExample,
    Example,
    InstructionExample,
    NerExample,
    TaskData,
    class_weights,
)
from lmforge.tasks.splits import dedupe_examples, make_task, split


def _examples(counts: dict[str, int]) -> list[Example]:
    return [ClassificationExample(text=f"{label} {i}", label=label) for label, n in counts.items() for i in range(n)]


# --------------------------------------------------------------------------- split, weights, dedupe


def test_split_is_deterministic_disjoint_and_complete():
    rows = _examples({"a": 50, "b": 30})
    parts = split(rows, 0.1, 0.2, seed=3, stratify_by="label")
    again = split(rows, 0.1, 0.2, seed=3, stratify_by="label")
    assert [[e.text for e in p] for p in parts] == [[e.text for e in p] for p in again]
    other = split(rows, 0.1, 0.2, seed=4, stratify_by="label")
    assert [e.text for e in parts[2]] != [e.text for e in other[2]]
    texts = [e.text for p in parts for e in p]
    assert sorted(texts) == sorted(e.text for e in rows)  # nothing lost, nothing twice
    assert [len(p) for p in parts] == [56, 8, 16]


def test_stratified_split_puts_every_class_with_three_examples_in_every_split():
    rows = _examples({"common": 200, "rare": 3, "tiny": 2, "one": 1})
    train, val, test = split(rows, 0.1, 0.1, seed=0, stratify_by="label")
    for part in (train, val, test):
        assert {"common", "rare"} <= {e.label for e in part}
    assert Counter(e.label for e in test)["common"] == 20
    # too few to share: kept for training rather than dropped
    assert Counter(e.label for e in train)["tiny"] == 2 and Counter(e.label for e in train)["one"] == 1
    # strata are mixed, not one class after the other
    train, _, _ = split(_examples({"a": 50, "b": 50}), seed=0, stratify_by="label")
    assert 0 < sum(e.label == "a" for e in train[:40]) < 40


def test_split_by_meta_key_and_fraction_errors():
    rows = [InstructionExample(prompt=f"p{i}", response="r", meta={"task": "xy"[i % 2]}) for i in range(40)]
    _, _, test = split(rows, 0.1, 0.1, seed=0, stratify_by="task")
    assert Counter(e.meta["task"] for e in test) == {"x": 2, "y": 2}
    with pytest.raises(ConfigError, match="val_frac \\+ test_frac must be below 1"):
        split(rows, 0.5, 0.5)
    with pytest.raises(ConfigError, match="test_frac must be at least 0"):
        split(rows, 0.1, -0.1)


def test_class_weights_are_inverse_frequency_with_mean_one():
    assert class_weights(["a"] * 6 + ["b"] * 2, ["a", "b"]) == pytest.approx([0.5, 1.5])
    w = class_weights(["a"] * 4, ["a", "b", "c"])  # unseen classes count as seen once
    assert sum(w) / 3 == pytest.approx(1) and w[1] == w[2] == pytest.approx(4 * w[0])
    with pytest.raises(InputError, match="'z'"):
        class_weights(["a", "z"], ["a", "b"])


def test_make_task_dedupes_drops_conflicts_and_keeps_given_splits():
    rows = _examples({"pos": 20, "neg": 20}) + [ClassificationExample(text="pos 1", label="pos"), ClassificationExample(text="pos 2", label="neg")]
    task = make_task("classification", rows, seed=1)
    texts = [e.text for e in task.train + task.val + task.test]
    assert len(texts) == len(set(texts)) == 39 and "pos 2" not in texts
    assert task.labels == ["neg", "pos"] and set(task.label_counts()["test"]) == {"neg", "pos"}
    given = [ClassificationExample(text=f"t{i}", label="x", meta={"split": ["train", "dev", "test"][i % 3]}) for i in range(9)]
    task = make_task("classification", given)
    assert [len(p) for p in task.splits().values()] == [3, 3, 3] and task.val[0].meta["split"] == "dev"
    ner = make_task("ner", [NerExample(tokens=["a", "b"], tags=["B-PER", "I-PER"])] * 3)
    assert ner.labels == ["O", "B-PER", "I-PER"] and len(ner.train) == 1
    with pytest.raises(InputError, match="occur in the data but not in labels"):
        make_task("classification", rows, labels=["pos"])
    with pytest.raises(ConfigError, match="kind must be one of"):
        make_task("regression", rows)


def test_dedupe_keeps_first_copy():
    rows = [InstructionExample(prompt="p", response="r", meta={"n": 1}), InstructionExample(prompt="p", response="r", meta={"n": 2})]
    assert [e.meta["n"] for e in dedupe_examples(rows, "instruction")] == [1]


def test_task_save_and_load_round_trip(tmp_path):
    task = make_task("classification", _examples({"是": 5, "否": 5}), meta={"source": "test"})
    again = TaskData.load(task.save(tmp_path / "task"))
    assert again == task
    with pytest.raises(InputError, match="no task.json"):
        TaskData.load(tmp_path)


