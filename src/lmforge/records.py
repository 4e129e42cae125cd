"""The record every stage passes along, and its on-disk forms (Parquet shards, JSONL, plain text).

Records are plain dataclasses rather than pydantic models: millions flow through a
pipeline and validation per record would dominate the cost. `meta` and `provenance`
are stored as JSON strings in Parquet so that `datasets`, DuckDB and Polars all read the
shards without a custom schema.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError

SCHEMA_VERSION = 1
FIELDS = ("id", "text", "source", "url", "lang", "meta", "provenance")


def make_id(source: str, locator: str) -> str:
    """Stable id from where a document came from, so re-collecting yields the same id (never a row number)."""
    return hashlib.blake2b(f"{source}\x00{locator}".encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class Record:
    """One document. Stages add keys to `meta` under their own name (e.g. meta["dedup"])."""

    id: str
    text: str
    source: str = ""
    url: str = ""
    lang: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def drop_reason(self) -> str | None:
        return self.meta.get("drop_reason")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        meta = data.get("meta") or {}
        prov = data.get("provenance") or {}
        return cls(
            id=str(data["id"]),
            text=data.get("text") or "",
            source=data.get("source") or "",
            url=data.get("url") or "",
            lang=data.get("lang") or "",
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
            provenance=json.loads(prov) if isinstance(prov, str) else dict(prov),
        )


def jsonable(value: Any) -> Any:
    """`value` as JSON values for meta: bytes decoded, dates as ISO 8601, anything else unknown as str."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def text_bytes(record: Record) -> int:
    return len(record.text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- atomic files


def temp_sibling(path: Path) -> Path:
    """A hidden name beside `path`, unique per process and call.

    Unique names mean two processes redoing the same shard (an orphaned worker of a killed run
    and the resumed run) never write into each other's file. Not `tempfile.mkstemp`: its 0600
    mode would survive the rename and hide the data from other users.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- parquet


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in FIELDS])


def records_to_table(records: Iterable[Record]):
    import pyarrow as pa

    cols: dict[str, list] = {name: [] for name in FIELDS}
    for r in records:
        cols["id"].append(r.id)
        cols["text"].append(r.text)
        cols["source"].append(r.source)
        cols["url"].append(r.url)
        cols["lang"].append(r.lang)
        cols["meta"].append(json.dumps(r.meta, ensure_ascii=False) if r.meta else "{}")
        cols["provenance"].append(json.dumps(r.provenance, ensure_ascii=False) if r.provenance else "{}")
    return pa.table(cols, schema=_arrow_schema())


def write_parquet(path: str | Path, records: Iterable[Record]) -> int:
    """Write one shard atomically (zstd); returns the number of records written."""
    import pyarrow.parquet as pq

    table = records_to_table(records)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=10_000)
    return table.num_rows


def read_parquet(path: str | Path, batch_size: int = 4096, name: str | None = None) -> Iterator[Record]:
    """Stream records from a shard; a file that is not readable Parquet raises InputError naming it.

    Rows without an id get one made from `name` (default: the path) and their row number, and rows
    without a url get `name` when one is given: a staged copy of a remote file passes its URL, so ids
    do not depend on where the copy lies.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet file {path}: {exc}") from None
    names = set(pf.schema_arrow.names)
    if "text" not in names:
        raise InputError(f"Parquet file {path} has no 'text' column (columns: {sorted(names)})")
    try:
        for i, batch in enumerate(pf.iter_batches(batch_size=batch_size)):
            yield from _batch_records(batch, name or str(path), i * batch_size, name)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet file {path}: {exc}") from None


def _batch_records(batch, path: str, offset: int, url: str | None = None) -> Iterator[Record]:
    data = batch.to_pydict()
    n = batch.num_rows
    texts = data["text"]
    ids = data.get("id") or [make_id(str(path), str(offset + i)) for i in range(n)]
    empty = [None] * n
    sources, urls, langs = data.get("source", empty), data.get("url", empty), data.get("lang", empty)
    metas, provs = data.get("meta", empty), data.get("provenance", empty)
    for i in range(n):
        meta, prov = metas[i], provs[i]
        yield Record(
            id=str(ids[i]) if ids[i] is not None else make_id(str(path), str(offset + i)),
            text=texts[i] or "",
            source=sources[i] or "",
            url=urls[i] or url or "",
            lang=langs[i] or "",
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta or {}),
            provenance=json.loads(prov) if isinstance(prov, str) else dict(prov or {}),
        )


# --------------------------------------------------------------------------- jsonl and text


def _open_binary(path: Path, gzipped: bool):
    return gzip.open(path, "wb") if gzipped else open(path, "wb")  # noqa: SIM115 - returned to a with


def read_jsonl(path: str | Path, source: str | None = None) -> Iterator[Record]:
    """Records from JSON lines. A malformed line becomes a record flagged for quarantine, never an exception.

    A missing `id` is derived from the file and line number, which is stable for a given file.
    A truncated or corrupt gzip stream keeps every line read before the damage and ends with
    one quarantine record describing it.
    """
    path = Path(path)
    src = source or path.name
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if raw.strip():
                    yield _jsonl_record(raw, path, src, lineno)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        yield Record(
            id=make_id(src, f"{path}:damaged"),
            text="",
            source=src,
            url=str(path),
            meta={"drop_reason": "corrupt_file", "drop_stage": "input", "error": f"{type(exc).__name__}: {exc}"[:200],
                  "line": lineno + 1},
        )


def _jsonl_record(raw: bytes, path: Path, source: str, lineno: int) -> Record:
    locator = f"{path}:{lineno}"
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError("line is not an object with a string 'text'")
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "bad_utf8" if isinstance(exc, UnicodeDecodeError) else "bad_json"
        return Record(
            id=make_id(source, locator),
            text=raw.decode("utf-8", "replace")[:10_000],
            source=source,
            url=str(path),
            meta={"drop_reason": reason, "drop_stage": "input", "error": str(exc)[:200], "line": lineno},
        )
    obj.setdefault("source", source)
    if not obj.get("id"):
        obj["id"] = make_id(source, locator)
    obj.setdefault("url", str(path))
    return Record.from_dict(obj)


def write_jsonl(path: str | Path, records: Iterable[Record]) -> int:
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp, _open_binary(tmp, gzipped=path.suffix == ".gz") as raw, \
            io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a small JSON-lines file that people write by
    hand (prompts, sample sets); a line that is not JSON is an InputError naming `path:line`."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
