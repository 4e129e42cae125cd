"""`lmforge augment RECIPE`: augment the training split of a labelled task, keep validation and test as they are.

```yaml
augment:
  data: {builtin: zh_sentiment, train_limit: 500}   # or {path: labels.jsonl, loader: {kind: ner}}
  seed: 0
  operations:                                       # applied in order, each to the original examples
    - eda: {num_aug: 4}
    - back_translate: {forward: models/zh-en, backward: models/en-zh}
```

The data is split first (exactly as `lmforge finetune` splits it for the same data options and
seed), then only training examples go through the operations, which are the pipeline stages of
the same names. An augmented text that equals a validation or test text (after NFKC, lowercasing
and whitespace folding) is dropped and counted, so evaluation can never see a training example's
copy. The output is `RUN/augmented.jsonl`, one example per line with its `split` and, for the
copies, `meta.augmented_from` and `meta.augment`; `lmforge finetune` reads it with `data: {path:
RUN/augmented.jsonl}` and keeps those splits. `RUN/stats.json` counts what each operation made.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lmforge.augment.backtranslate import BackTranslateConfig
from lmforge.augment.contextual import ContextualConfig
from lmforge.augment.stages import EdaStageConfig
from lmforge.config import StrictModel
from lmforge.errors import ConfigError
from lmforge.finetune.config import TaskDataConfig
from lmforge.finetune.data import Example, TaskData
from lmforge.records import Record, make_id

log = logging.getLogger(__name__)

OPERATIONS = ("eda", "back_translate", "contextual_substitute")


class Operation(StrictModel):
    """One entry of `operations`: a single-key mapping such as `- eda: {num_aug: 4}`."""

    eda: EdaStageConfig | None = None
    back_translate: BackTranslateConfig | None = None
    contextual_substitute: ContextualConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):  # "- eda" means "- eda: {}"
            return {value: {}}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one(self) -> Operation:
        given = [name for name in OPERATIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"each operation is one of {', '.join(OPERATIONS)} (got {given or 'none'})")
        return self

    def spec(self) -> tuple[str, StrictModel]:
        name = next(n for n in OPERATIONS if getattr(self, n) is not None)
        return name, getattr(self, name)


class AugmentTaskConfig(StrictModel):
    """The recipe's `augment:` section."""

    data: TaskDataConfig
    seed: int = Field(0, description="splits the data and seeds every operation that sets no seed of its own")
    operations: list[Operation] = Field(min_length=1)


@dataclass
class AugmentResult:
    out_dir: Path
    path: Path
    data: TaskData
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def load_labelled(d: TaskDataConfig, seed: int) -> TaskData:
    """The task's splits, drawn as `lmforge finetune` draws them for the same options and seed."""
    from lmforge.finetune.data import make_task, split

    if d.builtin is not None:
        from lmforge.finetune.builtin_tasks import load_task

        data = load_task(d.builtin, **{"seed": seed, **d.options})
    else:
        from lmforge.finetune.loaders import load_examples

        data = make_task(d.loader.kind, load_examples(d.path, d.loader), val_frac=d.val_frac,
                         test_frac=d.test_frac, seed=seed)
    if data.kind not in ("classification", "ner"):
        raise ConfigError(f"augment.data: augmentation needs a classification or ner task (got {data.kind!r})")
    if d.train_limit is not None and d.train_limit < len(data.train):
        keep = d.train_limit / len(data.train)  # the stratified draw finetune's train_limit makes
        by = "label" if data.kind == "classification" else None
        data.train, _, _ = split(data.train, val_frac=1 - keep, test_frac=0.0, seed=seed, stratify_by=by)
        data.train = data.train[: d.train_limit]
    return data


def bio_spans(tokens: list[str], tags: list[str], starts: list[int]) -> list[tuple[int, int, str]]:
    """Character spans of BIO entities, given each token's start offset in the joined text."""
    spans: list[tuple[int, int, str]] = []
    open_: list[Any] | None = None
    for tok, tag, start in zip(tokens, tags, starts, strict=True):
        end = start + len(tok)
        if tag.startswith("I-") and open_ is not None and open_[2] == tag[2:]:
            open_[1] = end
            continue
        if open_ is not None:
            spans.append(tuple(open_))  # type: ignore[arg-type]
            open_ = None
        if tag != "O":
            open_ = [start, end, tag[2:]]
    if open_ is not None:
        spans.append(tuple(open_))  # type: ignore[arg-type]
    return spans


def char_tokens(ex: Example) -> bool:
    """Whether an NER example has one token per character (Chinese), so its text joins without spaces."""
    return all(len(t) == 1 for t in ex.tokens)


def example_record(ex: Example, kind: str, index: int, lang: str = "") -> Record:
    """The example as a labelled record; an example without meta["id"] gets one, which its copies refer to."""
    rid = ex.meta.setdefault("id", make_id("augment", f"{index}:{ex.text or ' '.join(ex.tokens)}"))
    if kind == "classification":
        return Record(id=rid, text=ex.text, lang=lang, meta={"label": ex.label, "split": "train"})
    sep = "" if char_tokens(ex) else " "
    starts, pos = [], 0
    for tok in ex.tokens:
        starts.append(pos)
        pos += len(tok) + len(sep)
    spans = [list(s) for s in bio_spans(ex.tokens, ex.tags, starts)]
    return Record(id=rid, text=sep.join(ex.tokens), lang=lang, meta={"label": spans, "split": "train"})


