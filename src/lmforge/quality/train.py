"""`lmforge quality train`: the training texts and their labels, from wherever the labels came from.

Labels arrive three ways, and one command takes all of them:
- rated documents: records whose meta holds a rating (`annotation.score`, from `lmforge quality
  annotate`), or JSONL/CSV/Label Studio/Parquet files with a label field (the labelling app, weak
  supervision), read by `tasks.loaders.load_examples` with `label_key` as the field or meta path;
- whole corpora: every document of `good` is labelled good, every one of `bad` bad.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lmforge.errors import InputError
from lmforge.quality.fast import QualityModel, train_quality_model

log = logging.getLogger(__name__)


def training_pairs(data: Sequence[str | Path] = (), label_key: str = "annotation.score",
                   good: Sequence[str | Path] = (), bad: Sequence[str | Path] = (),
                   on_error: Literal["raise", "skip"] = "raise") -> tuple[list[str], list[Any]]:
    """(texts, labels) from labelled files and from good/bad corpora, in the order given."""
    from lmforge.tasks.loaders import load_examples

    if not data and not (good and bad):
        raise InputError("give labelled data, or both --good and --bad corpora")
    texts: list[str] = []
    labels: list[Any] = []
    for path in data:
        if not Path(path).exists():
            raise InputError(f"{path}: no such file or directory")
        examples = load_examples(path, kind="classification", label_field=label_key, on_error=on_error)
        texts += [e.text for e in examples]
        labels += [e.label for e in examples]
        log.info("%s: %d labelled texts", path, len(examples))
    for name, corpora in (("good", good), ("bad", bad)):
        for path in corpora:
            found = record_texts(path)
            texts += found
            labels += [name] * len(found)
            log.info("%s: %d %s texts", path, len(found), name)
    log.info("labels: %s", ", ".join(f"{k} {v}" for k, v in sorted(Counter(map(str, labels)).items())))
    return texts, labels


def record_texts(path: str | Path) -> list[str]:
    """The non-empty texts of lmforge records (a run, a stage directory, a shard or a records JSONL file),
    quarantined ones left out: a corpus whose documents share one label."""
    from lmforge.records import read_jsonl, read_parquet
    from lmforge.tasks.loaders import record_files

    out: list[str] = []
    for file in record_files(Path(path)):
        reader = read_parquet(file) if file.suffix == ".parquet" else read_jsonl(file)
        out += [rec.text for rec in reader if not rec.drop_reason and rec.text.strip()]
    return out


def train_and_save(out: str | Path, data: Sequence[str | Path] = (), label_key: str = "annotation.score",
                   good: Sequence[str | Path] = (), bad: Sequence[str | Path] = (),
                   on_error: Literal["raise", "skip"] = "raise", **options: Any) -> QualityModel:
    """Train on the given sources (`options`: those of `fast.train_quality_model`) and save to `out`."""
    texts, labels = training_pairs(data, label_key, good, bad, on_error)
    model = train_quality_model(texts, labels, **options)
    model.metrics["label_counts"] = dict(sorted(Counter(map(str, labels)).items()))
    model.save(out)
    return model
