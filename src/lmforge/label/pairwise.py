"""Pairwise preference labelling: two answers to one prompt side by side, and which is better.

The input is what `lmforge generate --prompts-file F -n K --out S` writes (a prompt and K
sampled answers per row), or any JSON lines with a prompt and a list of answers (`samples`,
`answers` or `responses`), or a prompt with `answer_a` and `answer_b`. A prompt is a string or a
list of {role, content} messages (`prompt` or `messages`). Per prompt every pair of distinct
answers is formed, (0, 1), (0, 2), ..., (1, 2), ...; `max_pairs` keeps a seeded choice of them
(in the same order), so K = 8 answers need not cost 28 comparisons. Identical and empty answers
are dropped first: a pair of equal answers prefers nothing.

People favour one side (usually the first they read), so which answer is shown on the left is a
coin flip, seeded by the pair id: the same on every start, independent of the other pairs, and
recorded with each decision. Decisions are kept unswapped: the log says which of the pair's own
answers won, "a" (the earlier sample) or "b", or "tie", or "both_bad", and which key was pressed.

A decision is one answer event of the session's append-only log (`store.AnswerStore`, fsynced
before the request returns), so killing the server loses nothing, undo works across restarts
and the latest decision on a pair replaces earlier ones. The event holds the prompt and both
answers, so the log alone is the preference set: `preference_rows` writes the decided pairs as
{prompt, chosen, rejected, meta} rows that `tasks.chat.load_preferences` reads; ties and
both-bad decisions are left out and counted.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError
from lmforge.label.store import AnswerStore
from lmforge.records import json_lines

log = logging.getLogger(__name__)

# The keys of the page (left answer, right answer, neither wins, neither is any good) and what each records.
CHOICES = ("A", "B", "tie", "both_bad")
OUTCOMES = ("a", "b", "tie", "both_bad")
LIST_FIELDS = ("samples", "answers", "responses")


@dataclass
class Pair:
    """Two answers to one prompt, in the input's order (`a` is the earlier sample), and which is shown left."""

    id: str
    prompt_id: str
    prompt: str | list[dict[str, str]]
    a: str
    b: str
    a_index: int
    b_index: int
    swapped: bool = False  # True: b on the left
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The prompt as one text (a conversation as `role: content` lines), for the log and the page title."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)

    @property
    def left(self) -> str:
        return self.b if self.swapped else self.a

    @property
    def right(self) -> str:
        return self.a if self.swapped else self.b

    def outcome(self, choice: str) -> str:
        """The unswapped outcome of a key: A (left) or B (right) → "a" or "b"; tie and both_bad stay."""
        if choice not in CHOICES:
            raise InputError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
        if choice in ("A", "B"):
            return "a" if (choice == "A") != self.swapped else "b"
        return choice

    def shown(self, outcome: str) -> str:
        """The key that gives `outcome` with this pair's sides (the inverse of `outcome`)."""
        return next(c for c in CHOICES if self.outcome(c) == outcome)


