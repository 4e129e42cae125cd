"""Classification metrics: accuracy, precision/recall/F1 (micro, macro, weighted, per class), confusion matrix.

Pure Python over lists so that evaluating a classifier needs neither scikit-learn nor numpy,
yet every number equals scikit-learn's with `zero_division=0` (the tests check this): a class
with no predictions has precision 0.0, one with no examples has recall 0.0, and F1 is 0.0 when
both are. Labels may be any hashable values (class names, ints); their order, unless `labels`
is given, is the sorted union of the true and predicted labels, as in scikit-learn.

`labels` also selects: a label outside it still counts towards `accuracy` but is left out of
the per-class scores, their averages and the confusion matrix. That is scikit-learn's meaning
too, and the usual way to score, say, every class except a majority "other" class.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from lmforge.errors import ConfigError, InputError

AVERAGES = ("micro", "macro", "weighted")


def _pairs(y_true: Iterable[Any], y_pred: Iterable[Any]) -> tuple[list[Any], list[Any]]:
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        raise InputError("y_true is empty: classification metrics need at least one labelled example")
    if len(y_true) != len(y_pred):
        raise InputError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}; they must pair up one to one")
    return y_true, y_pred


def _plain(label: Any) -> Any:
    """numpy scalars as Python values, so reports serialise to JSON and print without `np.int64(…)`."""
    return label.item() if hasattr(label, "item") and not isinstance(label, str | bytes) else label


def _label_order(y_true: list[Any], y_pred: list[Any], labels: Sequence[Any] | None) -> list[Any]:
    if labels is not None:
        order = [_plain(x) for x in labels]
        if not order:
            raise ConfigError("labels is empty: pass None (every label seen) or at least one label")
        try:
            distinct = len(set(order))
        except TypeError:
            raise ConfigError("labels must be hashable values such as str or int") from None
        if distinct != len(order):
            raise ConfigError(f"labels has duplicates: {order}")
        return order
    try:
        seen = set(y_true) | set(y_pred)
    except TypeError:
        raise InputError(
            "labels must be hashable values such as str or int (multi-label lists are not supported)"
        ) from None
    try:
        return [_plain(x) for x in sorted(seen)]
    except TypeError:
        raise InputError(
            "y_true and y_pred mix label types that cannot be sorted (e.g. int and str); pass labels= to set the order"
        ) from None


def _counts(y_true: list[Any], y_pred: list[Any], order: list[Any]) -> dict[str, Any]:
    """One pass over the pairs: per-label true positives, predictions and examples, and the matrix."""
    index = {label: i for i, label in enumerate(order)}
    k = len(order)
    tp, predicted, actual = [0] * k, [0] * k, [0] * k
    matrix = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        try:
            ti, pi = index.get(t), index.get(p)
        except TypeError:
            raise InputError(f"label {t!r} or {p!r} is not hashable; labels must be values such as str or int") from None
        if ti is not None:
            actual[ti] += 1
        if pi is not None:
            predicted[pi] += 1
        if ti is not None and pi is not None:
            matrix[ti][pi] += 1
            if ti == pi:
                tp[ti] += 1
    return {"tp": tp, "predicted": predicted, "actual": actual, "matrix": matrix}


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def prf(tp: int, predicted: int, actual: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; F1 = 2tp / (predicted + actual), the same value as 2PR / (P + R)."""
    return {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, actual),
        "f1": _ratio(2 * tp, predicted + actual),
    }


def averages(per_class: list[dict[str, float]], supports: list[int], micro: dict[str, float]) -> dict[str, dict]:
    """Micro (given), macro (unweighted mean over classes) and support-weighted means of P, R and F1.

    Macro F1 is the mean of the per-class F1s, not the F1 of the mean P and R: that is what
    scikit-learn and seqeval report. With no support at all the weighted mean is 0.0.
    """
    total = sum(supports)
    out: dict[str, dict] = {"micro": micro, "macro": {}, "weighted": {}}
    for key in ("precision", "recall", "f1"):
        values = [row[key] for row in per_class]
        out["macro"][key] = _ratio(sum(values), len(values))
        out["weighted"][key] = _ratio(sum(v * s for v, s in zip(values, supports, strict=True)), total)
    return out


def accuracy(y_true: Iterable[Any], y_pred: Iterable[Any]) -> float:
    """Fraction of examples whose predicted label equals the true label."""
    y_true, y_pred = _pairs(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def confusion_matrix(
    y_true: Iterable[Any], y_pred: Iterable[Any], labels: Sequence[Hashable] | None = None
) -> list[list[int]]:
    """Counts with true labels as rows and predicted labels as columns, both in label order.

    The order is `labels` if given, else the sorted union of labels seen (as scikit-learn).
    """
    y_true, y_pred = _pairs(y_true, y_pred)
    return _counts(y_true, y_pred, _label_order(y_true, y_pred, labels))["matrix"]


def f1(
    y_true: Iterable[Any],
    y_pred: Iterable[Any],
    average: str | None = "macro",
    labels: Sequence[Hashable] | None = None,
) -> float | dict[Any, float]:
    """F1 averaged as asked ("micro", "macro", "weighted"), or per label as a dict when `average` is None."""
    if average is not None and average not in AVERAGES:
        raise ConfigError(f"average must be one of 'micro', 'macro', 'weighted' or None (got {average!r})")
    report = classification_report(y_true, y_pred, labels=labels)
    if average is None:
        return {label: row["f1"] for label, row in report["per_class"].items()}
    return report[average]["f1"]


def classification_report(
    y_true: Iterable[Any], y_pred: Iterable[Any], labels: Sequence[Hashable] | None = None
) -> dict[str, Any]:
    """Everything about a single-label classifier in one JSON-ready dict.

    Keys: `accuracy`; `micro`, `macro`, `weighted` (each {precision, recall, f1});
    `per_class` ({label: {precision, recall, f1, support}} in label order); `labels`;
    `confusion_matrix` (rows true, columns predicted); `support` (number of examples).
    """
    y_true, y_pred = _pairs(y_true, y_pred)
    order = _label_order(y_true, y_pred, labels)
    c = _counts(y_true, y_pred, order)
    per_class = [prf(t, p, a) for t, p, a in zip(c["tp"], c["predicted"], c["actual"], strict=True)]
    micro = prf(sum(c["tp"]), sum(c["predicted"]), sum(c["actual"]))
    report: dict[str, Any] = {"accuracy": sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)}
    report.update(averages(per_class, c["actual"], micro))
    report["per_class"] = {
        label: {**row, "support": support} for label, row, support in zip(order, per_class, c["actual"], strict=True)
    }
    report["labels"] = order
    report["confusion_matrix"] = c["matrix"]
    report["support"] = len(y_true)
    return report
