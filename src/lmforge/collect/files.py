"""Files on disk: directories and globs of text, Markdown, HTML, JSON(L), CSV, Parquet and PDF.

Text formats are decoded with `collect.encoding` (GBK, GB18030, Big5 and UTF-8 with or without
BOM). A file that cannot be decoded, is binary, empty or malformed becomes one quarantine
record naming the problem; the files around it are read as usual.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.collect.encoding import decode_bytes
from lmforge.config import StrictModel
from lmforge.errors import ConfigError
from lmforge.records import Record, jsonable, make_id, read_jsonl, read_parquet

log = logging.getLogger(__name__)

FORMATS = {
    ".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pdf": "pdf",
}
CONTENT_TYPES = {
    "text": "text/plain", "markdown": "text/markdown", "html": "text/html", "json": "application/json",
    "jsonl": "application/jsonl", "csv": "text/csv", "tsv": "text/tab-separated-values",
    "parquet": "application/vnd.apache.parquet", "pdf": "application/pdf",
}


class FilesConfig(StrictModel):
    paths: list[str] = Field(min_length=1, description="files, directories or globs, relative to the recipe")
    recursive: bool = True
    formats: list[str] = Field(default_factory=lambda: sorted(set(FORMATS.values())),
                               description="formats to read; other files are skipped")
    text_split: Literal["file", "paragraph", "line"] = Field("file", description="for text and Markdown")
    text_field: str = Field("text", description="field/column holding the text in JSON, CSV and Parquet")
    id_field: str | None = Field(None, description="field/column with a stable id (default: derived)")
    max_file_bytes: int = Field(2_000_000_000, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        # `files: ["a/*.jsonl"]` is shorthand for `files: {paths: ["a/*.jsonl"]}`
        return {"paths": value} if isinstance(value, list | str) else value

    @model_validator(mode="after")
    def _known_formats(self) -> FilesConfig:
        unknown = sorted(set(self.formats) - set(FORMATS.values()))
        if unknown:
            raise ValueError(f"formats: unknown {unknown}; allowed: {sorted(set(FORMATS.values()))}")
        return self


def file_format(path: Path) -> str | None:
    """Format from the name, looking through a .gz suffix (e.g. .jsonl.gz, .txt.gz)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def expand_paths(patterns: list[str], base_dir: Path, field: str, recursive: bool = True,
                 directories: bool = True) -> Iterator[tuple[Path, list[Path]]]:
    """(pattern as a path, matching files sorted) per pattern; a pattern matching nothing is an error.

    Relative patterns start at `base_dir` (the recipe's folder); with `directories`, a directory
    stands for the files below it. The error names `field[i]` so a recipe mistake is easy to find.
    """
    for i, pattern in enumerate(patterns):
        full = Path(pattern) if Path(pattern).is_absolute() else base_dir / pattern
        if directories and full.is_dir():
            walker = full.rglob("*") if recursive else full.glob("*")
            matches = sorted(p for p in walker if p.is_file())
        else:
            matches = sorted(Path(p) for p in glob.glob(str(full), recursive=recursive) if Path(p).is_file())
        if not matches:
            raise ConfigError(f"{field}[{i}]: no file matches {pattern!r} (looked in {base_dir})")
        yield full, matches


def list_files(config: FilesConfig, base_dir: Path) -> list[Path]:
    """Files of the configured paths, directories and globs, sorted within each pattern and deduplicated."""
    out: dict[Path, None] = {}
    for full, matches in expand_paths(config.paths, base_dir, "input.files.paths", config.recursive):
        for m in matches:
            fmt = file_format(m)
            if fmt is None or fmt in config.formats or full == m:
                out[m] = None  # unknown formats are listed so that they show up in quarantine
    return list(out)


def iter_files(config: FilesConfig, base_dir: Path, work_dir: Path | None = None) -> Iterator[Record]:
    for path in list_files(config, base_dir):
        yield from read_file(path, config)


def read_file(path: Path, config: FilesConfig) -> Iterator[Record]:
    """Records of one file; problems with the file become one quarantine record."""
    fmt = file_format(path)
    source = f"file:{fmt or 'unknown'}"
    if fmt is None:
        yield _bad(path, source, "unsupported_format", f"no reader for {path.name!r}; known: {sorted(FORMATS)}")
        return
    try:
        size = path.stat().st_size
    except OSError as exc:
        yield _bad(path, source, "unreadable_file", str(exc))
        return
    if size == 0:
        yield _bad(path, source, "empty_file", "file is empty")
        return
    if size > config.max_file_bytes:
        yield _bad(path, source, "file_too_large", f"{size} bytes > max_file_bytes {config.max_file_bytes}")
        return
    prov = {"content_type": CONTENT_TYPES[fmt], "modified_at": _mtime(path), "bytes": size}
    reader = _READERS[fmt]
    try:
        for record in reader(path, config, source):
            record.provenance = {**prov, **record.provenance}
            yield record
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        yield _bad(path, source, "corrupt_file", f"{type(exc).__name__}: {exc}")


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def _bad(path: Path, source: str, reason: str, error: str, text: str = "") -> Record:
    return Record(
        id=make_id(source, f"{path}#{reason}"), text=text, source=source, url=str(path),
        meta={"drop_reason": reason, "drop_stage": "input", "error": error[:300]},
    )


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.lower().endswith(".gz") else data


