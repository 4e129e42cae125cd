"""A labelling session: the items, the answer log, the model's suggestions and the choice of the next item.

The web app is a thin layer over this class, so everything it does can be driven (and tested)
from Python. For classification a small TF-IDF classifier (`classifier.TextClassifier`) is
refitted on the answers as they come in; it suggests a label for the item on screen and picks
the next item by active learning (the most uncertain one, by default). Until two different
labels have been given, or without scikit-learn, the suggestions come from the dataset's own
predictions and the order from their scores (least sure first), else the file order. For NER
the suggestions are the dataset's predicted spans.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import ConfigError, InputError
from lmforge.label.active import STRATEGIES, select
from lmforge.label.store import AnswerStore

log = logging.getLogger(__name__)

# A comment is a note beside a label, and every answer is kept in the log forever: a pasted document is refused.
MAX_COMMENT_CHARS = 2000


@dataclass
class Item:
    """One thing to label: its text, and optionally a model's prediction (a label or spans) with a score."""

    id: str
    text: str
    prediction: Any = None
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _prediction_of(row: dict[str, Any]) -> tuple[Any, float | None]:
    pred = row.get("prediction")
    if isinstance(pred, dict) and ("label" in pred or "spans" in pred):
        return pred.get("label", pred.get("spans")), pred.get("score")
    return pred, row.get("score")


def _ls_items(path: Path, kind: str, text_field: str) -> list[Item]:
    """Items from Label Studio tasks (e.g. written by `lmforge label export-ls`), predictions included.

    A prediction is read like an annotation, by the shared Label Studio reader.
    """
    from lmforge.tasks.loaders import label_studio_example, read_label_studio
    from lmforge.tasks.spans import RowError, bio_to_spans

    items = []
    for i, task in enumerate(read_label_studio(path)):
        data = task["data"] if isinstance(task["data"], dict) else {}
        text = data.get(text_field)
        if not isinstance(text, str):
            raise InputError(f"{path}: task {i + 1} has no text field {text_field!r}")
        pred, score = None, None
        for p in (task.get("predictions") or [])[:1]:
            if kind == "classification" and not p.get("result"):
                break
            try:
                ex = label_studio_example(task, p, kind, text_field)
            except RowError as exc:
                raise InputError(f"{path}: task {i + 1}: prediction: {exc}") from None
            pred = ex.label if kind == "classification" else [list(s) for s in bio_to_spans(text, ex.tokens, ex.tags)]
            score = p.get("score")
        items.append(Item(str(data.get("lmforge_id", task.get("id", i))), text, pred, score))
    return items


def load_items(source: str | Path, kind: str = "classification", text_field: str = "text") -> list[Item]:
    """Items from `builtin:NAME` (its training split), Label Studio tasks (.json), JSONL or CSV.

    A JSONL/CSV row needs `text_field`; `id` (default: the row number), `prediction` (a label,
    or spans [[start, end, type]] for NER; or {"label"/"spans", "score"}) and `score` are optional.
    A `label` already in a row is never shown (the point is to label without seeing it); it is
    kept in `meta["gold"]` for measuring weak labels or suggestions against it.
    """
    text = str(source)
    if text.startswith("builtin:"):
        from lmforge.tasks.builtin import load_task

        task = load_task(text.split(":", 1)[1])
        return [Item(str(i), e.text or "".join(e.tokens), meta={"gold": e.label} if getattr(e, "label", None) else {})
                for i, e in enumerate(task.train)]
    path = Path(source)
    if not path.is_file():
        raise InputError(f"dataset not found: {path}")
    if path.suffix == ".json":
        return _ls_items(path, kind, text_field)
    if path.suffix in (".csv", ".tsv"):
        import csv

        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))
        for row in rows:
            if isinstance(row.get("prediction"), str) and row["prediction"].startswith("["):
                row["prediction"] = json.loads(row["prediction"])
    elif path.suffix in (".jsonl", ".ndjson"):
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    else:
        raise InputError(f"{path}: cannot tell the format from the name (use .jsonl, .csv, .tsv or Label Studio .json)")
    items, seen = [], set()
    for n, row in enumerate(rows, start=1):
        if not isinstance(row.get(text_field), str) or not row[text_field].strip():
            raise InputError(f"{path}:{n}: no text in field {text_field!r} (fields: {', '.join(row)})")
        item_id = str(row.get("id", n))
        if item_id in seen:
            raise InputError(f"{path}:{n}: id {item_id!r} appears twice")
        seen.add(item_id)
        pred, score = _prediction_of(row)
        gold = row.get("label")
        items.append(Item(item_id, row[text_field], pred, None if score in (None, "") else float(score),
                          {"gold": gold} if isinstance(gold, str) and gold else {}))
    if not items:
        raise InputError(f"{path}: no items to label")
    return items


