"""Exact deduplication on normalized text, keep-first across all shards.

Run as a global stage: each shard is hashed (map), the first occurrence of every hash in
shard order wins (reduce, vectorised with NumPy), and each shard then drops the rest
(apply), recording which document was kept.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.pipeline.stage import GlobalStage
from lmforge.records import Record

_WS = re.compile(r"\s+")


class ExactDedupConfig(StrictModel):
    normalize: bool = Field(True, description="hash NFKC-lowercased, whitespace-collapsed text")


def dedup_key(text: str, normalize: bool = True) -> int:
    """64-bit signed hash of the (normalized) text; collisions are ~1e-19 per pair."""
    if normalize:
        text = _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class ExactDedup(GlobalStage):
    name = "exact_dedup"
    Config = ExactDedupConfig

    def map(self, records: Iterable[Record]):
        import pyarrow as pa

        hashes, ids = [], []
        for r in records:
            hashes.append(dedup_key(r.text, self.config.normalize))
            ids.append(r.id)
        return pa.table({"hash": pa.array(hashes, pa.int64()), "id": pa.array(ids, pa.string())})

    def reduce(self, summaries):
        """Keep-first by hash. Holds about 40 bytes per document (the hashes, a sort order, the kept row
        of each): ids are read back for the duplicates' kept copies only, never for every document."""
        import numpy as np
        import pyarrow as pa

        sizes = [summaries.num_rows(sid) for sid in summaries.ids]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        hashes = np.concatenate([np.zeros(0, np.int64)] + [summaries.read(sid, ["hash"]).column(0).to_numpy()
                                                           for sid in summaries.ids])  # (N,)
        order = np.argsort(hashes, kind="stable")  # equal hashes stay in row order: the first is the kept one
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = hashes[order[1:]] != hashes[order[:-1]]
        del hashes
        winner = np.empty_like(order)  # the kept row of every row
        winner[order] = order[starts][np.cumsum(starts) - 1]
        del order, starts
        duplicates = np.flatnonzero(winner != np.arange(len(winner)))  # ascending rows
        kept_ids = None
        if len(duplicates):  # `take` wants ascending rows; kept rows are not in the duplicates' order
            rows, back = np.unique(winner[duplicates], return_inverse=True)
            kept_ids = summaries.take("id", rows, offsets).take(pa.array(back))
        out = {}
        for i, sid in enumerate(summaries.ids):
            lo, hi = np.searchsorted(duplicates, offsets[i : i + 2])
            column: list[str | None] = [None] * sizes[i]
            for row, kept in zip(duplicates[lo:hi] - offsets[i], kept_ids.slice(lo, hi - lo).to_pylist()
                                 if kept_ids is not None else [], strict=True):
                column[row] = kept
            out[sid] = pa.table({"duplicate_of": pa.array(column, pa.string())})
        return out

    def apply(self, decision, records: Iterable[Record]) -> Iterator[Record]:
        dup_of = decision.column("duplicate_of").to_pylist()
        n = 0
        for n, record in enumerate(records, start=1):
            if n > len(dup_of):
                raise RuntimeError("exact_dedup: shard has more records than when it was hashed")
            kept = dup_of[n - 1]
            if kept is None:
                yield record
            else:
                self.drop(record, "exact_duplicate", duplicate_of=kept)
        if n != len(dup_of):
            raise RuntimeError("exact_dedup: shard has fewer records than when it was hashed")
