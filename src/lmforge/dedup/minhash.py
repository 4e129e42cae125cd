"""Near-duplicate removal with MinHash-LSH, language-aware: word n-grams for space-separated text,
character n-grams for Chinese and Japanese.

Whitespace tokenisation turns a Chinese paragraph into one or two "words", so any edit changes
every shingle and near-duplicates are never found; that is why the shingle kind is chosen per
document, from `record.lang` when a language-ID stage has set it, else from its share of CJK
characters.

Runs as a global stage:
- map (per shard, in workers): shingle hashes -> MinHash signature -> one hash per band; the
  summary holds per document its id, length, shingle count, band hashes and (with `verify`)
  the signature;
- reduce (once): band by band, documents with equal band hashes become candidate pairs; with
  `verify`, pairs whose signatures put their Jaccard similarity clearly below `threshold` are
  dropped; union-find joins the rest into clusters and one document per cluster is kept;
- apply (per shard): duplicates go to quarantine with the kept document's id, kept members of a
  cluster get `meta["minhash_dedup"] = {"cluster", "cluster_size"}`.

Which document a cluster keeps (`keep`): "longest", the one with the most characters, because
near-copies are mostly truncations or lightly edited versions and the longest is usually the
most complete; or "first", the earliest in shard order (input order). Ties go to the earliest,
so the choice depends only on the input. The cluster id is the id of the kept document.
Documents without any shingle (empty or whitespace-only text) are never clustered; exact_dedup
handles those. Everything is ordered by (shard, row), so the local and Ray executors write
byte-identical outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from lmforge.config import StrictModel
from lmforge.dedup import minhash_cluster as mc
from lmforge.dedup.minhash_hashing import MinHasher, Shingler, band_hashes
from lmforge.lang import is_cjk
from lmforge.pipeline.stage import GlobalStage, Summaries
from lmforge.records import Record

log = logging.getLogger(__name__)

# Characters shingled per NumPy pass in map: bounds its working memory (~15 MB); larger batches
# were slower, not faster (fresh large arrays cost page faults).
BATCH_CHARS = 1 << 18
# Reduce reads as many band columns at once as fit in this many bytes (8 per document and band):
# all of them for a small corpus (fewer Parquet reads), one at a time for a large one.
BAND_READ_BYTES = 64 << 20


class MinHashConfig(StrictModel):
    """Defaults: 128 permutations in 16 bands of 8 rows.

    A pair with Jaccard similarity J shares at least one band with probability
    1 - (1 - J**8)**16: 0.95 at J = 0.8, 0.61 at 0.7, 0.06 at 0.5. So pairs at the 0.8
    threshold are rarely missed (and transitivity through a cluster's other members recovers
    most of those), while `verify` removes the candidates that met by chance well below it
    (see `minhash_cluster.agreement_needed`). On the labelled set of `benchmarks/dedup.py`
    this gives pair F1 0.99 in both languages.
    """

    num_perm: int = Field(128, ge=2, le=4096, description="MinHash permutations (signature length)")
    bands: int = Field(16, ge=1, description="LSH bands; bands * rows must equal num_perm")
    rows: int = Field(8, ge=1, validate_default=True, description="signature values per band")
    shingle: Literal["auto", "word", "char"] = Field(
        "auto", description="auto: character n-grams for zh/ja (by record.lang, else CJK share), else words"
    )
    word_ngram: int = Field(5, ge=1, le=64, description="words per shingle for space-separated text")
    char_ngram: int = Field(5, ge=1, le=64, description="characters per shingle for Chinese/Japanese")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity that makes a near-duplicate")
    verify: bool = Field(
        True, description="drop candidate pairs whose estimated Jaccard is over two standard errors below threshold"
    )
    keep: Literal["longest", "first"] = Field(
        "longest", description="longest: most characters, ties to the earliest; first: earliest in shard order"
    )
    seed: int = Field(42, ge=0, description="seeds every hash constant; change it and all signatures change")

    @field_validator("rows")
    @classmethod
    def _bands_times_rows(cls, rows: int, info: ValidationInfo) -> int:
        num_perm, bands = info.data.get("num_perm"), info.data.get("bands")
        if num_perm is not None and bands is not None and bands * rows != num_perm:
            raise ValueError(
                f"bands * rows must equal num_perm, but {bands} * {rows} = {bands * rows} != {num_perm}"
            )
        return rows


def band_column(j: int) -> str:
    return f"band_{j:03d}"


class MinHashDedup(GlobalStage):
    name = "minhash_dedup"
    Config = MinHashConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        c = self.config
        self._shingler = Shingler(c.word_ngram, c.char_ngram, c.seed)
        self._minhasher = MinHasher(c.num_perm, c.seed)

    # ------------------------------------------------------------------ map

    def _mode(self, record: Record) -> int:
        """1: character n-grams, 0: word n-grams, -1: let the batch decide by CJK share."""
        if self.config.shingle != "auto":
            return int(self.config.shingle == "char")
        if record.lang:
            return int(is_cjk(record.text, record.lang))
        return -1

    def map(self, records: Iterable[Record]):
        import pyarrow as pa

        tables, batch, chars = [], [], 0
        for record in records:
            batch.append(record)
            chars += len(record.text)
            if chars >= BATCH_CHARS:
                tables.append(self._summarise(batch))
                batch, chars = [], 0
        if batch or not tables:
            tables.append(self._summarise(batch))
        return pa.concat_tables(tables)

    def _summarise(self, batch: list[Record]):
        import pyarrow as pa

        c = self.config
        texts = [r.text.lower() for r in batch]
        mode = np.fromiter((self._mode(r) for r in batch), dtype=np.int8, count=len(batch))
        hashes, docs, char_mode = self._shingler.shingles(texts, mode)
        sig = self._minhasher.signatures(hashes, docs, len(batch))
        bands = band_hashes(sig, c.bands, c.rows, c.seed)
        columns: dict[str, Any] = {
            "id": pa.array([r.id for r in batch], pa.string()),
            "length": pa.array(np.fromiter((len(r.text) for r in batch), np.int64, len(batch))),
            "shingles": pa.array(np.bincount(docs, minlength=len(batch)).astype(np.int32)),
            "char_shingles": pa.array(char_mode),
        }
        for j in range(c.bands):
            columns[band_column(j)] = pa.array(bands[:, j])
        if c.verify:
            # the low 16 bits of each value are enough to count agreements (two different minima
            # match with probability 2**-16) at half the bytes to write, read and compare
            low = pa.array(sig.astype(np.uint16).ravel())
            columns["signature"] = pa.FixedSizeListArray.from_arrays(low, c.num_perm)
        return pa.table(columns)

    # ------------------------------------------------------------------ reduce

    def reduce(self, summaries: Summaries) -> dict[str, Any]:
        import pyarrow as pa

        c = self.config
        sids = list(summaries.ids)
        sizes = np.array([summaries.num_rows(s) for s in sids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(offsets[-1])

        def columns(names: list[str]) -> dict[str, np.ndarray]:
            """Whole-corpus arrays of some summary columns, read shard by shard."""
            parts = [summaries.read(sid, names) for sid in sids]
            return {n: np.concatenate([p.column(n).to_numpy() for p in parts]) for n in names}

        def signatures(shard: int, name: str) -> np.ndarray:
            col = summaries.read(sids[shard], [name]).column(0)
            return col.combine_chunks().flatten().to_numpy().reshape(-1, c.num_perm)

        if total == 0:
            return {sid: self._decision(pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64),
                                        np.zeros(0, np.int64), np.zeros(0, np.int32), 0, 0) for sid in sids}
        basics = columns(["shingles", "length"] if c.keep == "longest" else ["shingles"])
        members = np.flatnonzero(basics.pop("shingles") > 0)
        lengths = basics.pop("length", None)
        parent = np.arange(total, dtype=np.int64)
        pair_keys = np.zeros(0, dtype=np.int64)  # with verify: candidate pairs as u * total + v (< 2**63)
        # Small buckets give all their pairs to verification (a copy that fails against the
        # bucket's first member may still pass against the original); large ones a star.
        all_pairs_up_to = 8 if c.verify else 2
        per_read = max(1, min(c.bands, BAND_READ_BYTES // (8 * total)))
        band_hits = 0
        for first in range(0, c.bands, per_read):
            group = columns([band_column(j) for j in range(first, min(c.bands, first + per_read))])
            for name in list(group):
                u, v = mc.bucket_pairs(group.pop(name)[members], members, all_pairs_up_to)
                band_hits += len(u)
                if c.verify:
                    pair_keys = np.union1d(pair_keys, u * total + v)
                else:
                    mc.union(parent, u, v)
        if c.verify and len(pair_keys):
            u, v = np.divmod(pair_keys, total)
            ok = mc.verify_pairs(u, v, offsets, signatures, c.num_perm, c.threshold)
            log.info("minhash_dedup: %d candidate pairs, %d verified", len(u), int(ok.sum()))
            mc.union(parent, u[ok], v[ok])
        roots = parent
        size = np.bincount(roots, minlength=total)[roots].astype(np.int32)
        clustered = np.flatnonzero(size > 1)
        keeper = mc.choose_keepers(roots[clustered], clustered, None if lengths is None else lengths[clustered])
        kept = np.unique(keeper)
        log.info("minhash_dedup: %d documents, %d band matches, %d clusters, %d duplicates",
                 total, band_hits, len(kept), len(clustered) - len(kept))
        kept_ids = summaries.take("id", kept, offsets)
        out: dict[str, Any] = {}
        for i, sid in enumerate(sids):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            a, b = np.searchsorted(clustered, [lo, hi])
            out[sid] = self._decision(kept_ids, kept, clustered[a:b] - lo, keeper[a:b], size[lo:hi], lo, hi)
        return out

    @staticmethod
    def _decision(kept_ids, kept: np.ndarray, rows: np.ndarray, keeper: np.ndarray, size: np.ndarray,
                  lo: int, hi: int):
        """One shard's decision: for each row its cluster (kept document's id), duplicate_of and cluster size."""
        import pyarrow as pa

        in_cluster = np.zeros(hi - lo, dtype=bool)
        in_cluster[rows] = True
        is_dup = np.zeros(hi - lo, dtype=bool)
        is_dup[rows] = keeper != rows + lo
        pos = np.zeros(hi - lo, dtype=np.int64)
        pos[rows] = np.searchsorted(kept, keeper)
        return pa.table({
            "duplicate_of": kept_ids.take(pa.array(pos, mask=~is_dup)),
            "cluster": kept_ids.take(pa.array(pos, mask=~in_cluster)),
            "cluster_size": pa.array(size, pa.int32()),
        })

    # ------------------------------------------------------------------ apply

    def apply(self, decision, records: Iterable[Record]) -> Iterator[Record]:
        dup_of = decision.column("duplicate_of").to_pylist()
        cluster = decision.column("cluster").to_pylist()
        size = decision.column("cluster_size").to_pylist()
        n = 0
        for n, record in enumerate(records, start=1):
            if n > len(dup_of):
                raise RuntimeError("minhash_dedup: shard has more records than when it was hashed")
            i = n - 1
            if cluster[i] is None:
                yield record
            elif dup_of[i] is None:
                record.meta[self.name] = {"cluster": cluster[i], "cluster_size": size[i]}
                self.count("clusters")
                yield record
            else:
                self.drop(record, "near_duplicate", duplicate_of=dup_of[i], cluster=cluster[i],
                          cluster_size=size[i])
        if n != len(dup_of):
            raise RuntimeError("minhash_dedup: shard has fewer records than when it was hashed")
