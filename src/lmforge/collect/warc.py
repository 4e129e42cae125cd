"""WARC (and legacy ARC) files: HTTP responses to records, surviving damaged gzip members.

FastWARC does the parsing (it is several times faster than warcio). A corrupt gzip member
stops any reader, so on an error we emit one quarantine record for the damaged member, find
the next gzip member header and carry on from there; a truncated last member (a download cut
short) is noticed by checking that the file was consumed to its end. ARC files go through
warcio's ARC-to-WARC conversion.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lmforge.collect.html import decode_html
from lmforge.collect.paths import expand_paths
from lmforge.collect.remote import ObjectTooLarge, RemoteFile, read_staged
from lmforge.config import StrictModel
from lmforge.errors import require
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, make_id

log = logging.getLogger(__name__)
GZIP_MAGIC = b"\x1f\x8b\x08"


def _document_types() -> tuple:
    from fastwarc.warc import WarcRecordType

    return (WarcRecordType.response, WarcRecordType.resource)


class WarcConfig(StrictModel):
    paths: list[str] = Field(min_length=1, description="WARC/ARC files or globs (.warc, .warc.gz, .arc, .arc.gz)")
    content_types: list[str] = Field(
        default_factory=lambda: ["text/html", "application/xhtml+xml", "text/plain"],
        description="HTTP content types kept; others are quarantined with reason content_type",
    )
    statuses: list[int] = Field(default_factory=lambda: [200], description="HTTP statuses kept")
    max_bytes: int = Field(10_000_000, gt=0, description="payloads larger than this are quarantined")
    max_file_bytes: int = Field(
        50_000_000_000, gt=0,
        description="largest remote WARC (s3://, https://, ...) downloaded; a bigger object is quarantined "
                    "as file_too_large without being fetched. Local files are read in place, whatever their size")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        return {"paths": value} if isinstance(value, list | str) else value


def list_warcs(config: WarcConfig, base_dir: Path) -> list[Path | RemoteFile]:
    expanded = expand_paths(config.paths, base_dir, "input.warc.paths", directories=False)
    return [m for _, listing in expanded for m in listing.files]  # bad links were logged by expand_paths


def iter_warc(config: WarcConfig, base_dir: Path, work_dir: Path | None = None) -> Iterator[Record]:
    for path in list_warcs(config, base_dir):
        if isinstance(path, RemoteFile):
            yield from _read_remote(path, config, work_dir)
        else:
            yield from read_warc(path, config)


def _read_remote(remote: RemoteFile, config: WarcConfig, work_dir: Path | None) -> Iterator[Record]:
    """A remote WARC, staged into the run's cache and read there; its records name the URL, not the copy."""
    url = str(remote)
    return read_staged(remote, work_dir, config.max_file_bytes, "input.warc.paths",
                       lambda local: read_warc(local, config, name=url),
                       lambda error: _damaged(url, "warc", 0, error, ObjectTooLarge.reason))


def read_warc(path: str | Path, config: WarcConfig | None = None, source: str = "warc",
              name: str | None = None) -> Iterator[Record]:
    """Records of one WARC/ARC file, with quarantine records for damaged members and skipped responses.

    `name` is what records call the file (ids of damaged members, `warc_file`): a remote file's URL
    rather than the path of its cached copy, so the ids do not depend on where the run is.
    """
    path = Path(path)
    name = name or str(path)
    config = config or WarcConfig(paths=[str(path)])
    if ".arc" in [s.lower() for s in path.suffixes]:
        yield from _read_arc(path, config, source, name)
        return
    gzipped = path.name.lower().endswith(".gz")
    offset, size = 0, path.stat().st_size
    doc_types = _document_types()
    while offset < size:
        last_pos, error, held = None, None, None
        try:
            for last_pos, record in _iterate(path, offset):
                # hold each document until the next member parses: only then is its own member whole
                if held is not None:
                    yield held
                    held = None
                if record.record_type in doc_types:
                    held = _to_record(record, name, config, source, last_pos)
        except OSError as exc:
            error = exc
        if not gzipped:
            if held is not None:
                yield held
            if error is not None:
                yield _damaged(name, source, last_pos or offset, f"{type(error).__name__}: {error}")
            return
        damaged_at = _find_damage(path, offset, last_pos, error is not None, size)
        if held is not None:
            if damaged_at is not None and damaged_at == last_pos and held.drop_reason != "truncated_record":
                held.meta = {"drop_reason": "truncated_record", "drop_stage": "input",
                             "error": "gzip member cut short"}
            yield held
        if damaged_at is None:
            return
        if damaged_at != last_pos:  # a cut-short last record was quarantined just above
            reason = f"{type(error).__name__}: {error}" if error else "truncated gzip member at end of file"
            yield _damaged(name, source, damaged_at, reason)
        nxt = _next_member(path, damaged_at + 1)
        if nxt is None:
            return
        offset = nxt


def _find_damage(path: Path, offset: int, last_pos: int | None, failed: bool, size: int) -> int | None:
    """Start of the damaged member after a pass that began at `offset`, or None if the file ended cleanly."""
    if last_pos is None:
        return offset if failed else _first_bad_member(path, offset, size)
    after_last = _member_end(path, last_pos)
    if after_last is None:
        return last_pos  # the last record read was itself cut short
    return after_last if failed else _first_bad_member(path, after_last, size)


def _iterate(path: Path, offset: int):
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    # every record type, so the last position seen is the last whole member before any damage
    with open(path, "rb") as fh:
        fh.seek(offset)
        for record in ArchiveIterator(fh, record_types=WarcRecordType.any_type, parse_http=True,
                                      fsspec_args=False):
            yield record.stream_pos, record  # absolute: FastWARC starts counting at the seek position


