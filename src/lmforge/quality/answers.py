"""The answer cache of `annotate`: every answer a model gave, so a re-run never pays for it twice.

Answers are appended as small Parquet shards (`answers-<time>-<random>.parquet`, each written
atomically) every `flush_every` answers or `flush_seconds`, so a killed run loses at most the last
few. The key is a hash of everything that shapes the answer (the request and the document, see
`annotate.cache_key`), so changing the model, the template or the truncation asks again while an
unchanged document is never re-sent, whichever run, sample size or order asked first. Only answers
are kept: a request that failed is asked again next time.

Many small shards are merged into one once there are more than `COMPACT_AT`, so opening the cache
stays fast after hundreds of interrupted runs.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from lmforge.records import atomic_path

log = logging.getLogger(__name__)

COLUMNS = ("key", "doc_id", "model", "template", "answer", "created")
COMPACT_AT = 32


class AnswerCache:
    def __init__(self, directory: Path, flush_every: int = 32, flush_seconds: float = 10.0) -> None:
        self.directory = directory
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.answers: dict[str, str] = {}
        self._pending: list[dict[str, object]] = []
        self._last_flush = time.monotonic()
        self._load()

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob("answers-*.parquet"))

    def _load(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path in self.shards():
            try:
                table = pq.read_table(path, columns=["key", "answer"])
            except (OSError, pa.ArrowException) as exc:  # its answers are asked again; the run goes on
                log.warning("annotate cache: skipping unreadable %s (%s)", path.name, exc)
                continue
            for key, answer in zip(table.column("key").to_pylist(), table.column("answer").to_pylist(), strict=True):
                self.answers.setdefault(key, answer)

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def add(self, key: str, answer: str, doc_id: str, model: str, template: str) -> None:
        self.answers[key] = answer
        self._pending.append({"key": key, "doc_id": doc_id, "model": model, "template": template,
                              "answer": answer, "created": time.time()})
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the answers not yet on disk as one new shard."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        self._write(self.directory / f"answers-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet", self._pending)
        self._pending = []

    def compact(self) -> None:
        """Merge the shards into one when there are many (the new file is whole before the old ones go)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        shards = self.shards()
        if len(shards) <= COMPACT_AT:
            return
        tables, merged = [], []
        for path in shards:
            try:
                tables.append(pq.read_table(path))
                merged.append(path)
            except (OSError, pa.ArrowException):
                continue  # left in place; `_load` skips it with a warning
        rows = pa.concat_tables(tables).to_pylist() if tables else []
        seen: set[str] = set()
        unique = [r for r in rows if not (r["key"] in seen or seen.add(r["key"]))]
        self._write(self.directory / f"answers-{time.time_ns():020d}-merged.parquet", unique)
        for path in merged:
            path.unlink(missing_ok=True)
        log.info("annotate cache: merged %d shards into one (%d answers)", len(merged), len(unique))

    @staticmethod
    def _write(path: Path, rows: list[dict[str, object]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(c, pa.float64() if c == "created" else pa.string()) for c in COLUMNS])
        table = pa.Table.from_pylist([{c: r[c] for c in COLUMNS} for r in rows], schema=schema)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