def _decoded(path: Path, source: str, declared: str | None = None) -> tuple[str, str] | Record:
    data = _read_bytes(path)
    decoded = decode_bytes(data, declared)
    if decoded is None:
        reason = "binary_file" if b"\x00" in data[:8192] else "undecodable"
        return _bad(path, source, reason, "not text in UTF-8, GB18030/GBK, Big5 or cp1252")
    return decoded


def _read_text(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    decoded = _decoded(path, source)
    if isinstance(decoded, Record):
        yield decoded
        return
    text, codec = decoded
    if config.text_split == "file":
        pieces = [text]
    elif config.text_split == "line":
        pieces = text.splitlines()
    else:
        pieces = text.replace("\r\n", "\n").split("\n\n")
    for i, piece in enumerate(pieces):
        if piece.strip():
            locator = str(path) if config.text_split == "file" else f"{path}#{i}"
            yield Record(id=make_id(source, locator), text=piece, source=source, url=str(path),
                         provenance={"encoding": codec})


def _read_html(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    from lmforge.collect.html import declared_charset

    data = _read_bytes(path)
    decoded = decode_bytes(data, declared_charset(data))
    if decoded is None:
        yield _bad(path, source, "undecodable", "HTML page in no known encoding")
        return
    text, codec = decoded
    yield Record(id=make_id(source, str(path)), text=text, source=source, url=str(path),
                 provenance={"encoding": codec})


def _item_record(obj: Any, path: Path, locator: str, config: FilesConfig, source: str) -> Record:
    if not isinstance(obj, dict) or not isinstance(obj.get(config.text_field), str):
        return _bad(path, source, "no_text_field", f"{locator}: no string field {config.text_field!r}",
                    text=json.dumps(obj, ensure_ascii=False, default=str)[:10_000])
    given = obj.get(config.id_field) if config.id_field else obj.get("id")
    rid = str(given) if given not in (None, "") else make_id(source, locator)
    meta = {k: v for k, v in obj.items() if k not in (config.text_field, "id", config.id_field, "url", "lang")}
    return Record(id=rid, text=obj[config.text_field], source=source, url=str(obj.get("url") or path),
                  lang=str(obj.get("lang") or ""), meta={"fields": jsonable(meta)} if meta else {})


def _read_json(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    decoded = _decoded(path, source, "utf-8")
    if isinstance(decoded, Record):
        yield decoded
        return
    try:
        data = json.loads(decoded[0])
    except ValueError as exc:
        yield _bad(path, source, "bad_json", str(exc))
        return
    items = data if isinstance(data, list) else [data]
    for i, obj in enumerate(items):
        yield _item_record(obj, path, f"{path}[{i}]", config, source)


def _read_jsonl(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    if config.text_field == "text" and config.id_field is None:
        for r in read_jsonl(path, source=source):
            r.provenance.setdefault("encoding", "utf-8")
            yield r
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except ValueError as exc:
                    yield _bad(path, source, "bad_json", f"line {lineno}: {exc}", raw[:10_000].decode("utf-8", "replace"))
                    continue
                yield _item_record(obj, path, f"{path}:{lineno}", config, source)


def _read_csv(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    decoded = _decoded(path, source)
    if isinstance(decoded, Record):
        yield decoded
        return
    text, codec = decoded
    delimiter = "\t" if file_format(path) == "tsv" else ","
    csv.field_size_limit(1 << 30)  # allow the 10 MB cells real exports contain
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if reader.fieldnames is None or config.text_field not in reader.fieldnames:
        yield _bad(path, source, "no_text_field", f"no column {config.text_field!r} (columns: {reader.fieldnames})")
        return
    for i, row in enumerate(reader, start=1):
        if None in row:  # more cells than header fields
            row.pop(None)
        record = _item_record(row, path, f"{path}:{i}", config, source)
        record.provenance = {"encoding": codec}
        yield record


def _read_parquet(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    if config.text_field == "text":
        yield from read_parquet(path)
        return
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for b, batch in enumerate(pf.iter_batches(batch_size=4096)):
        for i, row in enumerate(batch.to_pylist()):
            yield _item_record(row, path, f"{path}:{b}:{i}", config, source)


def _read_pdf(path: Path, config: FilesConfig, source: str) -> Iterator[Record]:
    try:
        import pypdf
    except ImportError:
        yield _bad(path, source, "pdf_unsupported", "install lmforge[pdf] (pypdf) to read PDF files")
        return
    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            reader.decrypt("")
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for damaged files
        yield _bad(path, source, "corrupt_pdf", f"{type(exc).__name__}: {exc}")
        return
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        yield _bad(path, source, "pdf_no_text", f"{len(pages)} pages without a text layer (scanned?)")
        return
    yield Record(id=make_id(source, str(path)), text=text, source=source, url=str(path),
                 meta={"pdf": {"pages": len(pages)}}, provenance={"encoding": "pdf"})


_READERS = {
    "text": _read_text, "markdown": _read_text, "html": _read_html, "json": _read_json,
    "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet, "pdf": _read_pdf,
}
