"""Augmentation as pipeline stages: each record passes through, followed by its augmented copies.

A record is augmented when its split (`meta.split` by default) is one of `splits` (["train"]):
validation and test records pass unchanged, and every copy inherits its original's split, so
augmentation cannot leak a training example's paraphrase into evaluation data. Records without
a split pass unchanged too (counted as `no_split`), unless `assign_splits` gives them one from a
hash of their id: the same record always lands in the same split, in any shard or process, before
anything is augmented. Records that are themselves augmented copies are not augmented again.

The label is read from `meta.label` (`label_field`, a dotted path into meta): a string is a class
and is copied; a list is NER spans over the text ([start, end, type] or {start, end, label}),
which the operations keep intact and move with the text. A copy's id is derived from the
original's id, the stage, its seed and the copy's number (two stages of one kind in a pipeline need
different seeds), and its meta holds `augmented_from` (the original id)
and `augment` ({stage, op, changes, ...}).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lmforge.augment.eda import Augmented, EdaConfig
from lmforge.augment.text import detect_lang
from lmforge.config import StrictModel
from lmforge.pipeline.stage import Stage
from lmforge.records import Record, make_id
from lmforge.tasks.spans import format_spans, valid_spans

log = logging.getLogger(__name__)


class SplitAssign(StrictModel):
    """Fractions of unsplit records sent to validation and test (by a hash of id and seed); the rest is train."""

    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _room(self) -> SplitAssign:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be below 1 to leave training data (got {self.val + self.test:g})")
        return self


class AugmentCommon(StrictModel):
    """Options every augmentation stage shares."""

    num_aug: int = Field(4, ge=1, le=64, description="augmented copies tried per record")
    label_field: str = Field("label", description="dotted path in meta: a class name, or NER spans")
    split_field: str = Field("split", description="dotted path in meta holding train/val/test")
    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1, description="splits that are augmented")
    assign_splits: SplitAssign | None = Field(None, description="give records without a split one, by id hash")
    lang: Literal["auto", "zh", "en"] = Field("auto", description="auto: the record's lang, else detected")
    seed: int = 0


@dataclass(slots=True)
class Item:
    """One record to augment: its text, language, entity spans (NER) or None, and its own RNG."""

    text: str
    lang: str
    spans: list[tuple[int, int, str]] | None
    rng: random.Random


def meta_get(meta: dict[str, Any], path: str) -> Any:
    value: Any = meta
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def meta_set(meta: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        meta = meta.setdefault(part, {})
    meta[last] = value


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-like meta (dicts, lists, scalars), several times faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return copy.deepcopy(value) if isinstance(value, set | bytearray) else value


def hashed_split(record_id: str, seed: int, assign: SplitAssign) -> str:
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest(), "big") / 2**64
    return "test" if h < assign.test else "val" if h < assign.test + assign.val else "train"


class AugmentStage(Stage):
    """Base of the augmentation stages: picks the records to augment and emits the copies.

    Subclasses implement `augment_items(items) -> one list of Augmented per item`; records reach
    it in batches of `batch` (models translate or fill masks a batch at a time).
    """

    supports_ner: ClassVar[bool] = True

    @property
    def batch(self) -> int:
        return getattr(self.config, "batch_size", 1)

    def augment_items(self, items: list[Item]) -> list[list[Augmented]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        pending: list[Record] = []
        for record in records:
            pending.append(record)
            if len(pending) >= max(self.batch, 1):
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, records: list[Record]) -> Iterator[Record]:
        items = [self._item(r) for r in records]
        todo = [it for it in items if it is not None]
        results = iter(self.augment_items(todo) if todo else [])
        for record, item in zip(records, items, strict=True):
            yield record
            if item is None:
                continue
            outs = next(results)
            self.count("augmented_records" if outs else "no_augmentation")
            for k, aug in enumerate(outs):
                self.count(f"op_{aug.op}")
                yield self._copy(record, item, k, aug)

    def _item(self, record: Record) -> Item | None:
        """The record as an Item to augment, or None (counted by reason) when it must pass unchanged."""
        cfg: Any = self.config
        meta = record.meta
        if record.drop_reason or "augmented_from" in meta:
            return None
        split = meta_get(meta, cfg.split_field)
        if split is None and cfg.assign_splits is not None:
            split = hashed_split(record.id, cfg.seed, cfg.assign_splits)
            meta_set(meta, cfg.split_field, split)
        if split is None:
            self.count("no_split")
            return None
        if str(split) not in cfg.splits:
            self.count(f"split_{split}_kept_as_is")
            return None
        label = meta_get(meta, cfg.label_field)
        spans = None
        if label is None:
            self.count("no_label")
            return None
        if isinstance(label, list):
            spans = valid_spans(label, len(record.text))
            if spans is None:
                self.count("bad_spans")
                return None
            if not self.supports_ner:
                self.count("ner_not_supported")
                return None
        elif not isinstance(label, str | int | bool):
            self.count("bad_label")
            return None
        lang = detect_lang(record.text, record.lang) if cfg.lang == "auto" else cfg.lang
        rng = random.Random(f"{cfg.seed}:{self.name}:{record.id}")
        return Item(record.text, lang, spans, rng)

    def _copy(self, record: Record, item: Item, k: int, aug: Augmented) -> Record:
        cfg: Any = self.config
        meta = _copy_json(record.meta)
        if item.spans is not None:
            meta_set(meta, cfg.label_field, format_spans(aug.spans, meta_get(record.meta, cfg.label_field)))
        meta["augmented_from"] = record.id
        meta["augment"] = {"stage": self.name, "op": aug.op, "changes": aug.changes, **aug.details}
        return Record(id=make_id(record.id, f"augment:{self.name}:{cfg.seed}:{k}"), text=aug.text, source=record.source,
                      url=record.url, lang=record.lang, meta=meta, provenance=dict(record.provenance))


# --------------------------------------------------------------------------- the stages


class EdaStageConfig(AugmentCommon, EdaConfig):
    """EDA rates, synonym sources and protection, plus the options every augmentation stage shares."""


class EdaStage(AugmentStage):
    """Synonym replacement, random insertion, swap and deletion (lmforge.augment.eda)."""

    name = "eda"
    Config = EdaStageConfig

    def __init__(self, config=None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        from lmforge.augment.eda import Eda

        self._eda = Eda(self.config)

    def augment_items(self, items: list[Item]) -> list[list[Augmented]]:
        n = self.config.num_aug
        return [self._eda.augment(it.text, it.lang, it.rng, n, it.spans or ()) for it in items]

