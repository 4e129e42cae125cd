"""Corpus-level line (or paragraph) deduplication: boilerplate that repeats across many documents.

A cookie notice or a "Share this article" line means nothing when it appears on thousands of
pages, yet per-document cleaning cannot tell it from content because it looks fine in each page
alone. Counting in how many distinct documents each line occurs tells them apart.

Run as a global stage:
  map     each shard becomes a small table (hash, n_docs[, first_row]): the shard's distinct line
          hashes with the number of its documents holding each line, aggregated in the worker so
          the summary grows with distinct lines, not with documents;
  reduce  the per-shard counts are summed with NumPy, one hash partition at a time so memory
          stays bounded, and every line held by at least `min_docs` documents is frequent;
          each shard gets the frequent hashes it actually contains (plus, with `keep_first`,
          the row of the document that keeps its copy);
  apply   frequent lines are cut out of each document; a document left empty is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Literal

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.pipeline.stage import GlobalStage, Summaries
from lmforge.records import Record

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
# A paragraph break: a newline, then one or more lines holding only spaces/tabs, each ended by a newline.
_PARAGRAPH_BREAK = re.compile(r"(\n(?:[^\S\n]*\n)+)")


class LineDedupConfig(StrictModel):
    unit: Literal["line", "paragraph"] = Field(
        "line", description="what is counted and removed: single lines, or blocks separated by blank lines"
    )
    min_docs: int = Field(
        3, ge=2, description="a unit held by at least this many distinct documents is removed"
    )
    keep_first: bool = Field(
        False, description="keep the unit in the first document holding it (shard order, then row order)"
    )
    min_chars: int = Field(
        10, ge=0, description="shorter units (after normalization) are neither counted nor removed"
    )
    normalize: bool = Field(
        True,
        description="compare NFKC-lowercased, whitespace-collapsed units (else exact, minus outer spaces)",
    )
    drop_empty: bool = Field(
        True, description="drop a document left with no text, with reason 'line_dedup_empty'"
    )
    reduce_partition_rows: int = Field(
        20_000_000, ge=1,
        description="summary rows the reduce holds at once; more rows are split into hash partitions",
    )


def split_units(text: str, unit: str) -> tuple[list[str], list[str]]:
    """Units and the separator before each (first one empty), so that kept units rejoin as written."""
    if unit == "line":
        units = text.split("\n")
        return units, [""] + ["\n"] * (len(units) - 1)
    pieces = _PARAGRAPH_BREAK.split(text)
    return pieces[0::2], [""] + pieces[1::2]


def unit_key(unit: str, normalize: bool, min_chars: int) -> int | None:
    """Stable 64-bit signed hash of a unit, or None when it is too short to count.

    blake2b rather than `hash()`: map runs in many processes (and on Ray), and the hashes
    from all of them must agree.
    """
    key = _WS.sub(" ", unicodedata.normalize("NFKC", unit).lower()).strip() if normalize else unit.strip()
    if not key or len(key) < min_chars:
        return None
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class LineDedup(GlobalStage):
    """Removes lines (or paragraphs) that occur in at least `min_docs` distinct documents of the corpus."""

    name = "line_dedup"
    Config = LineDedupConfig

    def _keys(self, text: str) -> list[int | None]:
        units, _ = split_units(text, self.config.unit)
        return [unit_key(u, self.config.normalize, self.config.min_chars) for u in units]

    # ------------------------------------------------------------------ map

    def map(self, records: Iterable[Record]):
        import numpy as np
        import pyarrow as pa

        hashes: list[int] = []
        rows: list[int] = []
        for row, record in enumerate(records):
            distinct = sorted({k for k in self._keys(record.text) if k is not None})
            hashes.extend(distinct)
            rows.extend([row] * len(distinct))
        h = np.asarray(hashes, dtype=np.int64)
        # Each document lists a hash once, so the count of a hash in the shard is its n_docs; the
        # first index is in document order, hence the first row holding it.
        uniq, first, counts = np.unique(h, return_index=True, return_counts=True)
        columns = {"hash": pa.array(uniq, pa.int64()), "n_docs": pa.array(counts, pa.int64())}
        if self.config.keep_first:
            columns["first_row"] = pa.array(np.asarray(rows, dtype=np.int64)[first], pa.int64())
        return pa.table(columns)

    # ------------------------------------------------------------------ reduce

    def reduce(self, summaries: Summaries) -> dict[str, object]:
        import numpy as np
        import pyarrow as pa

        ids = summaries.ids
        total = sum(summaries.num_rows(sid) for sid in ids)
        bits = max(0, math.ceil(math.log2(total / self.config.reduce_partition_rows))) if total else 0
        found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in ids]
        n_frequent = 0
        for part in range(1 << bits):
            for shard, hashes, keep_rows in self._reduce_partition(summaries, part, bits):
                found[shard].append((hashes, keep_rows))
                n_frequent += len(hashes)
        log.info("line_dedup: %d (shard, %s) summary rows from %d shards in %d partitions; %d are frequent",
                 total, self.config.unit, len(ids), 1 << bits, n_frequent)
        out = {}
        for sid, pieces in zip(ids, found, strict=True):
            h = np.concatenate([p[0] for p in pieces]) if pieces else np.empty(0, np.int64)
            k = np.concatenate([p[1] for p in pieces]) if pieces else np.empty(0, np.int64)
            out[sid] = pa.table({"hash": pa.array(h, pa.int64()), "keep_row": pa.array(k, pa.int64())})
        return out

    def _reduce_partition(self, summaries: Summaries, part: int, bits: int):
        """Frequent hashes of one partition as (shard index, hashes, keep_rows), shard by shard.

        keep_row is the row of the document keeping its copy in that shard, or -1 (remove everywhere).
        """
        import numpy as np

        columns = ["hash", "n_docs"] + (["first_row"] if self.config.keep_first else [])
        hs, counts, shards, firsts = [], [], [], []
        for i, sid in enumerate(summaries.ids):
            table = summaries.read(sid, columns)
            h = table.column("hash").to_numpy()
            mask = slice(None) if bits == 0 else (h.view(np.uint64) >> np.uint64(64 - bits)) == part
            hs.append(h[mask])
            counts.append(table.column("n_docs").to_numpy()[mask])
            shards.append(np.full(len(hs[-1]), i, dtype=np.int64))
            if self.config.keep_first:
                firsts.append(table.column("first_row").to_numpy()[mask])
        if not hs or not sum(len(h) for h in hs):
            return
        h, c, s = np.concatenate(hs), np.concatenate(counts), np.concatenate(shards)
        # Stable sort: rows of one hash stay in shard order, so a group's first row is its first shard.
        order = np.argsort(h, kind="stable")
        h, c, s = h[order], c[order], s[order]
        starts = np.flatnonzero(np.concatenate(([True], h[1:] != h[:-1])))
        totals = np.add.reduceat(c, starts)
        frequent_group = totals >= self.config.min_docs
        sizes = np.diff(np.append(starts, len(h)))
        frequent = np.repeat(frequent_group, sizes)
        keep_row = np.full(len(h), -1, dtype=np.int64)
        if self.config.keep_first:
            f = np.concatenate(firsts)[order]
            group_first = starts[frequent_group]
            keep_row[group_first] = f[group_first]
        h, s, keep_row = h[frequent], s[frequent], keep_row[frequent]
        by_shard = np.lexsort((h, s))
        h, s, keep_row = h[by_shard], s[by_shard], keep_row[by_shard]
        bounds = np.searchsorted(s, np.arange(len(summaries.ids) + 1))
        for i in range(len(summaries.ids)):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                yield i, h[lo:hi], keep_row[lo:hi]

    # ------------------------------------------------------------------ apply

    def apply(self, decision, records: Iterable[Record]) -> Iterator[Record]:
        hashes = decision.column("hash").to_pylist()
        keep_rows = decision.column("keep_row").to_pylist()
        frequent = dict(zip(hashes, keep_rows, strict=True))
        if not frequent:  # nothing in this shard repeats: skip the per-line work
            yield from records
            return
        for row, record in enumerate(records):
            text, removed = self._strip(record.text, frequent, row)
            if not removed:
                yield record
                continue
            self.count("lines_removed", removed)
            self.count("docs_changed")
            if self.config.drop_empty and not text.strip():
                # quarantined with its original text, so a reviewer sees what was judged boilerplate
                self.drop(record, "line_dedup_empty", lines_removed=removed)
                continue
            record.text = text
            record.meta[self.name] = {"lines_removed": removed}
            yield record

    def _strip(self, text: str, frequent: dict[int, int], row: int) -> tuple[str, int]:
        units, seps = split_units(text, self.config.unit)
        kept: list[str] = []
        removed = 0
        for unit, sep in zip(units, seps, strict=True):
            key = unit_key(unit, self.config.normalize, self.config.min_chars)
            # keep_row is -1 (remove) or the one row keeping its copy; unknown keys default to "keep"
            if key is not None and frequent.get(key, row) != row:
                removed += 1
                continue
            kept.append(unit if not kept else sep + unit)
        if not removed:
            return text, 0
        # Units cut from the start or end would otherwise leave the blank lines around them behind.
        return "".join(kept).strip("\n"), removed
