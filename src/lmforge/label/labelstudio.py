"""Label Studio interchange: tasks out (with model predictions as pre-annotations), annotations in.

Label Studio's JSON task format, for the two template kinds annotation teams use most:

- classification: `<Choices name="label" toName="text">`; a result is
  `{"type": "choices", "value": {"choices": ["pos"]}}`;
- NER: `<Labels name="label" toName="text">`; a result is
  `{"type": "labels", "value": {"start", "end", "text", "labels": ["PER"]}}`.

`label_config` writes the matching labelling config (paste it into the project's settings), so
the names in the tasks and in the project agree. Predictions go under `predictions` with a
`model_version` and a `score`; Label Studio shows them as pre-annotations an annotator accepts or
corrects, and can sort the queue by score. Span offsets are written in UTF-16 units, as the
browser (and so Label Studio) counts them; the reader (`tasks.loaders`, shared with
`lmforge finetune`) converts them back to characters.

Reading keeps every annotator's answer (`import_annotations`), which is what agreement needs;
the example of a task is the ground-truth annotation, else the first, as `load_label_studio` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, InputError
from lmforge.tasks.examples import Example, Kind
from lmforge.tasks.spans import RowError, bio_to_spans

log = logging.getLogger(__name__)

# A prediction per example: classification a label, (label, score) or {label: probability};
# NER spans [(start, end, label[, score])] over the text, or BIO tags aligned with the tokens.
Prediction = Any


def label_config(kind: Kind, labels: Sequence[str], from_name: str = "label", to_name: str = "text",
                 text_field: str = "text") -> str:
    """The Label Studio labelling config (XML) that matches the tasks `to_tasks` writes."""
    if not labels:
        raise ConfigError("labels must name at least one class or entity type")
    if kind == "classification":
        inner = "".join(f'\n    <Choice value="{escape(str(lb))}"/>' for lb in labels)
        control = f'  <Choices name="{from_name}" toName="{to_name}" choice="single" showInLine="true">{inner}\n  </Choices>'
    elif kind == "ner":
        inner = "".join(f'\n    <Label value="{escape(str(lb))}"/>' for lb in labels)
        control = f'  <Labels name="{from_name}" toName="{to_name}">{inner}\n  </Labels>'
    else:
        raise ConfigError(f"kind must be classification or ner for Label Studio (got {kind!r})")
    return f'<View>\n  <Text name="{to_name}" value="${text_field}"/>\n{control}\n</View>\n'


def _utf16(text: str, index: int) -> int:
    """A character offset in UTF-16 units: characters beyond the BMP count twice."""
    return index + sum(1 for ch in text[:index] if ord(ch) > 0xFFFF)


def example_spans(example: Example) -> list[tuple[int, int, str]]:
    """Character spans of an NER example's BIO tags over its text (the tokens joined by spaces if it has none)."""
    return example.spans


def _choice(label: str, from_name: str, to_name: str) -> dict[str, Any]:
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [str(label)]}}


def _span(text: str, start: int, end: int, label: str, from_name: str, to_name: str,
          score: float | None = None) -> dict[str, Any]:
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        raise InputError(f"span {start!r}-{end!r} ({label}) is outside the text of {len(text)} characters")
    value = {"start": _utf16(text, start), "end": _utf16(text, end), "text": text[start:end], "labels": [str(label)]}
    return {"from_name": from_name, "to_name": to_name, "type": "labels", "value": value,
            **({"score": round(float(score), 4)} if score is not None else {})}


def _classification_prediction(pred: Prediction) -> tuple[str, float | None]:
    if isinstance(pred, Mapping):
        if not pred:
            raise InputError("a prediction's probabilities are empty")
        label = max(pred, key=lambda k: pred[k])
        return str(label), float(pred[label])
    if isinstance(pred, tuple | list) and len(pred) == 2:
        return str(pred[0]), float(pred[1])
    return str(pred), None


def _ner_prediction(example: Example, pred: Prediction) -> list[tuple[int, int, str, float | None]]:
    if pred and all(isinstance(t, str) for t in pred):  # BIO tags aligned with the tokens
        return [(s, e, k, None) for s, e, k in bio_to_spans(example.input_text,
                                                            example.tokens, list(pred))]
    out = []
    for span in pred or []:
        if isinstance(span, Mapping):
            out.append((span["start"], span["end"], span["label"], span.get("score")))
        else:
            out.append((span[0], span[1], span[2], span[3] if len(span) > 3 else None))
    return out


