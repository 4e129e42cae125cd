"""Deterministic, stratified train/val/test splits, deduplication, and `make_task`.

Splits are made here, once, from a seed, and stratified by label so that a rare class is in the
validation and test sets too (every class with at least 3 examples is in every split). The same
examples and seed always give the same splits, so a score can be reproduced a year later.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from lmforge.errors import ConfigError, InputError
from lmforge.tasks.examples import EXAMPLE_TYPES, TASK_KINDS, Example, TaskData, TaskKind, targets
from lmforge.tasks.spans import bio_labels, entity_types

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def split(examples: Iterable[Example], val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0,
          stratify_by: str | Callable[[Example], Hashable] | None = None
          ) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, val, test), the same for the same examples, fractions and seed.

    `stratify_by` is "label", a key of `meta` (e.g. "task"), a function of an example, or None.
    Each stratum is split on its own, and one with at least 3 examples gives at least one to
    each split whose fraction is above zero, so no class is missing from validation or test.
    """
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0 <= frac < 1:
            raise ConfigError(f"{name} must be at least 0 and below 1 (got {frac!r})")
    if val_frac + test_frac >= 1:
        raise ConfigError(f"val_frac + test_frac must be below 1 to leave training data (got {val_frac + test_frac:g})")
    key = stratum(stratify_by)
    groups: dict[Hashable, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[key(ex)].append(ex)
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    test: list[Example] = []
    for k in sorted(groups, key=repr):
        rows = list(groups[k])
        rng.shuffle(rows)
        n_test, n_val = _sizes(len(rows), val_frac, test_frac)
        test += rows[:n_test]
        val += rows[n_test:n_test + n_val]
        train += rows[n_test + n_val:]
    for part in (train, val, test):
        rng.shuffle(part)  # mix the strata: the trainer should not see one class after another
    return train, val, test


def stratum(by: str | Callable[[Example], Hashable] | None) -> Callable[[Example], Hashable]:
    """The key an example is stratified by: None, its label ("label"), a meta key, or a function."""
    if by is None:
        return lambda ex: None
    if callable(by):
        return by
    if by == "label":
        return lambda ex: getattr(ex, "label", None)
    return lambda ex: ex.meta.get(by)


def _sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    n_test, n_val = int(n * test_frac + 0.5), int(n * val_frac + 0.5)
    if n >= 3:
        n_test, n_val = max(n_test, int(test_frac > 0)), max(n_val, int(val_frac > 0))
    while n_test + n_val >= n and n_test + n_val > 0:  # keep at least one example for training
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def dedupe_examples(examples: Iterable[Example], kind: str | None = None) -> list[Example]:
    """First copy of each input; an input seen with different labels is dropped in all its copies.

    Removing duplicates before splitting is what keeps a test example out of training, and an
    input labelled two ways is noise that no split makes right. (`kind` is accepted for callers
    that name it; each example knows its own identity.)
    """
    first: dict[Any, Example] = {}
    conflicting: set[Any] = set()
    total = 0
    for total, ex in enumerate(examples, start=1):  # noqa: B007 - total is the count afterwards
        key, target = ex.identity()
        if key not in first:
            first[key] = ex
        elif first[key].identity()[1] != target:
            conflicting.add(key)
    kept = [ex for key, ex in first.items() if key not in conflicting]
    if len(kept) < total:
        log.info("dedupe: kept %d of %d examples (%d repeats; %d inputs with conflicting labels dropped)",
                 len(kept), total, total - len(first), len(conflicting))
    return kept


def _check_types(kind: str, rows: Sequence[Example]) -> None:
    wanted = EXAMPLE_TYPES[kind]
    wrong = next((e for e in rows if not isinstance(e, wanted)), None)
    if wrong is not None:
        raise InputError(f"a {kind} task holds {wanted.__name__}s, not {type(wrong).__name__}")


def task_labels(kind: str, rows: Sequence[Example], labels: Sequence[str] | None) -> list[str]:
    """The label set: `labels` when given (checked to cover the data), else the sorted classes,
    or for NER "O" then B-/I- of each entity type in sorted order; empty for the generative kinds."""
    if kind not in ("classification", "ner"):
        found: list[str] = []
    elif kind == "ner":
        found = bio_labels(entity_types(targets(rows)))
    else:
        found = sorted(set(targets(rows)))
    if labels is None:
        return found
    if set(found) - set(labels):
        raise InputError(f"labels {sorted(set(found) - set(labels))} occur in the data but not in labels={list(labels)}")
    return list(labels)


def make_task(kind: TaskKind, examples: Iterable[Example], *, val_frac: float = 0.1, test_frac: float = 0.1,
              seed: int = 0, labels: Sequence[str] | None = None, dedupe: bool = True,
              stratify_by: str | Callable[[Example], Hashable] | None = "auto",
              meta: dict[str, Any] | None = None) -> TaskData:
    """Deduplicate, split and package examples as a `TaskData`.

    When every example has meta["split"] (train/val/validation/dev/test) those splits are kept
    as given; otherwise they are drawn with `split`, stratified by label for classification
    ("auto"). `labels` fixes the label order (see `task_labels`).
    """
    if kind not in TASK_KINDS:
        raise ConfigError(f"kind must be one of {', '.join(TASK_KINDS)} (got {kind!r})")
    rows = dedupe_examples(examples) if dedupe else list(examples)
    if not rows:
        raise InputError(f"no {kind} examples to build a task from")
    _check_types(kind, rows)
    labels = task_labels(kind, rows, labels)
    given = [SPLIT_NAMES.get(str(e.meta.get("split", "")).lower()) for e in rows]
    if any(given) and not all(given):
        log.warning("%d of %d examples have a split (train/val/test) in meta; splitting all of them anew",
                    sum(map(bool, given)), len(rows))
    if all(given):
        parts: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        for ex, name in zip(rows, given, strict=True):
            parts[name].append(ex)
        train, val, test = parts["train"], parts["val"], parts["test"]
    else:
        by = ("label" if kind == "classification" else None) if stratify_by == "auto" else stratify_by
        train, val, test = split(rows, val_frac, test_frac, seed, stratify_by=by)
    return TaskData(kind=kind, train=train, val=val, test=test, labels=list(labels), meta=dict(meta or {}))
