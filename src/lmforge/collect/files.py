"""Files on disk: directories and globs of text, Markdown, HTML, JSON(L), CSV, Parquet and PDF.

Text formats are decoded with `collect.encoding` (GBK, GB18030, Big5 and UTF-8 with or without
BOM). Every file is read through `collect.bounded`: decompressed (.gz, .bz2, .xz) as a stream
counted against `max_file_bytes`, and line formats (JSONL, CSV/TSV, text split by line or
paragraph) cut into lines of at most `max_line_bytes`, so memory stays bounded whatever the file
holds. A file that cannot be decoded, is binary, empty or too large becomes one quarantine record
naming the problem; a bad line or row becomes one record of its own, and the lines around it are
read as usual.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.collect.bounded import (
    COMPRESSIONS,
    STREAM_ERRORS,
    CsvLines,
    LongLine,
    TextLines,
    TooLarge,
    compression,
    iter_chunks,
    iter_lines,
    read_all,
    text_lines,
)
from lmforge.collect.encoding import decode_bytes, looks_binary
from lmforge.collect.paths import Listing, expand_paths
from lmforge.collect.remote import RemoteFile, read_staged
from lmforge.config import StrictModel
from lmforge.errors import InputError
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, jsonable, make_id, read_parquet

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
_RANDOM_ACCESS = {"parquet", "pdf"}  # read by libraries that seek: never compressed on the outside


class FilesConfig(StrictModel):
    paths: list[str] = Field(min_length=1, description="files, directories or globs, relative to the recipe")
    recursive: bool = True
    formats: list[str] = Field(default_factory=lambda: sorted(set(FORMATS.values())),
                               description="formats to read; other files are skipped")
    text_split: Literal["file", "paragraph", "line"] = Field("file", description="for text and Markdown")
    text_field: str = Field("text", description="field/column holding the text in JSON, CSV and Parquet")
    id_field: str | None = Field(None, description="field/column with a stable id (default: derived)")
    max_file_bytes: int = Field(
        2_000_000_000, gt=0,
        description="largest file, counted after decompression (.gz, .bz2, .xz) and, for Parquet and PDF, "
                    "as the data and text they expand to; past it the rest of the file is quarantined as "
                    "too_large_decompressed. Whole-file formats (text and Markdown read as one record, HTML, "
                    "JSON) are held in memory up to this size; line formats are streamed")
    max_line_bytes: int = Field(
        32 * 1024 * 1024, gt=0,
        description="longest line (JSONL line, CSV/TSV row, text line or paragraph); a longer one is "
                    "skipped to its newline without being held and quarantined as line_too_long")

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


def file_format(path: Path | RemoteFile) -> str | None:
    """Format from the name, looking through a compression suffix (e.g. .jsonl.gz, .txt.xz)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def list_files(config: FilesConfig, base_dir: Path) -> Listing:
    """Files of the configured paths, directories and globs, sorted within each pattern and deduplicated,
    plus the entries skipped on the way (symlink loops, dangling links)."""
    out: dict[Path, None] = {}
    skipped: dict[Path, str] = {}
    for full, listing in expand_paths(config.paths, base_dir, "input.files.paths", config.recursive):
        for m in listing.files:
            fmt = file_format(m)
            if fmt is None or fmt in config.formats or full == m or full == getattr(m, "url", None):
                out[m] = None  # unknown formats are listed so that they show up in quarantine
        for path, reason in listing.skipped:
            skipped.setdefault(path, reason)
    return Listing(list(out), list(skipped.items()))


def iter_files(config: FilesConfig, base_dir: Path, work_dir: Path | None = None) -> Iterator[Record]:
    listing = list_files(config, base_dir)
    for path in listing.files:
        if isinstance(path, RemoteFile) and file_format(path) is not None:  # unknown formats: quarantined unread
            yield from read_staged(path, work_dir, config.max_file_bytes, "input.files.paths",
                                   partial(read_file, config=config, name=str(path)),
                                   partial(_bad, str(path), f"file:{file_format(path)}", "file_too_large"))
        else:
            yield from read_file(path, config)
    for path, reason in listing.skipped:
        yield _bad(path, f"file:{file_format(path) or 'unknown'}", reason, f"{reason.replace('_', ' ')}: not read")


