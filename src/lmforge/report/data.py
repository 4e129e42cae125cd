"""What the report reads about a run's data: the funnel, document samples, quarantine, tokenizer fertility.

A run may hold terabytes, so nothing here reads everything: distributions come from at most
`MAX_SHARDS` shards per stage, evenly spaced over the run (so early and late input are both
seen), and from at most `MAX_ROWS` records; the report says when it sampled. Only the columns
needed are read from Parquet (`text` and `lang` for lengths, never the bulky `meta`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.records import read_json

log = logging.getLogger(__name__)

MAX_SHARDS = 32
MAX_ROWS = 200_000
SNIPPET = 240
EXAMPLES_PER_REASON = 3


def load_stats(run_dir: Path) -> dict[str, Any] | None:
    """stats.json, or the same merged from the shard markers when a run stopped before writing it."""
    path = run_dir / "stats.json"
    if path.is_file():
        stats = read_json(path)
    elif (run_dir / "stages").is_dir():
        from lmforge.pipeline.runner import collect_stats

        stats = collect_stats(run_dir)
    else:
        return None
    return stats if stats.get("stages") else None


def read_stats_file(run_dir: Path) -> dict[str, Any]:
    """A run directory's stats.json as written; a missing or broken file is the user's mistake, said plainly."""
    from lmforge.errors import UserError

    path = run_dir / "stats.json"
    if not path.is_file():
        raise UserError(f"no stats.json in {run_dir}: is it a run directory of 'lmforge run' or 'lmforge demo'?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


def stage_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "stages"
    return sorted(p for p in root.glob("[0-9][0-9]-*") if p.is_dir()) if root.is_dir() else []


def output_dir(run_dir: Path, stats: dict[str, Any] | None) -> Path | None:
    if stats and stats.get("output"):
        return run_dir / stats["output"]
    dirs = stage_dirs(run_dir)
    return dirs[-1] if dirs else None


def pick_shards(stage_dir: Path, limit: int | None = None) -> tuple[list[Path], int]:
    """Up to `limit` (default MAX_SHARDS) finished output shards, evenly spaced, first and last
    included; and how many there are in all."""
    from lmforge.pipeline.shards import done_shard_ids, shard_path

    limit = max(2, limit or MAX_SHARDS)
    ids = done_shard_ids(stage_dir)
    total = len(ids)
    if total > limit:
        ids = [ids[round(i * (total - 1) / (limit - 1))] for i in range(limit)]
    return [shard_path(stage_dir, sid) for sid in ids], total


@dataclass
class DocSample:
    """Lengths (characters) and languages of documents read from one stage's output."""

    stage: str
    lengths: np.ndarray
    langs: np.ndarray
    shards_read: int
    shards_total: int

    @property
    def sampled(self) -> bool:
        return self.shards_read < self.shards_total

    def by_lang(self) -> dict[str, np.ndarray]:
        return {lang: self.lengths[self.langs == lang] for lang in self.lang_counts()}

    def lang_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.langs, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return {str(names[i]): int(counts[i]) for i in order}


def sample_docs(stage_dir: Path, max_rows: int | None = None) -> DocSample | None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards, total = pick_shards(stage_dir)
    if not shards:
        return None
    max_rows = max_rows or MAX_ROWS
    lengths, langs, read = [], [], 0
    rows = 0
    for path in shards:
        table = pq.read_table(path, columns=["text", "lang"])
        lengths.append(pc.fill_null(pc.utf8_length(table.column("text")), 0).to_numpy())
        langs.append(np.asarray([x or "unknown" for x in table.column("lang").to_pylist()], dtype=object))
        read += 1
        rows += table.num_rows
        if rows >= max_rows:
            break
    return DocSample(stage_dir.name.split("-", 1)[-1], np.concatenate(lengths).astype(np.int64),
                     np.concatenate(langs).astype(str), read, total)


# --------------------------------------------------------------------------- quarantine


@dataclass
class Quarantine:
    """Dropped records: a few examples per reason, and duplicate clusters per dedup stage."""

    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # stage -> cluster key -> size (kept document included)
    clusters: dict[str, dict[str, int]] = field(default_factory=dict)
    cluster_text: dict[str, dict[str, str]] = field(default_factory=dict)
    files_read: int = 0
    files_total: int = 0

    def size_distribution(self, stage: str) -> dict[int, int]:
        """Cluster size -> number of clusters of that size."""
        return dict(sorted(Counter(self.clusters[stage].values()).items()))

    def largest(self, stage: str, k: int = 5) -> list[tuple[int, str]]:
        sizes = self.clusters[stage]
        top = sorted(sizes, key=lambda key: (-sizes[key], key))[:k]
        return [(sizes[key], self.cluster_text[stage].get(key, "")) for key in top]