def _unit(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`: Python's hash() changes between runs, this does not."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def coin(seed: int, pair_id: str) -> bool:
    """Whether the pair is shown swapped (b left): a fair coin per pair, the same on every start."""
    return _unit("side", seed, pair_id) < 0.5


def _prompt(row: dict[str, Any]) -> str | list[dict[str, str]]:
    from lmforge.tasks.chat import turns_from
    from lmforge.tasks.examples import check_turns

    value = row["messages"] if "messages" in row else row.get("prompt")
    if isinstance(value, list):
        return [t.to_dict() for t in check_turns(turns_from(value), need_assistant=False)]
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"no prompt: a row needs a `prompt` string or `messages` (fields: {', '.join(row) or 'none'})")
    return value


def _answers(row: dict[str, Any]) -> list[Any]:
    name = next((f for f in LIST_FIELDS if f in row), None)
    if name is not None:
        if not isinstance(row[name], list):
            raise InputError(f"{name} must be a list of answers (got {type(row[name]).__name__})")
        answers = row[name]
    elif "answer_a" in row and "answer_b" in row:
        answers = [row["answer_a"], row["answer_b"]]
    else:
        raise InputError(f"no answers: a row needs {', '.join(LIST_FIELDS)} (a list) or answer_a and answer_b "
                         f"(fields: {', '.join(row) or 'none'})")
    for i, a in enumerate(answers):
        if not isinstance(a, str):
            raise InputError(f"answer {i} is not a string (got {type(a).__name__})")
    return answers


def row_pairs(row: dict[str, Any], prompt_id: str, max_pairs: int | None = None, seed: int = 0
              ) -> tuple[list[Pair], Counter]:
    """The pairs of one row, and what was dropped (Counter: "duplicate", "empty")."""
    prompt = _prompt(row)
    dropped: Counter = Counter()
    kept: list[int] = []
    answers = _answers(row)
    seen: set[str] = set()
    for i, answer in enumerate(answers):
        key = answer.strip()
        if not key:
            dropped["empty"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(i)
    combos = list(itertools.combinations(kept, 2))
    if max_pairs is not None and len(combos) > max_pairs:
        rng = random.Random(int(_unit("pairs", seed, prompt_id) * 2**63))
        combos = [combos[k] for k in sorted(rng.sample(range(len(combos)), max_pairs))]
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    pairs = []
    for i, j in combos:
        pair_id = f"{prompt_id}:{i}-{j}"
        pairs.append(Pair(pair_id, prompt_id, prompt, answers[i], answers[j], i, j, coin(seed, pair_id), meta))
    return pairs, dropped


def load_pairs(path: str | Path, max_pairs: int | None = None, seed: int = 0) -> list[Pair]:
    """Every pair to compare in a JSON-lines file, prompt by prompt in file order (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset not found: {path}")
    if max_pairs is not None and max_pairs < 1:
        raise InputError(f"max_pairs must be at least 1 (got {max_pairs})")
    pairs: list[Pair] = []
    dropped: Counter = Counter()
    seen: set[str] = set()
    for lineno, row in json_lines(path):
        try:
            if not isinstance(row, dict):
                raise InputError(f"not a JSON object (got {type(row).__name__})")
            meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
            prompt_id = str(row.get("id", meta.get("id", lineno)))
            got, lost = row_pairs(row, prompt_id, max_pairs, seed)
        except InputError as exc:  # RowError (a bad message) included
            raise InputError(f"{path}:{lineno}: {exc}") from None
        if prompt_id in seen:
            raise InputError(f"{path}:{lineno}: id {prompt_id!r} appears twice")
        seen.add(prompt_id)
        pairs += got
        dropped += lost
    if dropped:
        log.warning("%s: %s left out of the pairs", path, ", ".join(f"{v} {k} answers" for k, v in dropped.items()))
    if not pairs:
        raise InputError(f"{path}: no pairs to compare (each prompt needs two different non-empty answers)")
    return pairs


class PairSession:
    """The pairs + the answer log, driven by the web app like `session.Session`; thread-safe."""

    kind = "pairwise"
    strategy = "order"
    labels = list(CHOICES)

    def __init__(self, pairs: Sequence[Pair], store: AnswerStore, *, annotator: str = "", name: str = "",
                 max_comment_chars: int = 2000) -> None:
        self.items = list(pairs)
        self.by_id = {p.id: i for i, p in enumerate(self.items)}
        if len(self.by_id) != len(self.items):
            raise InputError("two pairs have the same id")
        self.store, self.annotator, self.name = store, annotator, name
        self.max_comment_chars = max_comment_chars
        self.skipped: set[str] = set()
        self._lock = threading.RLock()

    def item(self, pair_id: str) -> Pair:
        if pair_id not in self.by_id:
            raise InputError(f"no pair {pair_id!r} in this dataset")
        return self.items[self.by_id[pair_id]]

    def next_item(self, exclude: Sequence[str] = ()) -> Pair | None:
        """The first undecided pair in order, skipped (and excluded) ones last; None when all are decided."""
        with self._lock:
            decided = self.store.current()
            open_ = [p for p in self.items if p.id not in decided]
            if not open_:
                return None
            fresh = [p for p in open_ if p.id not in self.skipped and p.id not in exclude]
            if not fresh:
                self.skipped.clear()
            return (fresh or open_)[0]

    def answer(self, pair_id: str, *, choice: Any, comment: str = "") -> dict[str, Any]:
        """Save one decision durably: `choice` is the key pressed (A = left, B = right, tie, both_bad)."""
        pair = self.item(pair_id)
        outcome = pair.outcome(choice)
        comment = comment.strip()
        if len(comment) > self.max_comment_chars:
            raise InputError(f"the comment is {len(comment):,} characters; at most {self.max_comment_chars:,} "
                             "are kept (--max-comment)")
        detail = {"prompt_id": pair.prompt_id, "prompt": pair.prompt, "a": pair.a, "b": pair.b,
                  "a_index": pair.a_index, "b_index": pair.b_index, "swapped": pair.swapped, "pressed": choice}
        with self._lock:
            event = self.store.answer(pair.id, pair.text, label=outcome, comment=comment, annotator=self.annotator,
                                      extra={"pair": detail})
            self.skipped.discard(pair.id)
            return event

    def undo(self) -> dict[str, Any] | None:
        with self._lock:
            return self.store.undo(self.annotator)

    def skip(self, pair_id: str) -> None:
        with self._lock:
            self.skipped.add(self.item(pair_id).id)

    def state(self) -> dict[str, Any]:
        decided = self.store.current()
        counts = Counter(e["label"] for e in decided.values())
        return {"name": self.name, "kind": self.kind, "labels": self.labels, "total": len(self.items),
                "answered": len(decided), "strategy": self.strategy, "model": "no model",
                "counts": {o: counts.get(o, 0) for o in OUTCOMES},
                "answers": {k: {f: v.get(f) for f in ("label", "comment", "annotator", "time")} |
                            {"pressed": v["pair"]["pressed"]} for k, v in decided.items() if "pair" in v}}


# --------------------------------------------------------------------------- the preference set


def is_pairwise_log(store: AnswerStore) -> bool:
    """Whether the log's decisions are pairwise ones; a log that mixes them with labels is refused."""
    standing = list(store.current().values())
    pairwise = sum("pair" in e for e in standing)
    if 0 < pairwise < len(standing):
        raise InputError(f"{store.path}: {pairwise} of {len(standing)} answers are pairwise decisions and the rest "
                         "labels; one log holds one kind")
    return bool(standing) and pairwise == len(standing)


@dataclass
class PreferenceSet:
    """The decided pairs as preference rows, and how many decisions gave none (ties, both bad)."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]  # decisions per outcome: a, b, tie, both_bad

    @property
    def left_out(self) -> dict[str, int]:
        return {"tie": self.counts["tie"], "both_bad": self.counts["both_bad"]}


def preference_rows(store: AnswerStore) -> PreferenceSet:
    """{prompt, chosen, rejected, meta} per pair decided a or b (its latest standing decision), in log order."""
    from lmforge.tasks.chat import preference_from_row

    if store.current() and not is_pairwise_log(store):
        raise InputError(f"{store.path}: not a pairwise log (its answers are labels: use kind classification or ner)")
    counts = dict.fromkeys(OUTCOMES, 0)
    rows = []
    for pair_id, event in store.current().items():
        outcome, pair = event["label"], event["pair"]
        if outcome not in OUTCOMES:
            raise InputError(f"{store.path}: pair {pair_id} has the outcome {outcome!r}, not one of {OUTCOMES}")
        counts[outcome] += 1
        if outcome not in ("a", "b"):
            continue
        win, lose = ("a", "b") if outcome == "a" else ("b", "a")
        row = {"id": pair_id, "prompt": pair["prompt"], "chosen": pair[win], "rejected": pair[lose],
               "meta": {"pair_id": pair_id, "prompt_id": pair["prompt_id"], "annotator": event.get("annotator", ""),
                        "comment": event.get("comment", ""), "chosen_index": pair[f"{win}_index"],
                        "rejected_index": pair[f"{lose}_index"], "swapped": pair["swapped"],
                        "pressed": pair["pressed"], "time": event.get("time"), "seq": event["seq"]}}
        try:
            preference_from_row(row)  # what load_preferences will read: refuse here, not at training time
        except InputError as exc:
            raise InputError(f"{store.path}: pair {pair_id}: {exc}") from None
        rows.append(row)
    return PreferenceSet(rows, counts)


def preference_examples(store: AnswerStore) -> list:
    """The decided pairs as `PreferenceExample`s (meta as written by `preference_rows`), for Python callers."""
    from lmforge.tasks.chat import preference_from_row

    out = []
    for row in preference_rows(store).rows:
        ex = preference_from_row(row)
        ex.meta.update({"id": row["id"], **row["meta"]})
        out.append(ex)
    return out


__all__ = ["CHOICES", "OUTCOMES", "Pair", "PairSession", "PreferenceSet", "coin", "is_pairwise_log", "load_pairs",
           "preference_examples", "preference_rows", "row_pairs"]