def read_file(path: Path, config: FilesConfig, name: str | None = None) -> Iterator[Record]:
    """Records of one file, called `name` in them (a remote file's URL); problems become one quarantine record."""
    name = name or str(path)
    fmt = file_format(path)
    source = f"file:{fmt or 'unknown'}"
    if fmt is None:
        yield _bad(name, source, "unsupported_format", f"no reader for {path.name!r}; known: {sorted(FORMATS)}")
        return
    try:
        size = path.stat().st_size
    except OSError as exc:
        yield _bad(name, source, "unreadable_file", str(exc))
        return
    if size == 0:
        yield _bad(name, source, "empty_file", "file is empty")
        return
    if size > config.max_file_bytes:
        yield _bad(name, source, "file_too_large", f"{size} bytes > max_file_bytes {config.max_file_bytes}")
        return
    packed = compression(path)
    if packed and fmt in _RANDOM_ACCESS:
        yield _bad(name, source, "unsupported_format", f"{fmt} files are read uncompressed, not as {packed}")
        return
    prov = {"content_type": CONTENT_TYPES[fmt], "modified_at": _mtime(path), "bytes": size}
    if packed:
        prov["compression"] = packed
    try:
        for record in _READERS[fmt](path, config, source, name):
            record.provenance = {**prov, **record.provenance}
            yield record
    except TooLarge as exc:
        log.warning("%s: %s (max_file_bytes): the rest of the file is quarantined", name, exc)
        yield _bad(name, source, TooLarge.reason, f"{exc} (max_file_bytes {config.max_file_bytes})")
    except (OSError, EOFError, ValueError, *STREAM_ERRORS) as exc:
        yield _bad(name, source, "corrupt_file", f"{type(exc).__name__}: {exc}")


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def _bad(path: Path | str, source: str, reason: str, error: str, text: str = "") -> Record:
    return Record(
        id=make_id(source, f"{path}#{reason}"), text=text, source=source, url=str(path),
        meta={"drop_reason": reason, "drop_stage": "input", "error": error[:300]},
    )


def _bad_line(path: Path | str, source: str, locator: str, reason: str, line: int, error: str,
              text: str = "", size: int | None = None) -> Record:
    """One bad line or row: quarantined on its own, the rest of the file is read."""
    meta: dict[str, Any] = {"drop_reason": reason, "drop_stage": "input", "error": error[:300], "line": line}
    if size is not None:
        meta["bytes"] = size
    return Record(id=make_id(source, f"{locator}#{reason}"), text=text, source=source, url=str(path), meta=meta)


def _too_long(path: Path | str, source: str, locator: str, line: int, long: LongLine, limit: int) -> Record:
    return _bad_line(path, source, locator, "line_too_long", line, f"{long.size} bytes > max_line_bytes {limit}",
                     long.head.decode("utf-8", "replace"), long.size)


def _whole(path: Path, config: FilesConfig, source: str, name: str) -> bytearray | Record:
    """The decompressed file in memory (up to max_file_bytes), unless its first chunk shows it is binary."""
    chunks = iter_chunks(path, config.max_file_bytes)
    first = next(chunks, b"")
    if looks_binary(first):
        return _bad(name, source, "binary_file", "not text: NUL or control bytes in the first 8 KB")
    return read_all(itertools.chain([first], chunks))


