"""Classification metrics: hand-computed cases, then equality with scikit-learn on random labels."""

from __future__ import annotations

import random

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.evaluate import accuracy, classification_report, confusion_matrix, f1

TRUE = ["cat", "cat", "dog", "dog", "dog", "bird"]
PRED = ["cat", "dog", "dog", "dog", "cat", "cat"]


def test_hand_computed_report():
    r = classification_report(TRUE, PRED)
    assert r["labels"] == ["bird", "cat", "dog"]  # sorted union
    # rows true, columns predicted: bird->cat once; cat->cat, cat->dog; dog->dog twice, dog->cat once
    assert r["confusion_matrix"] == [[0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert r["accuracy"] == pytest.approx(3 / 6)  # cat/cat, dog/dog, dog/dog
    bird, cat, dog = (r["per_class"][k] for k in ("bird", "cat", "dog"))
    # bird: never predicted -> precision 0 (zero division), recall 0/1
    assert bird == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # cat: tp 1, predicted 3, actual 2 -> P 1/3, R 1/2, F1 2*1/(3+2) = 0.4
    assert cat["precision"] == pytest.approx(1 / 3) and cat["recall"] == pytest.approx(1 / 2)
    assert cat["f1"] == pytest.approx(0.4)
    # dog: tp 2, predicted 3, actual 3 -> P = R = F1 = 2/3
    assert dog["f1"] == pytest.approx(2 / 3) and dog["support"] == 3
    assert r["macro"]["f1"] == pytest.approx((0 + 0.4 + 2 / 3) / 3)
    assert r["weighted"]["f1"] == pytest.approx((0 * 1 + 0.4 * 2 + 2 / 3 * 3) / 6)
    # micro over all labels: tp 3 of 6 predictions and 6 examples = accuracy
    assert r["micro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert r["support"] == 6
    assert all(type(v) is float for v in (r["accuracy"], r["macro"]["f1"], cat["precision"]))


def test_shortcuts_and_label_order():
    assert accuracy(TRUE, PRED) == pytest.approx(0.5)
    assert f1(TRUE, PRED, average="micro") == pytest.approx(0.5)
    assert f1(TRUE, PRED, average=None) == pytest.approx({"bird": 0.0, "cat": 0.4, "dog": 2 / 3})
    # an explicit order, with a label nobody used: an all-zero row and column, and F1 0 in the macro mean
    m = confusion_matrix(TRUE, PRED, labels=["dog", "cat", "bird", "fish"])
    assert m == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert f1(TRUE, PRED, labels=["dog", "cat", "bird", "fish"]) == pytest.approx((2 / 3 + 0.4) / 4)


def test_labels_subset_excludes_from_averages_but_not_accuracy():
    r = classification_report(TRUE, PRED, labels=["cat", "dog"])
    assert r["accuracy"] == pytest.approx(0.5)
    # micro over cat and dog only: tp 1 + 2 = 3, predictions 3 + 3 = 6 -> P 0.5; examples 2 + 3 = 5 -> R 0.6
    assert r["micro"]["precision"] == pytest.approx(0.5) and r["micro"]["recall"] == pytest.approx(0.6)
    assert r["confusion_matrix"] == [[1, 1], [1, 2]]  # the bird example is left out


def _sklearn_check(y_true, y_pred, labels=None):
    skm = pytest.importorskip("sklearn.metrics")
    r = classification_report(y_true, y_pred, labels=labels)
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    sk_labels = r["labels"]
    assert r["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=sk_labels).tolist()
    for average in ("micro", "macro", "weighted"):
        p, rc, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=sk_labels, average=average, zero_division=0
        )
        assert [r[average]["precision"], r[average]["recall"], r[average]["f1"]] == pytest.approx(
            [p, rc, f], abs=1e-12
        ), average
    p, rc, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=sk_labels, zero_division=0)
    for i, label in enumerate(sk_labels):
        row = r["per_class"][label]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx([p[i], rc[i], f[i]], abs=1e-12)
        assert row["support"] == s[i]


@pytest.mark.parametrize("seed", range(12))
def test_equals_sklearn_on_random_labels(seed):
    rng = random.Random(seed)
    classes = rng.choice([[0, 1], [0, 1, 2, 3, 4], ["正面", "负面", "中性"], list("abcdefg")])
    n = rng.randint(1, 60)
    y_true = [rng.choice(classes) for _ in range(n)]
    # biased predictions so that some classes are never predicted (zero division paths)
    y_pred = [t if rng.random() < 0.5 else rng.choice(classes[: max(1, len(classes) // 2)]) for t in y_true]
    _sklearn_check(y_true, y_pred)
    # a subset of labels plus one that never occurs
    subset = rng.sample(classes, max(1, len(classes) - 1)) + (["zzz"] if isinstance(classes[0], str) else [99])
    _sklearn_check(y_true, y_pred, labels=subset)


def test_numpy_labels_come_back_as_python_values():
    np = pytest.importorskip("numpy")
    r = classification_report(np.array([1, 2, 2]), np.array([1, 2, 1]))
    assert r["labels"] == [1, 2] and all(type(x) is int for x in r["labels"])


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: accuracy([], []), InputError, "y_true is empty"),
        (lambda: classification_report([], []), InputError, "y_true is empty"),
        (lambda: f1([1, 2], [1]), InputError, "2 labels but y_pred has 1"),
        (lambda: f1([1], [1], average="samples"), ConfigError, "average must be one of"),
        (lambda: classification_report([1, "a"], [1, "a"]), InputError, "labels="),
        (lambda: classification_report([[1], [2]], [[1], [2]]), InputError, "hashable"),
        (lambda: confusion_matrix([1], [1], labels=[1, 1]), ConfigError, "duplicates"),
    ],
)
def test_errors_are_one_clear_line(call, error, words):
    with pytest.raises(error, match=words) as info:
        call()
    assert "\n" not in str(info.value)