class Session:
    """Items + answer log + (for classification) an online classifier; thread-safe."""

    def __init__(self, items: Sequence[Item], labels: Sequence[str], store: AnswerStore, *,
                 kind: str = "classification", strategy: str = "entropy", annotator: str = "",
                 name: str = "", seed: int = 0, max_comment_chars: int = MAX_COMMENT_CHARS) -> None:
        if kind not in ("classification", "ner"):
            raise ConfigError(f"kind must be classification or ner (got {kind!r})")
        if strategy not in STRATEGIES + ("order",):
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES + ('order',))} (got {strategy!r})")
        if not labels:
            raise ConfigError("give the labels (classes or entity types) to choose from")
        if len(labels) > 9:
            raise ConfigError(f"at most 9 labels fit on the number keys (got {len(labels)})")
        self.items = list(items)
        self.by_id = {it.id: i for i, it in enumerate(self.items)}
        self.labels, self.store, self.kind = list(labels), store, kind
        self.strategy, self.annotator, self.name, self.seed = strategy, annotator, name, seed
        if max_comment_chars < 0:
            raise ConfigError(f"max_comment_chars must be 0 or more (got {max_comment_chars})")
        self.max_comment_chars = max_comment_chars
        self.skipped: set[str] = set()
        self._lock = threading.RLock()
        self._model = None
        self._probs: np.ndarray | None = None
        self._embeddings: np.ndarray | None = None
        self._trained_on = -1
        self._check_predictions()
        if kind == "classification":
            self._start_model()

    def _check_predictions(self) -> None:
        for it in self.items:
            if it.prediction is None:
                continue
            if self.kind == "classification" and it.prediction not in self.labels:
                raise InputError(f"item {it.id}: prediction {it.prediction!r} is not one of the labels {self.labels}")
            if self.kind == "ner":
                if not isinstance(it.prediction, list):
                    raise InputError(f"item {it.id}: a NER prediction is a list of [start, end, type] spans")
                for span in it.prediction:
                    if span[2] not in self.labels or not 0 <= span[0] < span[1] <= len(it.text):
                        raise InputError(f"item {it.id}: predicted span {span} is outside the text or its "
                                         f"type is not one of {self.labels}")

    def _start_model(self) -> None:
        try:
            from lmforge.label.classifier import TextClassifier

            self._model = TextClassifier([it.text for it in self.items], self.labels, seed=self.seed)
        except ImportError as exc:  # MissingDependencyError: run without the online model
            log.warning("no online model (%s); suggestions and order come from the dataset", exc)

    # ------------------------------------------------------------------ model

    def _refit(self) -> None:
        """Refit the online classifier when the answers changed since the last fit."""
        answers = self.store.current()
        if self._model is None or len(self.store.events) == self._trained_on:
            return
        self._trained_on = len(self.store.events)
        rows = [(self.by_id[i], a["label"]) for i, a in answers.items() if i in self.by_id and "label" in a]
        if len({lb for _, lb in rows}) < 2:
            self._probs = None
            return
        self._model.fit([r for r, _ in rows], [lb for _, lb in rows])
        self._probs = self._model.proba()

    def model_status(self) -> str:
        if self._model is None:
            return "no online model"
        return "no model yet (needs two different labels)" if self._probs is None else \
            f"model trained on {len(self.store.current())} answers"

    def suggestion(self, item: Item) -> dict[str, Any] | None:
        """What the model thinks: {"label", "prob"} (classification) or {"spans"} (NER), or None."""
        with self._lock:
            self._refit()
            if self.kind == "classification" and self._probs is not None:
                p = self._probs[self.by_id[item.id]]
                best = int(np.argmax(p))
                return {"label": self.labels[best], "prob": float(p[best]), "source": "online model"}
            if item.prediction is not None:
                key = "label" if self.kind == "classification" else "spans"
                return {key: item.prediction, "prob": item.score, "source": "dataset"}
            return None

    # ------------------------------------------------------------------ next item

    def next_item(self, exclude: Sequence[str] = ()) -> Item | None:
        """The next unanswered item: chosen by the strategy, skipped ones last; None when all are answered."""
        with self._lock:
            self._refit()
            answered = self.store.current()
            open_ = np.array([it.id not in answered for it in self.items])
            if not open_.any():
                return None
            avoid = open_ & np.array([it.id in self.skipped or it.id in exclude for it in self.items])
            if (open_ & ~avoid).any():
                open_ &= ~avoid
            else:
                self.skipped.clear()
            return self.items[self._pick(open_)]

    def _pick(self, open_: np.ndarray) -> int:
        labelled, strategy = ~open_, self.strategy
        if strategy == "random":
            return int(select(1, "random", labelled=labelled, seed=self.seed + len(self.store.events))[0])
        if strategy == "diversity" and self._model is not None:
            return int(select(1, "diversity", labelled=labelled, embeddings=self._embeddings_for())[0])
        if strategy not in ("order", "diversity") and self._probs is not None:
            return int(select(1, strategy, labelled=labelled, probs=self._probs, embeddings=self._embeddings_for(),
                              seed=self.seed)[0])
        candidates = np.flatnonzero(open_)
        scored = [i for i in candidates if self.items[i].score is not None]
        if strategy != "order" and scored:  # no online model: the dataset's least sure prediction first
            return int(min(scored, key=lambda i: (self.items[i].score, i)))
        return int(candidates[0])

    def _embeddings_for(self) -> np.ndarray | None:
        if self.strategy not in ("diversity", "entropy+diversity") or self._model is None:
            return None
        if self._embeddings is None:
            self._embeddings = self._model.embeddings(64)
        return self._embeddings

    # ------------------------------------------------------------------ answers

    def item(self, item_id: str) -> Item:
        if item_id not in self.by_id:
            raise InputError(f"no item {item_id!r} in this dataset")
        return self.items[self.by_id[item_id]]

    def answer(self, item_id: str, *, label: str | None = None, spans: list | None = None,
               comment: str = "") -> dict[str, Any]:
        """Validate and save one answer (durably), then forget that the item was skipped."""
        it = self.item(item_id)
        comment = comment.strip()
        if len(comment) > self.max_comment_chars:
            raise InputError(f"the comment is {len(comment):,} characters; at most {self.max_comment_chars:,} "
                             "are kept (--max-comment)")
        if self.kind == "classification":
            if label not in self.labels:
                raise InputError(f"label {label!r} is not one of {self.labels}")
            spans = None
        else:
            spans = self._check_spans(it, spans)
            label = None
        suggestion = self.suggestion(it)
        with self._lock:
            event = self.store.answer(it.id, it.text, label=label, spans=spans, comment=comment,
                                      suggestion=suggestion, annotator=self.annotator)
            self.skipped.discard(it.id)
            return event

    def _check_spans(self, item: Item, spans: Any) -> list[list[Any]]:
        if not isinstance(spans, list):
            raise InputError("spans must be a list of [start, end, type]")
        out = []
        for s in spans:
            if not (isinstance(s, list | tuple) and len(s) == 3 and isinstance(s[0], int) and isinstance(s[1], int)):
                raise InputError(f"span {s!r} is not [start, end, type]")
            if not 0 <= s[0] < s[1] <= len(item.text) or s[2] not in self.labels:
                raise InputError(f"span {s!r} is outside the text of {len(item.text)} characters or its type is "
                                 f"not one of {self.labels}")
            out.append([s[0], s[1], s[2]])
        out.sort()
        for a, b in zip(out, out[1:], strict=False):
            if b[0] < a[1]:
                raise InputError(f"spans {a} and {b} overlap")
        return out

    def undo(self) -> dict[str, Any] | None:
        with self._lock:
            return self.store.undo(self.annotator)

    def skip(self, item_id: str) -> None:
        with self._lock:
            self.skipped.add(self.item(item_id).id)

    def state(self) -> dict[str, Any]:
        answers = self.store.current()
        return {"name": self.name, "kind": self.kind, "labels": self.labels, "total": len(self.items),
                "answered": len(answers), "strategy": self.strategy, "model": self.model_status(),
                "answers": {k: {f: v.get(f) for f in ("label", "spans", "comment", "annotator", "time") if f in v}
                            for k, v in answers.items()}}