def _read_text(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    if config.text_split == "file":
        data = _whole(path, config, source, name)
        decoded = data if isinstance(data, Record) else decode_bytes(data)
        if decoded is None:
            decoded = _bad(name, source, "undecodable", "not text in UTF-8, GB18030/GBK, Big5 or cp1252")
        if isinstance(decoded, Record):
            yield decoded
        elif decoded[0].strip():
            yield Record(id=make_id(source, name), text=decoded[0], source=source, url=name,
                         provenance={"encoding": decoded[1]})
        return
    stream = text_lines(iter_chunks(path, config.max_file_bytes), config.max_line_bytes)
    if isinstance(stream, str):
        yield _bad(name, source, stream, "not text in UTF-8, GB18030/GBK, Big5 or cp1252")
        return
    split = _split_lines if config.text_split == "line" else _paragraphs
    for i, piece in split(stream, config.max_line_bytes):
        locator = f"{name}#{i}"
        if isinstance(piece, tuple):
            yield _too_long(name, source, locator, *piece, config.max_line_bytes)
        elif piece.strip():
            yield Record(id=make_id(source, locator), text=piece, source=source, url=name,
                         provenance={"encoding": stream.codec})


Piece = str | tuple[int, LongLine]  # text, or (first line number, what was skipped) of an overlong piece


def _split_lines(stream: TextLines, limit: int) -> Iterator[tuple[int, Piece]]:
    """Numbered as `text.splitlines()` numbers them, so ids stay what they were when files were read whole."""
    i = 0
    for lineno, line in stream.lines:
        if isinstance(line, LongLine):
            yield i, (lineno, line)
            i += 1
            continue
        for piece in line.splitlines():
            yield i, piece
            i += 1


def _paragraphs(stream: TextLines, limit: int) -> Iterator[tuple[int, Piece]]:
    """Pieces of `text.replace("\\r\\n", "\\n").split("\\n\\n")`, built line by line and capped at `limit`.

    Every line but the last ends in "\\n", so a line that is just "\\n" after a non-empty piece
    completes a "\\n\\n": the piece ends there without that last "\\n", and the next piece starts
    afresh (where a lone "\\n" is content, as `split` has it).
    """
    i, parts, size, first, long = 0, [], 0, 0, False
    for lineno, line in stream.lines:
        if not isinstance(line, LongLine):
            line = line.replace("\r\n", "\n")
            if line == "\n" and size:
                yield i, (first, LongLine(size, b"")) if long else "".join(parts)[:-1]
                i, parts, size, long = i + 1, [], 0, False
                continue
        if not size:
            first = lineno
        size += line.size if isinstance(line, LongLine) else len(line)
        if isinstance(line, LongLine) or size > limit:
            long, parts = True, []
        elif not long:
            parts.append(line)
    if size:
        yield i, (first, LongLine(size, b"")) if long else "".join(parts)


def _read_html(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    from lmforge.collect.html import declared_charset

    data = _whole(path, config, source, name)
    if isinstance(data, Record):
        yield data
        return
    decoded = decode_bytes(data, declared_charset(data))
    if decoded is None:
        yield _bad(name, source, "undecodable", "HTML page in no known encoding")
        return
    text, codec = decoded
    yield Record(id=make_id(source, name), text=text, source=source, url=name,
                 provenance={"encoding": codec})


def _item_record(obj: Any, path: Path | str, locator: str, config: FilesConfig, source: str) -> Record:
    if not isinstance(obj, dict) or not isinstance(obj.get(config.text_field), str):
        return Record(id=make_id(source, f"{locator}#no_text_field"), source=source, url=str(path),
                      text=json.dumps(obj, ensure_ascii=False, default=str)[:10_000],
                      meta={"drop_reason": "no_text_field", "drop_stage": "input",
                            "error": f"{locator}: no string field {config.text_field!r}"[:300]})
    given = obj.get(config.id_field) if config.id_field else obj.get("id")
    rid = str(given) if given not in (None, "") else make_id(source, locator)
    meta = {k: v for k, v in obj.items() if k not in (config.text_field, "id", config.id_field, "url", "lang")}
    return Record(id=rid, text=obj[config.text_field], source=source, url=str(obj.get("url") or path),
                  lang=str(obj.get("lang") or ""), meta={"fields": jsonable(meta)} if meta else {})


def _read_json(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    data = _whole(path, config, source, name)
    decoded = data if isinstance(data, Record) else decode_bytes(data, "utf-8")
    if decoded is None:
        decoded = _bad(name, source, "undecodable", "not text in UTF-8, GB18030/GBK, Big5 or cp1252")
    if isinstance(decoded, Record):
        yield decoded
        return
    del data
    try:
        parsed = json.loads(decoded[0])
    except ValueError as exc:
        yield _bad(name, source, "bad_json", str(exc))
        return
    items = parsed if isinstance(parsed, list) else [parsed]
    for i, obj in enumerate(items):
        yield _item_record(obj, name, f"{name}[{i}]", config, source)


def _read_jsonl(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    lines = iter_lines(iter_chunks(path, config.max_file_bytes), config.max_line_bytes)
    for lineno, raw in enumerate(lines, start=1):
        locator = f"{name}:{lineno}"
        if isinstance(raw, LongLine):
            yield _too_long(name, source, locator, lineno, raw, config.max_line_bytes)
        elif raw.strip():
            yield _json_line(raw, name, locator, lineno, config, source)


def _json_line(raw: bytes, path: Path | str, locator: str, lineno: int, config: FilesConfig, source: str) -> Record:
    """One JSONL line: with the default fields, a whole Record as `records.read_jsonl` reads it."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        reason = "bad_utf8" if isinstance(exc, UnicodeDecodeError) else "bad_json"
        return _bad_line(path, source, locator, reason, lineno, str(exc), raw[:10_000].decode("utf-8", "replace"))
    if config.text_field != "text" or config.id_field is not None:
        return _item_record(obj, path, locator, config, source)
    try:
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError("line is not an object with a string 'text'")
        obj.setdefault("source", source)
        if not obj.get("id"):
            obj["id"] = make_id(source, locator)
        obj.setdefault("url", str(path))
        record = Record.from_dict(obj)
    except (TypeError, ValueError) as exc:  # also meta/provenance that are not objects
        return _bad_line(path, source, locator, "bad_json", lineno, str(exc), raw[:10_000].decode("utf-8", "replace"))
    record.provenance.setdefault("encoding", "utf-8")
    return record


def _read_csv(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    stream = text_lines(iter_chunks(path, config.max_file_bytes), config.max_line_bytes, nul_ok=True)
    if isinstance(stream, str):
        yield _bad(name, source, stream, "not text in UTF-8, GB18030/GBK, Big5 or cp1252")
        return
    rows = CsvLines(stream.lines, config.max_line_bytes)
    csv.field_size_limit(max(csv.field_size_limit(), config.max_line_bytes))  # raised only: it is process-wide
    reader = csv.DictReader(rows, delimiter="\t" if file_format(path) == "tsv" else ",")
    try:
        fields = reader.fieldnames
    except csv.Error as exc:
        fields = None
        rows.flag("bad_csv", str(exc))
    if rows.problem is not None or fields is None or config.text_field not in fields:
        reason = rows.problem[0] if rows.problem else "no_text_field"
        yield _bad(name, source, reason, f"no column {config.text_field!r} in the header (columns: {fields})")
        return
    for i in itertools.count(1):
        rows.start_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a quoted field longer than max_line_bytes: the parser starts afresh
            rows.flag("bad_csv_row", str(exc))
        locator = f"{name}:{i}"
        if rows.problem is not None:
            reason, line, error, size = rows.problem
            yield _bad_line(name, source, locator, reason, line, error, size=size)
            continue
        row.pop(None, None)  # more cells than header fields
        record = _item_record(row, name, locator, config, source)
        record.provenance = {"encoding": stream.codec}
        yield record


def _within(records: Iterator[Record], limit: int) -> Iterator[Record]:
    """Stops a reader whose records add up to more text than `limit`: what a compressed format expands to."""
    total = 0
    for record in records:
        total += len(record.text)
        if total > limit:
            raise TooLarge(limit)
        yield record


def _read_parquet(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    """Rows of a Parquet file. A file that is not readable Parquet stops the run with an InputError
    naming it (as `records.read_parquet` does): it is a broken input, not a bad row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet file {name}: {exc}") from None
    meta = pf.metadata
    if sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) > config.max_file_bytes:
        raise TooLarge(config.max_file_bytes)  # the uncompressed size, from the footer: nothing read yet
    if config.text_field == "text":
        yield from _within(read_parquet(path, name=name if name != str(path) else None), config.max_file_bytes)
        return
    if config.text_field not in pf.schema_arrow.names:
        yield _bad(name, source, "no_text_field", f"no column {config.text_field!r} "
                                                  f"(columns: {pf.schema_arrow.names})")
        return
    rows = (_item_record(row, name, f"{name}:{b}:{i}", config, source)
            for b, batch in enumerate(pf.iter_batches(batch_size=4096))
            for i, row in enumerate(batch.to_pylist()))
    try:
        yield from _within(rows, config.max_file_bytes)
    except pa.ArrowException as exc:
        raise InputError(f"cannot read Parquet file {name}: {exc}") from None


def _read_pdf(path: Path, config: FilesConfig, source: str, name: str) -> Iterator[Record]:
    try:
        import pypdf
    except ImportError:
        yield _bad(name, source, "pdf_unsupported", "install lmforge[pdf] (pypdf) to read PDF files")
        return
    pages: list[str] = []
    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            reader.decrypt("")
        total = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            total += len(pages[-1])
            if total > config.max_file_bytes:
                raise TooLarge(config.max_file_bytes)
    except TooLarge:
        raise
    except pypdf.errors.LimitReachedError as exc:  # pypdf's own cap on one decompressed stream
        yield _bad(name, source, TooLarge.reason, f"LimitReachedError: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for damaged files
        yield _bad(name, source, "corrupt_pdf", f"{type(exc).__name__}: {exc}")
        return
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        yield _bad(name, source, "pdf_no_text", f"{len(pages)} pages without a text layer (scanned?)")
        return
    yield Record(id=make_id(source, name), text=text, source=source, url=name,
                 meta={"pdf": {"pages": len(pages)}}, provenance={"encoding": "pdf"})


_READERS = {
    "text": _read_text, "markdown": _read_text, "html": _read_html, "json": _read_json,
    "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet, "pdf": _read_pdf,
}


class FilesSource(Source):
    """Local files, directories and globs in every supported format."""

    name = "files"
    Config = FilesConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_files(self.config, ctx.base_dir, ctx.work_dir)
