"""Labelled datasets for fine-tuning: one example type, one container, deterministic splits, loaders.

One `Example` serves all three kinds of task so that trainers, evaluators and reports handle a
review, an NER sentence and an instruction pair with the same code, each reading only the fields
its kind fills: text + label (classification), tokens + BIO tags (ner), prompt + response
(instruction). `meta` carries where the example came from.

Splits are made here, once, from a seed, and stratified by label so that a rare class is in the
validation and test sets too (every class with at least 3 examples is in every split). The same
examples and seed always give the same splits, so a score can be reproduced a year later.

The readers for JSONL, CSV/TSV, lmforge record shards and Label Studio exports live in
`lmforge.finetune.loaders`.
"""

from __future__ import annotations

import bisect
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.errors import ConfigError, InputError

log = logging.getLogger(__name__)

Kind = Literal["classification", "ner", "instruction"]
KINDS = ("classification", "ner", "instruction")
_FIELDS = ("text", "label", "tokens", "tags", "prompt", "response", "meta")
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


@dataclass(slots=True)
class Example:
    """One labelled example; which fields are filled depends on the task's kind."""

    text: str = ""
    label: str | None = None
    tokens: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    prompt: str = ""
    response: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Only the filled fields, so that saved JSONL stays readable."""
        return {k: v for k in _FIELDS if (v := getattr(self, k)) not in (None, "", [], {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        return cls(**{k: data[k] for k in _FIELDS if k in data})


@dataclass
class TaskData:
    """A task ready to train on: its kind, three splits and the label set in a fixed order.

    `labels` is the class list for classification and the BIO tag list ("O" first) for NER, in
    the order a model's output layer uses; it is empty for instruction tasks. `meta` says where
    the data came from ("source", "license") and how it was built.
    """

    kind: Kind
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per split: examples per class, tokens per tag (ner), or examples per meta["task"] (instruction)."""
        return {name: dict(sorted(Counter(_targets(self.kind, rows)).items())) for name, rows in self.splits().items()}

    def class_weights(self) -> list[float]:
        """Inverse-frequency weights of `labels` over the training split (classes or tags)."""
        return class_weights(_targets(self.kind, self.train), self.labels)

    def save(self, directory: str | Path) -> Path:
        """Write task.json and train/val/test.jsonl, each atomically."""
        from lmforge.records import atomic_path, write_json_atomic

        directory = Path(directory)
        for name, rows in self.splits().items():
            with atomic_path(directory / f"{name}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in rows)
        sizes = {name: len(rows) for name, rows in self.splits().items()}
        write_json_atomic(directory / "task.json", {"kind": self.kind, "labels": self.labels, "sizes": sizes,
                                                    "meta": self.meta})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TaskData:
        directory = Path(directory)
        if not (directory / "task.json").is_file():
            raise InputError(f"{directory} is not a saved task (no task.json)")
        info = json.loads((directory / "task.json").read_text(encoding="utf-8"))
        parts = {name: [Example.from_dict(json.loads(line)) for line in _lines_of(directory / f"{name}.jsonl")]
                 for name in ("train", "val", "test")}
        return cls(kind=info["kind"], labels=info["labels"], meta=info.get("meta", {}), **parts)


def _lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _targets(kind: str, rows: Iterable[Example]) -> list[str]:
    if kind == "ner":
        return [t for e in rows for t in e.tags]
    if kind == "instruction":
        return [str(e.meta.get("task", "")) for e in rows]
    return [str(e.label) for e in rows]


# --------------------------------------------------------------------------- splits and weights


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
    key = _stratum(stratify_by)
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


def _stratum(by: str | Callable[[Example], Hashable] | None) -> Callable[[Example], Hashable]:
    if by is None:
        return lambda ex: None
    if callable(by):
        return by
    if by == "label":
        return lambda ex: ex.label
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


def class_weights(train_labels: Iterable[str], labels: Sequence[str]) -> list[float]:
    """Per label, the inverse of its frequency in training, scaled so the weights average 1.

    Mean 1 keeps the loss on the scale of the unweighted one, so a learning rate tuned without
    weights still fits. A label absent from training counts as seen once (a finite weight).
    """
    counts = Counter(train_labels)
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise InputError(f"training labels {unknown} are not in the label set {list(labels)}")
    raw = [1.0 / max(counts[label], 1) for label in labels]
    mean = sum(raw) / len(raw) if raw else 1.0
    return [r / mean for r in raw]


def dedupe_examples(examples: Iterable[Example], kind: str) -> list[Example]:
    """First copy of each input; an input seen with different labels is dropped in all its copies.

    Removing duplicates before splitting is what keeps a test example out of training, and an
    input labelled two ways is noise that no split makes right.
    """
    first: dict[Any, Example] = {}
    conflicting: set[Any] = set()
    total = 0
    for total, ex in enumerate(examples, start=1):  # noqa: B007 - total is the count afterwards
        key, target = _identity(kind, ex)
        if key not in first:
            first[key] = ex
        elif _identity(kind, first[key])[1] != target:
            conflicting.add(key)
    kept = [ex for key, ex in first.items() if key not in conflicting]
    if len(kept) < total:
        log.info("dedupe: kept %d of %d examples (%d repeats; %d inputs with conflicting labels dropped)",
                 len(kept), total, total - len(first), len(conflicting))
    return kept


def _identity(kind: str, ex: Example) -> tuple[Any, Any]:
    if kind == "ner":
        return tuple(ex.tokens), tuple(ex.tags)
    if kind == "instruction":
        return ex.prompt, ex.response
    return ex.text, ex.label


def make_task(kind: Kind, examples: Iterable[Example], *, val_frac: float = 0.1, test_frac: float = 0.1,
              seed: int = 0, labels: Sequence[str] | None = None, dedupe: bool = True,
              stratify_by: str | Callable[[Example], Hashable] | None = "auto",
              meta: dict[str, Any] | None = None) -> TaskData:
    """Deduplicate, split and package examples as a `TaskData`.

    When every example has meta["split"] (train/val/validation/dev/test) those splits are kept
    as given; otherwise they are drawn with `split`, stratified by label for classification
    ("auto"). `labels` fixes the label order; by default it is the sorted classes, or for NER
    "O" then B-/I- of each entity type in sorted order.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    rows = dedupe_examples(examples, kind) if dedupe else list(examples)
    if not rows:
        raise InputError(f"no {kind} examples to build a task from")
    found = sorted(set(_targets(kind, rows))) if kind != "instruction" else []
    if kind == "ner":
        types = sorted({t[2:] for t in found if t != "O"})
        found = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
    if labels is None:
        labels = found
    elif set(found) - set(labels):
        raise InputError(f"labels {sorted(set(found) - set(labels))} occur in the data but not in labels={list(labels)}")
    given = [_SPLIT_NAMES.get(str(e.meta.get("split", "")).lower()) for e in rows]
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


class RowError(InputError):
    """One example cannot be read; loaders add the file and line, or skip it with on_error=skip."""


# --------------------------------------------------------------------------- spans to BIO tags

_CJK = "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff" \
       "\U00020000-\U0003134f"
# one token per Chinese/Japanese character; runs of other letters and digits (English words, with
# an inner apostrophe); any other non-space character alone. This is BERT's basic tokenization.
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+(?:['’](?:(?![{_CJK}])\w)+)*|\S")


def tokenize_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) per token: Chinese per character, English by whitespace and punctuation."""
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def spans_to_bio(text: str, spans: Iterable[tuple[int, int, str]]) -> tuple[list[str], list[str], int]:
    """Tokens, BIO tags and the number of overlapping spans dropped, from character spans.

    A token partly inside a span belongs to it. BIO cannot nest entities, so of overlapping
    spans the earliest (then longest) is kept and the others are dropped and counted.
    """
    toks = tokenize_with_offsets(text)
    ends = [e for _, _, e in toks]
    tags = ["O"] * len(toks)
    dropped = 0
    for start, end, label in sorted(spans, key=lambda s: (s[0], -s[1])):
        if not (isinstance(start, int) and isinstance(end, int)):
            raise RowError(f"span offsets must be integers (got {start!r}-{end!r} for {label})")
        if not 0 <= start < end <= len(text):
            raise RowError(f"span {start}-{end} ({label}) is outside the text of {len(text)} characters")
        i = bisect.bisect_right(ends, start)
        inside = []
        while i < len(toks) and toks[i][1] < end:
            inside.append(i)
            i += 1
        if not inside:
            raise RowError(f"span {start}-{end} ({label}) covers only whitespace")
        if any(tags[j] != "O" for j in inside):
            dropped += 1
            continue
        tags[inside[0]] = f"B-{label}"
        for j in inside[1:]:
            tags[j] = f"I-{label}"
    return [t for t, _, _ in toks], tags, dropped


def repair_bio(tags: Sequence[str]) -> list[str]:
    """BIO (IOB2) tags from BIO or IOB1: an I-X that does not continue an X entity starts one (B-X)."""
    out: list[str] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            out.append(tag)
            continue
        if not (isinstance(tag, str) and len(tag) > 2 and tag[:2] in ("B-", "I-")):
            raise RowError(f"tag {tag!r} at token {i} is not O, B-TYPE or I-TYPE")
        prev = out[-1] if out else "O"
        out.append(f"B-{tag[2:]}" if tag[0] == "I" and prev[2:] != tag[2:] else tag)
    return out