def to_tasks(examples: Sequence[Example], kind: Kind, *, predictions: Sequence[Prediction] | None = None,
             with_annotations: bool = False, model_version: str = "lmforge", from_name: str = "label",
             to_name: str = "text", text_field: str = "text") -> list[dict[str, Any]]:
    """Label Studio tasks: `data` holds the text (and the example's id), `predictions` the model's guesses.

    `with_annotations` also writes each example's own label as a completed annotation, e.g. to
    have a labelled set reviewed, or to move labels between tools.
    """
    if kind not in ("classification", "ner"):
        raise ConfigError(f"kind must be classification or ner for Label Studio (got {kind!r})")
    if predictions is not None and len(predictions) != len(examples):
        raise InputError(f"{len(predictions)} predictions for {len(examples)} examples")
    tasks = []
    for i, ex in enumerate(examples):
        text = ex.input_text
        data = {text_field: text, "lmforge_id": str(ex.meta.get("id", i))}
        task: dict[str, Any] = {"data": data}
        if predictions is not None and predictions[i] is not None:
            task["predictions"] = [_prediction(ex, text, kind, predictions[i], model_version, from_name, to_name)]
        if with_annotations:
            result = [_choice(ex.label, from_name, to_name)] if kind == "classification" else \
                [_span(text, s, e, k, from_name, to_name) for s, e, k in example_spans(ex)]
            task["annotations"] = [{"result": result, "was_cancelled": False, "ground_truth": False}]
        tasks.append(task)
    return tasks


def _prediction(ex: Example, text: str, kind: Kind, pred: Prediction, model_version: str, from_name: str,
                to_name: str) -> dict[str, Any]:
    if kind == "classification":
        label, score = _classification_prediction(pred)
        result = [_choice(label, from_name, to_name)]
    else:
        spans = _ner_prediction(ex, pred)
        result = [_span(text, s, e, k, from_name, to_name, sc) for s, e, k, sc in spans]
        scores = [sc for *_, sc in spans if sc is not None]
        score = min(scores) if scores else None  # a sentence is as sure as its least sure entity
    return {"model_version": model_version, "result": result, **({"score": round(score, 4)} if score is not None else {})}


def write_tasks(tasks: list[dict[str, Any]], path: str | Path) -> Path:
    """Write tasks as the JSON list Label Studio imports (and exports)."""
    from lmforge.records import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def export_tasks(examples: Sequence[Example], kind: Kind, path: str | Path, labels: Sequence[str], **options: Any) -> Path:
    """Write tasks to `path` and the matching labelling config beside it (`<stem>.config.xml`)."""
    path = write_tasks(to_tasks(examples, kind, **options), path)
    config = label_config(kind, labels, options.get("from_name", "label"), options.get("to_name", "text"),
                          options.get("text_field", "text"))
    path.with_name(f"{path.stem}.config.xml").write_text(config, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- import


@dataclass
class Annotated:
    """One task: the chosen example and every annotator's answer (a class, or the BIO tags)."""

    example: Example
    by_annotator: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelStudioImport:
    kind: Kind
    tasks: list[Annotated]
    counts: dict[str, int]

    @property
    def examples(self) -> list[Example]:
        return [t.example for t in self.tasks]

    def ratings(self) -> list[dict[str, Any]]:
        """Per task, annotator → answer; the input of `quality.agreement_report` (tags flattened per token for NER)."""
        return [t.by_annotator for t in self.tasks]


def _annotator(annotation: dict[str, Any], n: int) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return str(who) if who is not None else f"annotator-{n}"


def import_annotations(path: str | Path, kind: Kind | None = None, *, text_field: str = "text",
                       from_name: str | None = None, on_error: str = "raise") -> LabelStudioImport:
    """Every completed annotation of a Label Studio JSON export, per task and annotator.

    Uses the same reader as `tasks.loaders.load_label_studio` (format checks, kind detection,
    UTF-16 offsets). Cancelled annotations and tasks nobody annotated are counted, not kept; the
    task's `data` fields other than the text go into the example's meta (so `lmforge_id` comes back).
    """
    from lmforge.tasks.loaders import label_studio_example, label_studio_kind, read_label_studio

    path = Path(path)
    tasks = read_label_studio(path)
    kind = label_studio_kind(tasks, path, kind)
    out: list[Annotated] = []
    counts = {"tasks": len(tasks), "annotations": 0, "cancelled": 0, "not_annotated": 0, "bad": 0}
    for i, task in enumerate(tasks, start=1):
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        counts["cancelled"] += len(task.get("annotations") or []) - len(done)
        if not done:
            counts["not_annotated"] += 1
            continue
        try:
            answers = [(a, label_studio_example(task, a, kind, text_field, from_name)) for a in done]
        except RowError as exc:
            if on_error != "skip":
                raise InputError(f"{path}:task {i} (id {task.get('id')}): {exc}") from None
            counts["bad"] += 1
            continue
        chosen = next((ex for a, ex in answers if a.get("ground_truth")), answers[0][1])
        extra = {k: v for k, v in task["data"].items() if k != text_field}
        chosen.meta.update({"where": f"{path.name}:task {i}", "ls_id": task.get("id"), **extra})
        if "lmforge_id" in extra:
            chosen.meta["id"] = extra["lmforge_id"]
        by = {}
        for n, (a, ex) in enumerate(answers):
            by[_annotator(a, n)] = ex.label if kind == "classification" else list(ex.tags)
        counts["annotations"] += len(answers)
        out.append(Annotated(chosen, by))
    log.info("%s: %d annotated tasks (%s)", path, len(out), ", ".join(f"{v} {k}" for k, v in counts.items()))
    return LabelStudioImport(kind=kind, tasks=out, counts=counts)
