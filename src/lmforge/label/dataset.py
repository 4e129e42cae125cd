"""Labelled datasets from labelled files or records: splits without leakage, k-fold, and saving.

A split is only worth its score if the test texts were never seen in training. Exact copies are
easy to remove, but reviews, news sentences and documentation paragraphs also come in
near-copies (a trailing "!!", a changed number, a re-posted review). Here every group of
identical or near-identical texts is found first, with the deduplication stage's own normalised
hash and MinHash-LSH code, and a whole group always goes to one split. `check_leakage` runs the
same search across finished splits, so a split made elsewhere can be audited too.

Examples are `lmforge.tasks` examples and the result a `TaskData`, so everything made here
trains with `lmforge finetune` as it is.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmforge.dedup.minhash import MinHashConfig
from lmforge.errors import ConfigError, InputError
from lmforge.tasks.examples import (
    ClassificationExample,
    Example,
    InstructionExample,
    Kind,
    NerExample,
    TaskData,
)
from lmforge.tasks.splits import dedupe_examples, make_task, split, stratum

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Format = Literal["jsonl", "csv", "hf"]
# Short texts (a review, one sentence) have few shingles: 3-character and 3-word shingles keep a
# one-character edit from changing most of them; the rest is the dedup stage's published default.
NEAR_DUPLICATES = MinHashConfig(char_ngram=3, word_ngram=3, threshold=0.8)


# --------------------------------------------------------------------------- near-duplicate search


@dataclass(frozen=True)
class DuplicatePair:
    """Two texts (by index) that are identical after normalisation ("exact") or near-identical."""

    a: int
    b: int
    kind: Literal["exact", "near"]
    similarity: float


def duplicate_pairs(texts: Sequence[str], config: MinHashConfig | None = NEAR_DUPLICATES) -> list[DuplicatePair]:
    """Every pair of identical or near-identical texts, a < b, found without comparing all pairs.

    Exact: equal `dedup.exact.dedup_key` (NFKC, lower case, whitespace collapsed). Near: the
    MinHash-LSH candidates of `config` whose signatures agree often enough for Jaccard similarity
    `config.threshold` (the check `minhash_dedup` uses); `similarity` is the signature estimate.
    `config=None` finds exact copies only.
    """
    from lmforge.dedup.exact import dedup_key

    pairs: dict[tuple[int, int], DuplicatePair] = {}
    first: dict[int, list[int]] = {}
    for i, text in enumerate(texts):
        first.setdefault(dedup_key(text), []).append(i)
    for members in first.values():
        for j, b in enumerate(members[1:], start=1):
            for a in members[:j]:
                pairs[(a, b)] = DuplicatePair(a, b, "exact", 1.0)
    if config is not None and len(texts) > 1:
        for a, b, sim in _near_pairs(texts, config):
            pairs.setdefault((a, b), DuplicatePair(a, b, "near", sim))
    return sorted(pairs.values(), key=lambda p: (p.a, p.b))


def _near_pairs(texts: Sequence[str], cfg: MinHashConfig) -> list[tuple[int, int, float]]:
    from lmforge.dedup import minhash_cluster as mc
    from lmforge.dedup.minhash_hashing import MinHasher, Shingler, band_hashes

    mode = np.full(len(texts), -1 if cfg.shingle == "auto" else int(cfg.shingle == "char"), dtype=np.int8)
    hashes, docs, _ = Shingler(cfg.word_ngram, cfg.char_ngram, cfg.seed).shingles([t.lower() for t in texts], mode)
    sig = MinHasher(cfg.num_perm, cfg.seed).signatures(hashes, docs, len(texts))
    members = np.flatnonzero(np.bincount(docs, minlength=len(texts)) > 0)
    bands = band_hashes(sig, cfg.bands, cfg.rows, cfg.seed)
    keys = np.zeros(0, dtype=np.int64)
    for j in range(cfg.bands):
        u, v = mc.bucket_pairs(bands[members, j], members, all_pairs_up_to=8)
        keys = np.union1d(keys, u * len(texts) + v)
    u, v = np.divmod(keys, len(texts))
    agree = (sig[u] == sig[v]).sum(axis=1)
    ok = agree >= mc.agreement_needed(cfg.num_perm, cfg.threshold)
    return [(int(a), int(b), round(float(n) / cfg.num_perm, 4)) for a, b, n in zip(u[ok], v[ok], agree[ok], strict=True)]


def duplicate_groups(texts: Sequence[str], config: MinHashConfig | None = NEAR_DUPLICATES) -> np.ndarray:
    """Group number per text (the smallest index in its group): texts linked by duplicate pairs share one."""
    from lmforge.dedup import minhash_cluster as mc

    parent = np.arange(len(texts), dtype=np.int64)
    pairs = duplicate_pairs(texts, config)
    if pairs:
        mc.union(parent, np.array([p.a for p in pairs]), np.array([p.b for p in pairs]))
    return parent


# --------------------------------------------------------------------------- leakage


@dataclass
class LeakageReport:
    """Pairs of (near-)identical texts that sit in two different splits."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.pairs

    def counts(self) -> dict[str, int]:
        """Leaking pairs per split pair and kind, e.g. {"train/test exact": 2}."""
        return dict(sorted(Counter(f"{p['split_a']}/{p['split_b']} {p['kind']}" for p in self.pairs).items()))

    def to_dict(self, max_pairs: int = 20) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "leaking_pairs": len(self.pairs), "counts": self.counts(),
                "examples": self.pairs[:max_pairs]}


