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
        import numpy as np
        import pyarrow as pa

        tables = [summaries.read(sid) for sid in summaries.ids]
        sizes = [t.num_rows for t in tables]
        if not sizes or sum(sizes) == 0:
            return {sid: pa.table({"duplicate_of": pa.array([], pa.string())}) for sid in summaries.ids}
        hashes = np.concatenate([t.column("hash").to_numpy() for t in tables])
        ids = np.concatenate([np.asarray(t.column("id").to_pylist(), dtype=object) for t in tables])
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        winner = first[inverse]  # global row index of the kept copy for every row
        row = np.arange(len(hashes))
        duplicate_of = np.where(winner == row, None, ids[winner])
        out, start = {}, 0
        for sid, n in zip(summaries.ids, sizes, strict=True):
            out[sid] = pa.table({"duplicate_of": pa.array(duplicate_of[start : start + n].tolist(), pa.string())})
            start += n
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
