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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmforge.config import StrictModel
from lmforge.errors import ConfigError
from lmforge.finetune.config import TaskDataConfig
from lmforge.pipeline.registry import OPERATION, operation_names, typed_entries
from lmforge.records import Record, make_id
from lmforge.tasks.examples import ClassificationExample, Example, NerExample, TaskData
from lmforge.tasks.spans import join_tokens, locate_tokens, spans_to_tags, tags_to_spans

log = logging.getLogger(__name__)

OPERATIONS = operation_names()  # the registry's augment operations: eda, back_translate, contextual_substitute


class Operation(BaseModel):
    """One entry of `operations`: a single-key mapping such as `- eda: {num_aug: 4}`, typed by the stage's Config."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _one_typed(cls, value: Any) -> Any:
        if isinstance(value, str):  # "- eda" means "- eda: {}"
            value = {value: {}}
        if not isinstance(value, dict):
            return value
        given = typed_entries({k: ({} if v is None else v) for k, v in value.items()}, OPERATION, cls.__name__)
        if len(given) != 1:
            raise ValueError(f"each operation is one of {', '.join(OPERATIONS)} (got {list(given) or 'none'})")
        return given

    def spec(self) -> tuple[str, StrictModel]:
        (name, config), = (self.__pydantic_extra__ or {}).items()
        return name, config


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
    from lmforge.tasks.splits import make_task, split

    if d.builtin is not None:
        from lmforge.tasks.builtin import load_task

        data = load_task(d.builtin, **{"seed": seed, **d.options})
    else:
        from lmforge.tasks.loaders import load_examples

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


def char_tokens(ex: Example) -> bool:
    """Whether an NER example has one token per character (Chinese), so its text joins without spaces."""
    return all(len(t) == 1 for t in ex.tokens)


def example_record(ex: Example, kind: str, index: int, lang: str = "") -> Record:
    """The example as a labelled record; an example without meta["id"] gets one, which its copies refer to."""
    rid = ex.meta.setdefault("id", make_id("augment", f"{index}:{ex.input_text}"))
    if kind == "classification":
        return Record(id=rid, text=ex.text, lang=lang, meta={"label": ex.label, "split": "train"})
    text, offsets = join_tokens(ex.tokens, "" if char_tokens(ex) else " ")
    spans = [list(s) for s in tags_to_spans(ex.tags, offsets)]
    return Record(id=rid, text=text, lang=lang, meta={"label": spans, "split": "train"})


def record_example(record: Record, kind: str, chars: bool) -> Example:
    meta = {"id": record.id, "augmented_from": record.meta["augmented_from"], "augment": record.meta["augment"]}
    if kind == "classification":
        return ClassificationExample(text=record.text, label=record.meta["label"], meta=meta)
    tokens = list(record.text) if chars else record.text.split()
    spans = [tuple(s) for s in record.meta["label"]]
    tags, _ = spans_to_tags(locate_tokens(record.text, tokens), spans, len(record.text), empty="ignore")
    return NerExample(tokens=tokens, tags=tags, text=record.text, meta=meta)


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


def run_augment(config: AugmentTaskConfig, out_dir: str | Path) -> AugmentResult:
    """Load the task, augment its training split and write RUN/augmented.jsonl (the runner writes the rest)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_labelled(config.data, config.seed)
    augmented, report = augment_task(data, config.operations, config.seed)
    path = out / "augmented.jsonl"
    write_examples(path, augmented)
    stats = {**report, "seconds": round(time.perf_counter() - t0, 3), "kind": data.kind, "labels": data.labels,
             "source": {k: data.meta.get(k) for k in ("name", "source", "license") if k in data.meta}}
    return AugmentResult(out, path, augmented, stats)


def preview_run(run_dir: str | Path, n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Up to n (original, augmented copy) rows of a finished RUN/augmented.jsonl, in file order:
    what `lmforge augment --preview N` shows."""
    with open(Path(run_dir) / "augmented.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    originals = {r["id"]: r for r in rows if r.get("id") and "augmented_from" not in r.get("meta", {})}
    pairs = [(originals[r["meta"]["augmented_from"]], r) for r in rows
             if r.get("meta", {}).get("augmented_from") in originals]
    return pairs[:n]