def _member_end(path: Path, start: int) -> int | None:
    """Offset just past the gzip member starting at `start`, or None if it is damaged or cut short."""
    with open(path, "rb") as fh:
        fh.seek(start)
        pos = start
        d = zlib.decompressobj(31)
        while not d.eof:
            chunk = fh.read(1 << 16)
            if not chunk:
                return None
            pos += len(chunk)
            try:
                while chunk and not d.eof:  # output discarded in bounded pieces: a member may be a bomb
                    d.decompress(chunk, 1 << 20)
                    chunk = d.unconsumed_tail
            except zlib.error:
                return None
        return pos - len(d.unused_data)


def _first_bad_member(path: Path, start: int | None, size: int) -> int | None:
    """Walk the members from `start` to the end of the file; where one fails, or None if all are whole.

    FastWARC ends quietly on a truncated final member, so a clean end must be checked by hand.
    """
    pos = start
    while pos is not None and pos < size:
        end = _member_end(path, pos)
        if end is None:
            return pos
        pos = end
    return None


def _next_member(path: Path, start: int) -> int | None:
    with open(path, "rb") as fh:
        fh.seek(start)
        carry = b""
        base = start
        while chunk := fh.read(1 << 20):
            buf = carry + chunk
            i = buf.find(GZIP_MAGIC)
            if i >= 0:
                return base - len(carry) + i
            carry = buf[-2:]
            base += len(chunk)
    return None


def _damaged(name: str, source: str, offset: int, error: str, reason: str = "corrupt_warc_member") -> Record:
    return Record(
        id=make_id(source, f"{name}@{offset}#damaged"), text="", source=source, url=name,
        meta={"drop_reason": reason, "drop_stage": "input", "error": error[:300], "warc_offset": offset},
    )


def _to_record(record, name: str, config: WarcConfig, source: str, offset: int) -> Record:
    headers = record.headers
    uri = headers.get("WARC-Target-URI") or ""
    record_id = headers.get("WARC-Record-ID") or f"{name}@{offset}"
    status = record.http_headers.status_code if record.is_http and record.http_headers else None
    content_type = (record.http_content_type if record.is_http else headers.get("Content-Type")) or ""
    prov = {"fetched_at": headers.get("WARC-Date"), "content_type": content_type, "http_status": status,
            "warc_file": _base_name(name), "warc_offset": offset, "warc_record_id": record_id}
    rec = Record(id=make_id(source, record_id), text="", source=source, url=uri, provenance=prov)
    reason = _skip_reason(status if record.is_http else 200, content_type, config)
    body = b"" if reason else record.reader.read(config.max_bytes + 1)
    got = len(body) + record.reader.consume()  # consume() drains the rest: the member must be whole
    if got < record.content_length:
        rec.meta = {"drop_reason": "truncated_record", "drop_stage": "input",
                    "error": f"{got} of {record.content_length} payload bytes"}
        return rec
    if reason is None and got > config.max_bytes:
        reason = "too_large"
    if reason is None:
        full_type = record.http_headers.get("Content-Type") if record.is_http else content_type
        decoded = decode_html(body, full_type)
        if decoded is None:
            reason = "undecodable"
        else:
            rec.text, rec.provenance["encoding"] = decoded
    if reason is not None:
        rec.meta = {"drop_reason": reason, "drop_stage": "input"}
    return rec


def _skip_reason(status: int | None, content_type: str | None, config: WarcConfig) -> str | None:
    """Why a response is not kept as a document (by status and type), or None to keep it."""
    if status not in config.statuses:
        return f"http_{status}"
    mime = (content_type or "").split(";")[0].strip().lower()
    if config.content_types and mime not in config.content_types:
        return "content_type"
    return None


def _base_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1] if "://" in name else Path(name).name


def _read_arc(path: Path, config: WarcConfig, source: str, name: str) -> Iterator[Record]:
    """Legacy ARC files, converted record by record by warcio (slower, but ARC collections are small)."""
    require("warcio", "data")
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    with open(path, "rb") as fh:
        it = ArchiveIterator(fh, arc2warc=True)
        try:
            for rec in it:
                if rec.rec_type != "response":
                    continue
                uri = rec.rec_headers.get_header("WARC-Target-URI") or ""
                status = int(rec.http_headers.get_statuscode()) if rec.http_headers else None
                ctype = rec.http_headers.get_header("Content-Type") if rec.http_headers else ""
                out = Record(id=make_id(source, f"{uri}@{it.offset}"), text="", source=source, url=uri,
                             provenance={"fetched_at": rec.rec_headers.get_header("WARC-Date"),
                                         "content_type": ctype, "http_status": status,
                                         "warc_file": _base_name(name),
                                         "warc_offset": it.offset})
                body = rec.content_stream().read(config.max_bytes + 1)
                if reason := _skip_reason(status, ctype, config) or ("too_large" if len(body) > config.max_bytes
                                                                     else None):
                    out.meta = {"drop_reason": reason, "drop_stage": "input"}
                elif (decoded := decode_html(body, ctype)) is None:
                    out.meta = {"drop_reason": "undecodable", "drop_stage": "input"}
                else:
                    out.text, out.provenance["encoding"] = decoded
                yield out
        except (ArchiveLoadFailed, OSError, EOFError, zlib.error) as exc:
            yield _damaged(name, source, it.offset, f"{type(exc).__name__}: {exc}")


class WarcSource(Source):
    """Pages of WARC/ARC archives."""

    name = "warc"
    Config = WarcConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_warc(self.config, ctx.base_dir, ctx.work_dir)
