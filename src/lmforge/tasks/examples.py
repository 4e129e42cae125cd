"""Labelled examples, one type per task kind, and the `TaskData` that holds a task's splits.

Each kind has its own frozen type, so an example always has the fields its kind needs and no
others: `ClassificationExample` (text, label), `NerExample` (tokens and BIO tags, with the text
when known, so character spans can be derived), `InstructionExample` (prompt, response),
`ConversationExample` (role/content turns) and `PreferenceExample` (a prompt, a chosen and a
rejected answer). `meta` says where an example came from ("where", "id", "split", ...); it is
the one mutable part, so loaders can add to it.

Every type answers the same few questions, so splitting, deduplication and counting need not
know the kind: `identity()` (the input and its target, for removing repeats), `targets()` (what
label counts and class weights count), `input_text` (the text two splits must not share) and
`texts()` (every text it holds, for decontamination).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from lmforge.errors import InputError
from lmforge.tasks.spans import RowError, bio_to_spans, spans_to_bio

Kind = Literal["classification", "ner", "instruction"]
TaskKind = Literal["classification", "ner", "instruction", "conversation", "preference"]
KINDS: tuple[str, ...] = ("classification", "ner", "instruction")
TASK_KINDS: tuple[str, ...] = (*KINDS, "conversation", "preference")
ROLES = ("system", "user", "assistant", "tool")


def _filled(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Only the filled fields, so that saved JSONL stays readable."""
    return {k: v for k, v in pairs if v not in (None, "", [], {})}


@dataclass(frozen=True, slots=True)
class ClassificationExample:
    """A text and its class; `label` is None only for a text still waiting for one."""

    text: str
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "classification"

    @property
    def input_text(self) -> str:
        return self.text

    def texts(self) -> tuple[str, ...]:
        return (self.text,)

    def identity(self) -> tuple[Any, Any]:
        return self.text, self.label

    def targets(self) -> list[str]:
        return [str(self.label)]

    def to_dict(self) -> dict[str, Any]:
        return _filled([("text", self.text), ("label", self.label), ("meta", self.meta)])


@dataclass(frozen=True, slots=True)
class NerExample:
    """Tokens with one BIO tag each, and the text they come from when it is known.

    Tokens and tags are what a token-classification model trains on; files written as tokens
    (CoNLL style) have no text. `spans` gives the entities as character spans over the text, or
    over the tokens joined by spaces when there is none.
    """

    tokens: list[str]
    tags: list[str]
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "ner"

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise RowError(f"{len(self.tokens)} tokens but {len(self.tags)} tags")

    @classmethod
    def from_spans(cls, text: str, spans: Iterable[tuple[int, int, str]],
                   meta: dict[str, Any] | None = None) -> tuple[NerExample, int]:
        """The example of character spans over `text` (tokens by `tokenize_with_offsets`), and the overlapping spans dropped."""
        tokens, tags, dropped = spans_to_bio(text, spans)
        return cls(tokens=tokens, tags=tags, text=text, meta=dict(meta or {})), dropped

    @property
    def spans(self) -> list[tuple[int, int, str]]:
        return bio_to_spans(self.text or " ".join(self.tokens), self.tokens, self.tags)

    @property
    def input_text(self) -> str:
        return self.text or " ".join(self.tokens)

    def texts(self) -> tuple[str, ...]:
        return self.text, "".join(self.tokens)

    def identity(self) -> tuple[Any, Any]:
        return tuple(self.tokens), tuple(self.tags)

    def targets(self) -> list[str]:
        return list(self.tags)

    def to_dict(self) -> dict[str, Any]:
        return _filled([("text", self.text), ("tokens", self.tokens), ("tags", self.tags), ("meta", self.meta)])


@dataclass(frozen=True, slots=True)
class InstructionExample:
    """A prompt and the response a model should give; meta["task"] names the sub-task, if any."""

    prompt: str
    response: str
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "instruction"

    @property
    def input_text(self) -> str:
        return self.prompt

    def texts(self) -> tuple[str, ...]:
        return self.prompt, self.response

    def identity(self) -> tuple[Any, Any]:
        return self.prompt, self.response

    def targets(self) -> list[str]:
        return [str(self.meta.get("task", ""))]

    def to_dict(self) -> dict[str, Any]:
        return _filled([("prompt", self.prompt), ("response", self.response), ("meta", self.meta)])


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation: who speaks (system, user, assistant or tool) and what."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise RowError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise RowError(f"the content of a {self.role} turn must be a string (got {type(self.content).__name__})")

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def check_turns(turns: Sequence[Turn], need_assistant: bool = True) -> tuple[Turn, ...]:
    """The turns as a tuple, checked: not empty, a system turn only first, an assistant turn somewhere.

    A chat template puts the system prompt first; a conversation with no assistant turn has
    nothing for a model to learn to say.
    """
    if not turns:
        raise RowError("a conversation needs at least one turn")
    late = [i for i, t in enumerate(turns) if t.role == "system" and i > 0]
    if late:
        raise RowError(f"a system turn may only come first (turn {late[0]} is a system turn)")
    if need_assistant and not any(t.role == "assistant" for t in turns):
        raise RowError("a conversation needs at least one assistant turn")
    return tuple(turns)