def check_leakage(splits: dict[str, Sequence[Example]], config: MinHashConfig | None = NEAR_DUPLICATES) -> LeakageReport:
    """Every identical or near-identical pair of texts across two different splits."""
    names, index, texts = [], [], []
    for name, rows in splits.items():
        for i, ex in enumerate(rows):
            names.append(name)
            index.append(i)
            texts.append(ex.input_text)
    report = LeakageReport(checked={name: len(rows) for name, rows in splits.items()})
    for p in duplicate_pairs(texts, config):
        if names[p.a] != names[p.b]:
            report.pairs.append({"split_a": names[p.a], "index_a": index[p.a], "split_b": names[p.b],
                                 "index_b": index[p.b], "kind": p.kind, "similarity": p.similarity,
                                 "text_a": texts[p.a][:80], "text_b": texts[p.b][:80]})
    return report


# --------------------------------------------------------------------------- splits


def _grouped(examples: Sequence[Example], config: MinHashConfig | None) -> tuple[list[Example], list[list[int]]]:
    """One representative per duplicate group (its first member) and the members of each group."""
    groups = duplicate_groups([e.input_text for e in examples], config)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    ordered = sorted(members.values())
    return [examples[m[0]] for m in ordered], ordered


def leakage_free_split(examples: Sequence[Example], val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0,
                       stratify_by: str | Callable[[Example], Hashable] | None = "label",
                       near_duplicates: MinHashConfig | None = NEAR_DUPLICATES
                       ) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, val, test) like `tasks.splits.split`, but every duplicate group lands in one split.

    The groups' first members are split (stratified by their label), then each group follows its
    first member; fractions therefore hold for groups, and to within a group's size for examples.
    """
    reps, groups = _grouped(list(examples), near_duplicates)
    group_of = {id(r): g for r, g in zip(reps, groups, strict=True)}
    parts = split(reps, val_frac, test_frac, seed, stratify_by=stratify_by)
    return tuple([examples[i] for r in part for i in group_of[id(r)]] for part in parts)  # type: ignore[return-value]


def kfold(examples: Sequence[Example], k: int = 5, seed: int = 0,
          stratify_by: str | Callable[[Example], Hashable] | None = "label",
          near_duplicates: MinHashConfig | None = NEAR_DUPLICATES) -> list[tuple[list[Example], list[Example]]]:
    """k (train, held_out) pairs; each example is held out exactly once, duplicate groups stay together.

    Within each stratum the groups are shuffled with `seed` and each goes to the fold that so far
    holds the fewest examples of that stratum, so every fold has about the same class mix.
    """
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"k must be an integer of at least 2 (got {k!r})")
    reps, groups = _grouped(list(examples), near_duplicates)
    if len(reps) < k:
        raise InputError(f"{len(reps)} distinct texts cannot make {k} folds")
    key = stratum(stratify_by)
    strata: dict[Hashable, list[int]] = {}
    for g, rep in enumerate(reps):
        strata.setdefault(key(rep), []).append(g)
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(reps), dtype=np.int64)
    totals = np.zeros(k, dtype=np.int64)
    for name in sorted(strata, key=repr):
        order = [strata[name][i] for i in rng.permutation(len(strata[name]))]
        filled = np.zeros(k, dtype=np.int64)
        for g in order:
            f = int(np.lexsort((np.arange(k), totals, filled))[0])  # fewest of this stratum, then overall
            fold_of[g] = f
            filled[f] += len(groups[g])
            totals[f] += len(groups[g])
    folds = []
    for f in range(k):
        held = [examples[i] for g in np.flatnonzero(fold_of == f) for i in groups[g]]
        train = [examples[i] for g in np.flatnonzero(fold_of != f) for i in groups[g]]
        folds.append((train, held))
    return folds


# --------------------------------------------------------------------------- building


def build_dataset(examples: Sequence[Example], kind: Kind = "classification", *, val_frac: float = 0.1,
                  test_frac: float = 0.1, seed: int = 0, labels: Sequence[str] | None = None,
                  near_duplicates: MinHashConfig | None = NEAR_DUPLICATES, meta: dict[str, Any] | None = None
                  ) -> TaskData:
    """A `TaskData` with leakage-free splits and the leakage check's report in `meta["leakage"]`.

    Exact repeats are removed first (an input labelled two ways is dropped, see
    `dedupe_examples`). Splits already given in every example's meta["split"] are kept and only
    audited; a warning names the leaking pairs. Otherwise the splits are drawn with
    `leakage_free_split`, stratified by label for classification.
    """
    rows = dedupe_examples(examples, kind)
    if not rows:
        raise InputError(f"no {kind} examples to build a dataset from")
    given = all(str(e.meta.get("split", "")).lower() in ("train", "val", "validation", "dev", "test") for e in rows)
    if not given:
        parts = leakage_free_split(rows, val_frac, test_frac, seed, "label" if kind == "classification" else None,
                                   near_duplicates)
        rows = []
        for name, part in zip(SPLITS, parts, strict=True):
            rows += [replace(ex, meta={**ex.meta, "split": name}) for ex in part]
    task = make_task(kind, rows, labels=labels, dedupe=False, meta=dict(meta or {}))
    report = check_leakage(task.splits(), near_duplicates)
    if not report.ok:
        log.warning("%d pairs of (near-)identical texts across the given splits: %s", len(report.pairs),
                    ", ".join(f"{v} {k}" for k, v in report.counts().items()))
    task.meta["leakage"] = report.to_dict()
    task.meta["split"] = {"seed": seed, "val_frac": val_frac, "test_frac": test_frac, "given": given,
                          "near_duplicates": None if near_duplicates is None else near_duplicates.model_dump()}
    return task


def load_source(source: str | Path, kind: Kind | None = None, **loader: Any) -> tuple[list[Example], Kind]:
    """Examples and their kind from `builtin:NAME` (all splits, re-split later) or any file `load_examples` reads."""
    from lmforge.tasks.loaders import load_examples

    text = str(source)
    if text.startswith("builtin:"):
        from lmforge.tasks.builtin import load_task

        task = load_task(text.split(":", 1)[1])
        rows = [replace(e, meta={k: v for k, v in e.meta.items() if k != "split"})
                for e in task.train + task.val + task.test]
        return rows, task.kind
    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        task = load_hf(path)
        return task.train + task.val + task.test, task.kind
    if path.is_dir() and (path / "task.json").is_file():
        task = TaskData.load(path)
        return task.train + task.val + task.test, task.kind
    return load_examples(path, kind=kind or "classification", **loader), kind or "classification"


# --------------------------------------------------------------------------- saving


def save_dataset(task: TaskData, out: str | Path, fmt: Format = "jsonl") -> Path:
    """Write the splits as JSONL (`TaskData.save`), CSV files, or a `datasets` DatasetDict directory."""
    out = Path(out)
    if fmt == "jsonl":
        return task.save(out)
    if fmt == "csv":
        return _save_csv(task, out)
    if fmt == "hf":
        return _save_hf(task, out)
    raise ConfigError(f"format must be one of jsonl, csv, hf (got {fmt!r})")


def _columns(kind: str) -> list[str]:
    return {"classification": ["text", "label"], "ner": ["text", "tokens", "tags"],
            "instruction": ["prompt", "response"]}[kind]


def _save_csv(task: TaskData, out: Path) -> Path:
    """One CSV per split with a header; NER tokens and tags are space-separated, as `load_csv` reads them."""
    import csv

    from lmforge.records import atomic_path, write_json_atomic

    columns = _columns(task.kind)
    for name, rows in task.splits().items():
        with atomic_path(out / f"{name}.csv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for ex in rows:
                writer.writerow([" ".join(v) if isinstance(v := getattr(ex, c), list) else v for c in columns])
    write_json_atomic(out / "task.json", {"kind": task.kind, "labels": task.labels, "format": "csv",
                                          "sizes": {k: len(v) for k, v in task.splits().items()}, "meta": task.meta})
    return out


def _save_hf(task: TaskData, out: Path) -> Path:
    """A DatasetDict (train/validation/test) with ClassLabel features, so `datasets.load_from_disk` gives label ids."""
    from lmforge.errors import require

    datasets = require("datasets", "data")
    if task.kind == "classification":
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=list(task.labels))})
    elif task.kind == "ner":
        features = datasets.Features({"text": datasets.Value("string"),
                                      "tokens": datasets.Sequence(datasets.Value("string")),
                                      "tags": datasets.Sequence(datasets.ClassLabel(names=list(task.labels)))})
    else:
        features = datasets.Features({"prompt": datasets.Value("string"), "response": datasets.Value("string")})
    features["meta"] = datasets.Value("string")
    parts = {}
    for name, rows in task.splits().items():
        columns = {c: [getattr(e, c) for e in rows] for c in _columns(task.kind)}
        columns["meta"] = [json.dumps(e.meta, ensure_ascii=False) for e in rows]
        parts["validation" if name == "val" else name] = datasets.Dataset.from_dict(columns, features=features)
    dd = datasets.DatasetDict(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(out))
    (out / "lmforge_task.json").write_text(json.dumps({"kind": task.kind, "labels": task.labels, "meta": task.meta},
                                                      ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def load_hf(path: str | Path) -> TaskData:
    """A TaskData from a DatasetDict directory written by `save_dataset(..., "hf")` (or shaped like one)."""
    from lmforge.errors import require

    datasets = require("datasets", "data")
    path = Path(path)
    try:
        dd = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: not a saved datasets directory ({exc})") from None
    info_file = path / "lmforge_task.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    first = dd[next(iter(dd))]
    kind = info.get("kind") or ("ner" if "tags" in first.column_names else
                                "instruction" if "prompt" in first.column_names else "classification")
    parts: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for name, ds in dd.items():
        target = {"validation": "val", "valid": "val", "dev": "val"}.get(name, name)
        if target not in parts:
            raise InputError(f"{path}: split {name!r} is not train, validation or test")
        parts[target] = [_from_hf_row(row, ds.features, kind) for row in ds]
    labels = info.get("labels") or _hf_labels(first.features, kind)
    return TaskData(kind=kind, labels=list(labels), meta=info.get("meta", {}), **parts)


def _hf_labels(features: Any, kind: str) -> list[str]:
    column = {"classification": "label", "ner": "tags"}.get(kind)
    feature = features.get(column) if column else None
    feature = getattr(feature, "feature", feature)
    return list(getattr(feature, "names", []) or [])


def _from_hf_row(row: dict[str, Any], features: Any, kind: str) -> Example:
    names = _hf_labels(features, kind)
    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else {}
    if kind == "classification":
        label = row["label"]
        return ClassificationExample(text=row["text"], label=names[label] if names and isinstance(label, int) else str(label),
                                     meta=meta)
    if kind == "ner":
        tags = [names[t] if names and isinstance(t, int) else t for t in row["tags"]]
        return NerExample(tokens=list(row["tokens"]), tags=tags, text=row.get("text") or "", meta=meta)
    return InstructionExample(prompt=row["prompt"], response=row["response"], meta=meta)


def describe(task: TaskData) -> dict[str, Any]:
    """Sizes, label counts per split and the leakage summary, for printing."""
    leak = task.meta.get("leakage") or {}
    return {"kind": task.kind, "sizes": {k: len(v) for k, v in task.splits().items()}, "labels": task.labels,
            "label_counts": task.label_counts() if task.kind == "classification" else {},
            "leaking_pairs": leak.get("leaking_pairs"), **({"leakage": leak.get("counts")} if leak else {})}


__all__ = ["DuplicatePair", "LeakageReport", "build_dataset", "check_leakage", "describe", "duplicate_groups",
           "duplicate_pairs", "kfold", "leakage_free_split", "load_hf", "load_source", "save_dataset"]