def _snippet(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def _evenly(items: list[Path], limit: int) -> list[Path]:
    if len(items) <= limit:
        return items
    return [items[round(i * (len(items) - 1) / (limit - 1))] for i in range(limit)]


def scan_quarantine(run_dir: Path, max_rows: int | None = None) -> Quarantine | None:
    """Read quarantine shards (text, url, meta); None when the run dropped nothing.

    Each stage directory gets an equal share of `max_rows` and at most MAX_SHARDS of its files,
    evenly spaced, so a huge early quarantine (say, non-HTML WARC members) never hides the
    dedup stages' clusters.
    """
    import pyarrow.parquet as pq

    per_stage = {d: sorted(d.glob("quarantine-*.parquet")) for d in stage_dirs(run_dir)}
    per_stage = {d: files for d, files in per_stage.items() if files}
    if not per_stage:
        return None
    budget = max(1, (max_rows or MAX_ROWS) // len(per_stage))
    q = Quarantine(files_total=sum(len(f) for f in per_stage.values()))
    dup_counts: dict[str, Counter] = {}
    for stage_dir, files in per_stage.items():
        rows = 0
        for path in _evenly(files, max(2, MAX_SHARDS)):
            if rows >= budget:
                break
            columns = [c for c in ("text", "url", "source", "meta") if c in pq.read_schema(path).names]
            table = pq.read_table(path, columns=columns).to_pydict()
            q.files_read += 1
            rows += len(table.get("meta", []))
            _scan_rows(q, table, stage_dir.name.split("-", 1)[-1], dup_counts)
    for stage, counts in dup_counts.items():
        q.clusters.setdefault(stage, {}).update({key: n + 1 for key, n in counts.items()})
    return q


def _scan_rows(q: Quarantine, table: dict[str, list], dir_stage: str, dup_counts: dict[str, Counter]) -> None:
    """Drop examples and duplicate clusters from one quarantine shard's columns."""
    texts, urls, sources = (table.get(c) or [None] * len(table.get("meta", [])) for c in ("text", "url", "source"))
    for i, raw in enumerate(table.get("meta", [])):
        try:
            meta = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except ValueError:
            meta = {}
        reason = str(meta.get("drop_reason") or "unknown")
        stage = str(meta.get("drop_stage") or dir_stage)
        found = q.examples.setdefault(reason, [])
        if len(found) < EXAMPLES_PER_REASON:
            found.append({"stage": stage, "text": _snippet(texts[i]), "where": urls[i] or sources[i] or ""})
        details = meta.get(stage)
        if not isinstance(details, dict):
            continue
        if details.get("cluster") is not None:
            key = str(details["cluster"])
            sizes = q.clusters.setdefault(stage, {})
            sizes[key] = max(sizes.get(key, 0), int(details.get("cluster_size") or 2))
        elif details.get("duplicate_of") is not None:
            key = str(details["duplicate_of"])
            dup_counts.setdefault(stage, Counter())[key] += 1
        else:
            continue
        q.cluster_text.setdefault(stage, {}).setdefault(key, _snippet(texts[i]))


# --------------------------------------------------------------------------- tokenizer


@dataclass
class Fertility:
    rows: list[Any]  # tokenize.report.Row per language
    vocab_size: int
    held_out: dict[str, bool]
    longest: dict[str, list[str]]


def fertility_by_language(run_dir: Path, out_dir: Path, val_percent: float, max_chars: int = 40_000,
                          max_langs: int = 6) -> Fertility | None:
    """Tokens per character and per word of the run's tokenizer, per language of the final corpus.

    Documents held out from tokenizer training (the pretraining validation split) are used when
    a language has enough of them, so fertility is measured on text the tokenizer did not see.
    """
    import pyarrow.parquet as pq

    tok_dir = run_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file() or out_dir is None or not out_dir.is_dir():
        return None
    from lmforge.tokenize.report import fertility, lmforge_encoder
    from lmforge.tokenize.shards import in_holdout

    held: dict[str, list[str]] = {}
    rest: dict[str, list[str]] = {}
    chars: Counter = Counter()
    shards, _ = pick_shards(out_dir)
    for path in shards:
        table = pq.read_table(path, columns=["id", "text", "lang"]).to_pydict()
        for rid, text, lang in zip(table["id"], table["text"], table["lang"], strict=True):
            lang = lang or "unknown"
            bucket = held if val_percent and in_holdout(rid, val_percent) else rest
            key = (lang, bucket is held)
            if text and chars[key] < max_chars:
                bucket.setdefault(lang, []).append(text)
                chars[key] += len(text)
        seen = set(held) | set(rest)
        if seen and all(chars[(lang, bool(val_percent))] >= max_chars for lang in seen):
            break
    langs = sorted(set(held) | set(rest), key=lambda k: -(chars[(k, True)] + chars[(k, False)]))[:max_langs]
    if not langs:
        return None
    samples, used_held = {}, {}
    for lang in langs:
        enough = chars[(lang, True)] >= min(max_chars, 2000)
        samples[lang] = held[lang] if enough else held.get(lang, []) + rest.get(lang, [])
        used_held[lang] = enough
    enc = lmforge_encoder(tok_dir, name="this run")
    rows = fertility([enc], samples)
    longest = {"Chinese": enc.longest(8, han=True), "other": enc.longest(8)}
    return Fertility(rows, enc.vocab_size, used_held, longest)


def read_jsonl(path: Path, limit: int = 100_000) -> list[dict[str, Any]]:
    """JSON lines, skipping a torn last line (a killed writer) and anything that is not an object."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(rows) >= limit:
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows
