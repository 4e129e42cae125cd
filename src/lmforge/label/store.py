"""The annotation log: every answer and every undo, appended to one JSONL file and synced to disk.

Nothing a person labels may be lost, so the log is the only state: each event is one line,
written with flush + fsync before the web request that made it returns, and the answers are
recomputed from the log on start. A crash can only cut the last line short; that line (which no
request ever confirmed) is cut off on the next start, with a warning. Undo is an event too, so
it survives a restart and can be audited.

Events:

    {"event": "answer", "seq": 7, "item": "r12", "text": "...", "label": "pos", "comment": "",
     "suggestion": "pos", "annotator": "ann", "time": "2025-01-01T12:00:00+00:00"}
    {"event": "answer", ..., "spans": [[0, 3, "ORG"], [6, 8, "LOC"]]}       # NER, character offsets
    {"event": "undo", "seq": 8, "undoes": 7, "item": "r12", "annotator": "ann", "time": "..."}
    {"event": "answer", ..., "item": "q3:0-2", "label": "b", "pair": {...}}   # pairwise, see `pairwise`

The current answer of an item is its latest answer that has not been undone; undo always takes
back the latest answer still standing (a stack), whoever gave it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge.errors import InputError

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class AnswerStore:
    """Append-only, fsynced log of answers and undos, replayed into the current answers on open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._standing: list[int] = []  # seqs of answers not undone, oldest first
        self._load()

    # ------------------------------------------------------------------ reading

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: the last line was cut short (a crash while writing); dropping its %d bytes",
                        self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
            data = data[:end]
        for lineno, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError as exc:
                raise InputError(f"{self.path}:{lineno}: not a valid answer event ({exc}); "
                                 "the file was edited by hand or is not an answer log") from None
            if not isinstance(event, dict) or event.get("event") not in ("answer", "undo"):
                raise InputError(f"{self.path}:{lineno}: not an answer or undo event")
            self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        event["seq"] = len(self.events)
        self.events.append(event)
        if event["event"] == "answer":
            self._standing.append(event["seq"])
        elif event.get("undoes") in self._standing:
            self._standing.remove(event["undoes"])

    # ------------------------------------------------------------------ writing

    def _append(self, event: dict[str, Any]) -> dict[str, Any]:
        line = (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if created:  # the new file's directory entry must reach the disk too
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._apply(event)
        return event

    def answer(self, item: str, text: str, *, label: str | None = None, spans: list[list[Any]] | None = None,
               comment: str = "", suggestion: Any = None, annotator: str = "",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record one answer (a class or NER spans, and what `extra` adds); it is on disk when this returns."""
        if (label is None) == (spans is None):
            raise InputError("an answer has either a label or spans")
        with self._lock:
            event = {"event": "answer", "seq": len(self.events), "item": str(item), "text": text,
                     **({"label": label} if label is not None else {"spans": spans}),
                     "comment": comment, "suggestion": suggestion, "annotator": annotator, "time": _now(),
                     **{k: v for k, v in (extra or {}).items() if k not in ("event", "seq", "item")}}
            return self._append(event)

    def undo(self, annotator: str = "") -> dict[str, Any] | None:
        """Take back the latest standing answer; None when there is nothing to undo."""
        with self._lock:
            if not self._standing:
                return None
            target = self.events[self._standing[-1]]
            event = {"event": "undo", "seq": len(self.events), "undoes": target["seq"], "item": target["item"],
                     "annotator": annotator, "time": _now()}
            return self._append(event)

    # ------------------------------------------------------------------ state

    def current(self) -> dict[str, dict[str, Any]]:
        """Item id → its standing answer event (the latest one not undone)."""
        with self._lock:
            return {self.events[s]["item"]: self.events[s] for s in self._standing}

    def __len__(self) -> int:
        return len(self.current())


def answers_to_examples(store: AnswerStore, kind: str) -> list:
    """The standing answers as `Example`s (classification: text + label; ner: BIO tags from the spans)."""
    from lmforge.tasks.examples import ClassificationExample, NerExample

    out = []
    for item, event in store.current().items():
        if "pair" in event:
            raise InputError(f"{store.path}: item {item} is a pairwise decision; its preference pairs are written "
                             "by `lmforge label answers` as they are (pairwise.preference_rows)")
        meta = {"id": item, "annotator": event.get("annotator", ""), **({"comment": event["comment"]}
                                                                        if event.get("comment") else {})}
        if kind == "ner":
            if "spans" not in event:
                raise InputError(f"{store.path}: item {item} has a class label, not spans; is this a NER log?")
            out.append(NerExample.from_spans(event["text"], [tuple(s) for s in event["spans"]], meta)[0])
        else:
            if "label" not in event:
                raise InputError(f"{store.path}: item {item} has spans, not a label; use kind ner")
            out.append(ClassificationExample(text=event["text"], label=event["label"], meta=meta))
    return out