@dataclass(frozen=True, slots=True)
class ConversationExample:
    """A conversation to learn the assistant's turns of (chat fine-tuning)."""

    messages: tuple[Turn, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "conversation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", check_turns(self.messages))

    @property
    def input_text(self) -> str:
        return "\n".join(t.content for t in self.messages if t.role != "assistant")

    def texts(self) -> tuple[str, ...]:
        return tuple(t.content for t in self.messages)

    def identity(self) -> tuple[Any, Any]:
        return self.messages, None  # several answers to one question are all kept

    def targets(self) -> list[str]:
        return [str(self.meta.get("task", ""))]

    def to_dict(self) -> dict[str, Any]:
        return _filled([("messages", [t.to_dict() for t in self.messages]), ("meta", self.meta)])


@dataclass(frozen=True, slots=True)
class PreferenceExample:
    """A prompt (text or conversation so far), the answer preferred and the one rejected (DPO)."""

    prompt: str | tuple[Turn, ...]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "preference"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            object.__setattr__(self, "prompt", check_turns(self.prompt, need_assistant=False))
        for name in ("chosen", "rejected"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RowError(f"{name} must be a non-empty string")
        if self.chosen == self.rejected:
            raise RowError("chosen and rejected are the same answer: the pair prefers nothing")

    @property
    def input_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(t.content for t in self.prompt if t.role != "assistant")

    def texts(self) -> tuple[str, ...]:
        prompt = (self.prompt,) if isinstance(self.prompt, str) else tuple(t.content for t in self.prompt)
        return (*prompt, self.chosen, self.rejected)

    def identity(self) -> tuple[Any, Any]:
        return (self.prompt, self.chosen, self.rejected), None  # one prompt may have several pairs

    def targets(self) -> list[str]:
        return [str(self.meta.get("task", ""))]

    def to_dict(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else [t.to_dict() for t in self.prompt]
        return _filled([("prompt", prompt), ("chosen", self.chosen), ("rejected", self.rejected), ("meta", self.meta)])


Example = ClassificationExample | NerExample | InstructionExample | ConversationExample | PreferenceExample
EXAMPLE_TYPES: dict[str, type] = {"classification": ClassificationExample, "ner": NerExample,
                                  "instruction": InstructionExample, "conversation": ConversationExample,
                                  "preference": PreferenceExample}


def turns_of(value: Any) -> tuple[Turn, ...]:
    """Turns from a list of {role, content} objects."""
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise RowError("messages must be a list of {role, content} objects")
    return tuple(Turn(role=t.get("role"), content=t.get("content")) for t in value)


def example_from_dict(kind: str, data: Mapping[str, Any]) -> Example:
    """The example of `kind` that `to_dict` wrote (missing fields take their empty value)."""
    meta = dict(data.get("meta") or {})
    if kind == "classification":
        return ClassificationExample(text=data.get("text", ""), label=data.get("label"), meta=meta)
    if kind == "ner":
        return NerExample(tokens=list(data.get("tokens", [])), tags=list(data.get("tags", [])),
                          text=data.get("text", ""), meta=meta)
    if kind == "instruction":
        return InstructionExample(prompt=data.get("prompt", ""), response=data.get("response", ""), meta=meta)
    if kind == "conversation":
        return ConversationExample(messages=turns_of(data.get("messages")), meta=meta)
    if kind == "preference":
        prompt = data.get("prompt", "")
        return PreferenceExample(prompt=prompt if isinstance(prompt, str) else turns_of(prompt),
                                 chosen=data.get("chosen", ""), rejected=data.get("rejected", ""), meta=meta)
    raise InputError(f"kind must be one of {', '.join(TASK_KINDS)} (got {kind!r})")


def targets(rows: Iterable[Example]) -> list[str]:
    """Classes (classification), tokens' tags (ner) or meta["task"] (the others), in order."""
    return [t for e in rows for t in e.targets()]


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


@dataclass
class TaskData:
    """A task ready to train on: its kind, three splits and the label set in a fixed order.

    `labels` is the class list for classification and the BIO tag list ("O" first) for NER, in
    the order a model's output layer uses; it is empty for the generative kinds. `meta` says
    where the data came from ("source", "license") and how it was built.
    """

    kind: TaskKind
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per split: examples per class, tokens per tag (ner), or examples per meta["task"] (the others)."""
        return {name: dict(sorted(Counter(targets(rows)).items())) for name, rows in self.splits().items()}

    def class_weights(self) -> list[float]:
        """Inverse-frequency weights of `labels` over the training split (classes or tags)."""
        return class_weights(targets(self.train), self.labels)

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
        read: Callable[[str], list[Example]] = lambda name: [  # noqa: E731
            example_from_dict(info["kind"], json.loads(line)) for line in _lines_of(directory / f"{name}.jsonl")]
        return cls(kind=info["kind"], labels=info["labels"], meta=info.get("meta", {}),
                   train=read("train"), val=read("val"), test=read("test"))


def _lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
