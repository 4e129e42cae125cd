"""The `lmforge label` commands as Python calls: each function is one command, with its parameters.

The CLI only parses options, calls one of these and prints what comes back, so a notebook or a
script gets the same files and the same figures as the command line. Label lists are Python
lists here (the CLI splits its comma-separated options).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, InputError
from lmforge.label.labelstudio import LabelStudioImport
from lmforge.label.pairwise import PairSession, PreferenceSet
from lmforge.label.session import Item, Session
from lmforge.label.weak import WeakResult
from lmforge.records import atomic_path
from lmforge.tasks.examples import ClassificationExample, Example, NerExample, TaskData


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def login_name() -> str:
    """The annotator name saved with answers when none is given; some containers have no login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "annotator"


def default_labels(dataset: str, items: list[Item], kind: str) -> list[str]:
    """The label set when none is given: the built-in task's, else every predicted label or entity type."""
    if dataset.startswith("builtin:"):
        from lmforge.tasks.builtin import load_task

        task = load_task(dataset.split(":", 1)[1])
        return task.labels if kind == "classification" else sorted({t[2:] for t in task.labels if t != "O"})
    if kind == "classification":
        return sorted({it.prediction for it in items if it.prediction is not None})
    return sorted({s[2] for it in items for s in it.prediction or []})


def answer_log_path(dataset: str) -> Path:
    """Where a session's answers go by default: beside the dataset, or in the working directory for builtin:NAME."""
    if dataset.startswith("builtin:"):
        return Path(f"label-{dataset.split(':', 1)[1]}.answers.jsonl")
    return Path(dataset).with_suffix(".answers.jsonl")


def open_session(dataset: str, out: Path | None = None, labels: list[str] | None = None,
                 kind: str = "classification", strategy: str = "entropy", annotator: str | None = None,
                 max_comment: int | None = None, text_field: str = "text", max_pairs: int | None = None,
                 seed: int = 0) -> Session | PairSession:
    """The labelling session `lmforge label serve` serves (pass it to `lmforge.label.app.serve`).

    For kind pairwise the dataset holds prompts and answers (`pairwise.load_pairs`: at most
    `max_pairs` per prompt, left/right by a coin seeded with `seed`); labels, strategy and
    text_field do not apply.
    """
    from lmforge.label.session import MAX_COMMENT_CHARS, load_items
    from lmforge.label.store import AnswerStore

    comment_chars = MAX_COMMENT_CHARS if max_comment is None else max_comment
    if kind == "pairwise":
        from lmforge.label.pairwise import load_pairs

        if dataset.startswith("builtin:"):
            raise ConfigError("kind pairwise needs a JSONL file of prompts and answers (from `lmforge generate "
                              "--prompts-file F -n K --out FILE`), not a built-in task")
        return PairSession(load_pairs(dataset, max_pairs, seed), AnswerStore(out or answer_log_path(dataset)),
                           annotator=annotator or login_name(), name=Path(dataset).name,
                           max_comment_chars=comment_chars)
    items = load_items(dataset, kind, text_field)
    names = labels or default_labels(dataset, items, kind)
    if not names:
        raise ConfigError("--labels is needed: the dataset has no predictions to take the label set from")
    return Session(items, names, AnswerStore(out or answer_log_path(dataset)), kind=kind, strategy=strategy,
                   annotator=annotator or login_name(), max_comment_chars=comment_chars,
                   name=dataset if dataset.startswith("builtin:") else Path(dataset).name)


def write_answers(log: Path, out: Path, kind: str = "classification") -> int:
    """Write the standing answers of an answer log as labelled JSONL; returns how many."""
    from lmforge.label.store import AnswerStore, answers_to_examples

    if not log.is_file():
        raise InputError(f"answer log not found: {log}")
    examples = answers_to_examples(AnswerStore(log), kind)
    _write_jsonl(out, ({**e.to_dict(), "id": e.meta["id"]} for e in examples))
    return len(examples)


def is_pairwise(log: Path) -> bool:
    """Whether an answer log holds pairwise decisions (then `write_preferences` exports it)."""
    from lmforge.label.pairwise import is_pairwise_log
    from lmforge.label.store import AnswerStore

    if not log.is_file():
        raise InputError(f"answer log not found: {log}")
    return is_pairwise_log(AnswerStore(log))