def record_example(record: Record, kind: str, chars: bool) -> Example:
    meta = {"id": record.id, "augmented_from": record.meta["augmented_from"], "augment": record.meta["augment"]}
    if kind == "classification":
        return Example(text=record.text, label=record.meta["label"], meta=meta)
    tokens = list(record.text) if chars else record.text.split()
    starts, pos = [], 0
    for tok in tokens:
        pos = record.text.index(tok, pos)
        starts.append(pos)
        pos += len(tok)
    tags = ["O"] * len(tokens)
    for s, e, label in record.meta["label"]:
        inside = [i for i, st in enumerate(starts) if st < e and st + len(tokens[i]) > s]
        for n, i in enumerate(inside):
            tags[i] = f"{'B' if n == 0 else 'I'}-{label}"
    return Example(text=record.text, tokens=tokens, tags=tags, meta=meta)


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


# --------------------------------------------------------------------------- augmenting


def augment_examples(examples: list[Example], kind: str, operations: list[Operation], seed: int = 0,
                     lang: str = "") -> tuple[list[Example], dict[str, Any]]:
    """The augmented copies of `examples` (training examples) and per-operation stats.

    Every operation sees the original examples, not another operation's copies.
    """
    from lmforge.pipeline.registry import resolve_stage
    from lmforge.pipeline.stage import run_chain

    records = [example_record(ex, kind, i, lang) for i, ex in enumerate(examples)]
    chars = {r.id: kind == "ner" and char_tokens(ex) for r, ex in zip(records, examples, strict=True)}
    stages, used = [], set()
    for i, op in enumerate(operations):
        name, cfg = op.spec()
        update: dict[str, Any] = {"label_field": "label", "split_field": "split", "splits": ["train"],
                                  "assign_splits": None}
        if "seed" not in cfg.model_fields_set:  # a second operation of one kind gets the next seed
            update["seed"] = seed + sum(1 for n, _ in used if n == name)
        key = (name, update.get("seed", getattr(cfg, "seed", 0)))
        if key in used:
            raise ConfigError(f"augment.operations[{i}]: another {name} already uses seed {key[1]}; "
                              "its copies would repeat the first one's: give it another seed")
        used.add(key)
        stages.append(resolve_stage(name)(cfg.model_copy(update=update)))
    out, stats = run_chain(stages, records)
    copies = [record_example(r, kind, chars[r.meta["augmented_from"]]) for r in out if "augmented_from" in r.meta]
    names = [st.name for st in stats]
    return copies, {(n if names.count(n) == 1 else f"{n}[{i}]"): st.to_dict() for i, (n, st) in enumerate(zip(names, stats,
                                                                                                         strict=True))}


def augment_task(data: TaskData, operations: list[Operation], seed: int = 0) -> tuple[TaskData, dict[str, Any]]:
    """A copy of `data` whose training split also holds the augmented examples; val and test unchanged."""
    lang = str(data.meta.get("lang", "")) if data.meta.get("lang") in ("zh", "en") else ""
    copies, stats = augment_examples(data.train, data.kind, operations, seed, lang)
    held_out = {_norm(e.text or "".join(e.tokens)) for e in data.val + data.test}
    kept = [c for c in copies if _norm(c.text or "".join(c.tokens)) not in held_out]
    report = {"train": len(data.train), "augmented": len(kept), "leak_dropped": len(copies) - len(kept),
              "val": len(data.val), "test": len(data.test), "operations": stats}
    if len(kept) < len(copies):
        log.info("dropped %d augmented examples equal to a validation or test text", len(copies) - len(kept))
    out = TaskData(kind=data.kind, train=data.train + kept, val=list(data.val), test=list(data.test),
                   labels=list(data.labels), meta={**data.meta, "augmented": {k: v for k, v in report.items()
                                                                                if k != "operations"}})
    return out, report


def write_examples(path: Path, data: TaskData) -> int:
    """One JSON object per example with its split; copies keep `meta.augmented_from` and `meta.augment`."""
    from lmforge.records import atomic_path

    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for name, rows in data.splits().items():
            for ex in rows:
                row: dict[str, Any] = {"id": ex.meta.get("id")} if ex.meta.get("id") else {}
                row.update({k: v for k, v in ex.to_dict().items() if k != "meta"})
                if data.kind == "ner":
                    row.pop("text", None)
                row["split"] = name
                if "augmented_from" in ex.meta:
                    row["meta"] = {"augmented_from": ex.meta["augmented_from"], "augment": ex.meta["augment"]}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    return n


def run_augment(config: AugmentTaskConfig, out_dir: str | Path, recipe: dict[str, Any] | None = None) -> AugmentResult:
    """Load the task, augment its training split, write RUN/augmented.jsonl, stats.json and config.yaml."""
    import yaml

    from lmforge.records import atomic_path, write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_labelled(config.data, config.seed)
    augmented, report = augment_task(data, config.operations, config.seed)
    path = out / "augmented.jsonl"
    write_examples(path, augmented)
    stats = {**report, "seconds": round(time.perf_counter() - t0, 3), "kind": data.kind, "labels": data.labels,
             "source": {k: data.meta.get(k) for k in ("name", "source", "license") if k in data.meta}}
    write_json_atomic(out / "stats.json", stats)
    with atomic_path(out / "config.yaml") as tmp:
        resolved = recipe or {"augment": config.model_dump(mode="json", exclude_none=True)}
        tmp.write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return AugmentResult(out, path, augmented, stats)