def write_preferences(log: Path, out: Path) -> PreferenceSet:
    """Write the pairs decided in a pairwise log as a preference set (JSONL that `load_preferences` reads).

    Each pair's latest standing decision counts; ties and both-bad decisions are left out (and counted).
    """
    from lmforge.label.pairwise import preference_rows
    from lmforge.label.store import AnswerStore

    if not log.is_file():
        raise InputError(f"answer log not found: {log}")
    prefs = preference_rows(AnswerStore(log))
    _write_jsonl(out, prefs.rows)
    return prefs


@dataclass
class SplitResult:
    """The dataset written, `describe`'s summary of it, and how many folds were written beside it."""

    task: TaskData
    info: dict[str, Any]
    folds: int = 0


def split_source(source: str, out: Path, kind: str | None = None, val: float = 0.1, test: float = 0.1,
                 seed: int = 0, folds: int = 0, fmt: str = "jsonl", near_duplicates: bool = True,
                 text_field: str = "text", label_field: str = "label") -> SplitResult:
    """Leakage-free train/val/test splits of a labelled source, saved in `out`; k folds of train + val when folds >= 2."""
    from lmforge.label.dataset import (
        NEAR_DUPLICATES,
        build_dataset,
        describe,
        kfold,
        load_source,
        save_dataset,
    )

    loader = {"text_field": text_field, "label_field": label_field}
    examples, found = load_source(source, kind, **({} if source.startswith("builtin:") else loader))  # type: ignore[arg-type]
    near = NEAR_DUPLICATES if near_duplicates else None
    task = build_dataset(examples, kind or found, val_frac=val, test_frac=test, seed=seed,  # type: ignore[arg-type]
                         near_duplicates=near, meta={"source": str(source)})
    save_dataset(task, out, fmt)  # type: ignore[arg-type]
    result = SplitResult(task, describe(task))
    if folds >= 2:
        strat = "label" if task.kind == "classification" else None
        for f, (train, held) in enumerate(kfold(task.train + task.val, folds, seed, strat, near)):
            TaskData(task.kind, train, held, [], task.labels).save(out / f"fold-{f}")
        result.folds = folds
    return result


@dataclass
class LabelStudioExport:
    tasks: int
    path: Path
    config_path: Path


def _unlabelled(kind: str, item: Item) -> Example:
    if kind == "classification":
        return ClassificationExample(text=item.text, meta={"id": item.id})
    return NerExample(tokens=[], tags=[], text=item.text, meta={"id": item.id})


def _model_predictions(model: Path, examples: list[Example]) -> tuple[list[dict[str, float]], list[str]]:
    from lmforge.label.classifier import finetuned_proba

    proba, model_labels = finetuned_proba(model)
    probs = proba([e.text for e in examples])
    return [dict(zip(model_labels, map(float, row), strict=True)) for row in probs], model_labels


def export_labelstudio(source: str, out: Path, labels: list[str] | None = None, kind: str = "classification",
                       model: Path | None = None, with_annotations: bool = False) -> LabelStudioExport:
    """Label Studio tasks (and their labelling config beside them), predictions as pre-annotations."""
    from lmforge.label.labelstudio import export_tasks
    from lmforge.label.session import load_items

    if with_annotations:
        from lmforge.label.dataset import load_source

        examples, _ = load_source(source, kind)  # type: ignore[arg-type]
        predictions: list[Any] | None = None
        names = labels or sorted({e.label for e in examples} if kind == "classification" else
                                 {t[2:] for e in examples for t in e.tags if t != "O"})
    else:
        items = load_items(source, kind)
        examples = [_unlabelled(kind, it) for it in items]
        predictions = [it.prediction if it.score is None or kind == "ner" else (it.prediction, it.score)
                       for it in items]
        names = labels or default_labels(source, items, kind)
        if model is not None:
            predictions, model_labels = _model_predictions(model, examples)
            names = names or model_labels
    export_tasks(examples, kind, out, names, predictions=predictions, with_annotations=with_annotations)  # type: ignore[arg-type]
    return LabelStudioExport(len(examples), out, out.with_name(out.stem + ".config.xml"))


@dataclass
class LabelStudioDataset:
    """What an import made: the annotations read, the dataset written, and agreement when tasks have 2+ answers."""

    imported: LabelStudioImport
    info: dict[str, Any]
    agreement: dict[str, Any] | None = None


def import_labelstudio(export: Path, out: Path, kind: str | None = None, fmt: str = "jsonl",
                       seed: int = 0) -> LabelStudioDataset:
    """Completed Label Studio annotations → a leakage-free split dataset in `out`."""
    from lmforge.label.dataset import build_dataset, describe, save_dataset
    from lmforge.label.labelstudio import import_annotations
    from lmforge.label.quality import agreement_report

    imported = import_annotations(export, kind)  # type: ignore[arg-type]
    task = build_dataset(imported.examples, imported.kind, seed=seed, meta={"source": str(export)})
    save_dataset(task, out, fmt)  # type: ignore[arg-type]
    result = LabelStudioDataset(imported, describe(task))
    if any(len(r) >= 2 for r in imported.ratings()):
        result.agreement = agreement_report(imported.ratings())
    return result


@dataclass
class WeakLabels:
    """The weak labels of a source's texts; `has_gold` when the source's own labels measured them."""

    items: list[Item]
    result: WeakResult
    method: str
    has_gold: bool
    written: int | None = None


def weak_label_source(source: str, lfs: str, method: str = "label_model", out: Path | None = None) -> WeakLabels:
    """Apply labelling functions (a YAML file or a built-in set) to a source; write the labelled texts to `out`."""
    from lmforge.label.session import load_items
    from lmforge.label.weak import build_lfs, load_weak_config, weak_label

    config = load_weak_config(lfs)
    items = load_items(source)
    gold = [it.meta.get("gold") for it in items]
    has_gold = any(gold)
    result = weak_label([it.text for it in items], build_lfs(config), config.labels,
                        gold=gold if has_gold else None, method=method)  # type: ignore[arg-type]
    weak = WeakLabels(items, result, method, has_gold)
    if out is not None:
        _write_jsonl(out, ({"id": it.id, "text": it.text, "label": result.label_of(i),
                            "weak_prob": round(float(result.probs[i].max()), 4)}
                           for i, it in enumerate(items) if result.label_of(i) is not None))
        weak.written = int((result.predicted >= 0).sum())
    return weak


def annotator_agreement(export: Path, top: int = 10) -> dict[str, Any]:
    """`quality.agreement_report` of a Label Studio export, with the `top` most split tasks."""
    from lmforge.label.labelstudio import import_annotations
    from lmforge.label.quality import agreement_report

    imported = import_annotations(export)
    return agreement_report(imported.ratings(), [t.example.meta.get("id") for t in imported.tasks],
                            [t.example.text for t in imported.tasks], max_disagreements=top)


@dataclass
class LabelIssues:
    examples: list[Example]
    suspects: list[dict[str, Any]] = field(default_factory=list)


def label_issues(source: str, folds: int = 5, out: Path | None = None) -> LabelIssues:
    """Likely label errors of a labelled classification source (confident learning); every suspect to `out`."""
    from lmforge.label.classifier import cross_val_proba
    from lmforge.label.dataset import load_source
    from lmforge.label.quality import find_label_issues

    examples, _ = load_source(source, "classification")
    labels = [e.label for e in examples]
    label_set = sorted(set(labels))
    suspects = find_label_issues(labels, cross_val_proba([e.text for e in examples], labels, label_set, k=folds),
                                 label_set)
    if out is not None:
        _write_jsonl(out, ({**s, "text": examples[s["index"]].text} for s in suspects))
    return LabelIssues(examples, suspects)


__all__ = ["LabelIssues", "LabelStudioDataset", "LabelStudioExport", "SplitResult", "WeakLabels", "annotator_agreement",
           "answer_log_path", "default_labels", "export_labelstudio", "import_labelstudio", "is_pairwise",
           "label_issues", "login_name", "open_session", "split_source", "weak_label_source", "write_answers",
           "write_preferences"]
