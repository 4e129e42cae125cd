"""Bytes from files and HTTP bodies in bounded memory, whatever their compression.

A 1 MB gzip file can hold a gigabyte of zeros, and one line of a JSONL file can be as long as the
file. So nothing in `collect` asks for "the whole file" or "the next line" without a bound: files
are decompressed as a stream of chunks counted against a cap on the decompressed total, lines are
cut from those chunks (a line over its cap is skipped up to its newline, never held), and an HTTP
body is decoded piece by piece, each piece asked for at most the room left under the cap. Every
file reader and the crawler go through here.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import functools
import gzip
import itertools
import lzma
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lmforge.collect.encoding import SAMPLE_BYTES, detect_encoding, looks_binary

CHUNK = 1 << 20
HEAD = 1024  # bytes of an overlong line kept for its quarantine record
COMPRESSIONS = {".gz": ("gzip", gzip.open), ".bz2": ("bzip2", bz2.open), ".xz": ("xz", lzma.open)}
# Errors a damaged compressed stream raises, besides OSError and EOFError.
STREAM_ERRORS = (zlib.error, lzma.LZMAError)
# Codecs in which the byte 0x0A is always a newline, never part of another character.
_LINE_SAFE = {"utf-8", "utf-8-sig", "gb18030", "big5hkscs", "cp1252"}


class TooLarge(Exception):
    """More bytes than the cap once decompressed or decoded; what was read before stays good."""

    reason = "too_large_decompressed"

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes once decompressed")
        self.limit = limit


def compression(path: Path) -> str | None:
    """The compression a file name declares (gzip, bzip2, xz), or None."""
    found = COMPRESSIONS.get(path.suffix.lower())
    return found[0] if found else None


def open_decompressed(path: Path) -> IO[bytes]:
    """The file's content as a binary stream; each read decompresses only as much as it returns."""
    found = COMPRESSIONS.get(path.suffix.lower())
    return found[1](path, "rb") if found else open(path, "rb")  # noqa: SIM115 - the caller closes it


def iter_chunks(path: Path, limit: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The decompressed content in chunks; raises TooLarge as soon as more than `limit` bytes came out."""
    total = 0
    with open_decompressed(path) as fh:
        while data := fh.read(chunk):
            total += len(data)
            if total > limit:
                raise TooLarge(limit)
            yield data


def read_all(chunks: Iterable[bytes]) -> bytearray:
    """Join chunks without the extra copy `b"".join` makes of a whole file."""
    out = bytearray()
    for chunk in chunks:
        out += chunk
    return out


# --------------------------------------------------------------------------- lines


@dataclass
class LongLine:
    """A line over the cap: its size and first bytes, for the quarantine record. The rest was skipped."""

    size: int
    head: bytes


def iter_lines(chunks: Iterable[bytes], limit: int) -> Iterator[bytes | LongLine]:
    """Lines with their b"\\n" (the last may lack it); one longer than `limit` bytes comes as a LongLine.

    At most `limit` bytes of a line are ever buffered: once a line passes the cap, the rest of it
    is counted and dropped chunk by chunk until its newline.
    """
    buf = bytearray()
    skipping: LongLine | None = None
    for chunk in chunks:
        start = 0
        if skipping is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                skipping.size += len(chunk)
                continue
            skipping.size += nl + 1
            yield skipping
            skipping, start = None, nl + 1
        while (nl := chunk.find(b"\n", start)) >= 0:
            if buf:
                buf += chunk[start:nl + 1]
                line, buf = bytes(buf), bytearray()
            else:
                line = chunk[start:nl + 1]
            yield line if len(line) <= limit else LongLine(len(line), line[:HEAD])
            start = nl + 1
        if len(buf) + len(chunk) - start > limit:
            head = bytes(buf[:HEAD]) + chunk[start:start + max(0, HEAD - len(buf))]
            skipping, buf = LongLine(len(buf) + len(chunk) - start, head), bytearray()
        else:
            buf += chunk[start:]
    if skipping is not None:
        yield skipping
    elif buf:
        yield bytes(buf)


class CsvLines:
    """The lines of a CSV/TSV file as `csv` reads them, noting the first one (too long, or holding NUL)
    that condemns its row, so that the row is quarantined and the rows around it are read as usual.

    A row running over several lines (a quoted field holding newlines) is capped at `limit` here:
    `csv.field_size_limit` would do it, but that limit is process-wide, and lowering it broke every
    CSV reader that ran later in the process. The caller calls `start_row` before each row."""

    PLACEHOLDER = "\x00\n"  # stands in for a skipped line, so that its row still comes out to be dropped

    def __init__(self, lines: Iterator[tuple[int, str | LongLine]], limit: int) -> None:
        self.lines = lines
        self.limit = limit
        self.lineno = 0
        self.row_chars = 0
        self.problem: tuple[str, int, str, int | None] | None = None  # reason, line, error, bytes

    def __iter__(self) -> CsvLines:
        return self

    def start_row(self) -> None:
        self.problem, self.row_chars = None, 0

    def __next__(self) -> str:
        self.lineno, line = next(self.lines)
        self.row_chars += 0 if isinstance(line, LongLine) else len(line)
        if self.row_chars > self.limit:  # the parser drops the row and starts afresh on the next line
            raise csv.Error(f"row running over several lines is longer than max_line_bytes {self.limit}")
        if isinstance(line, LongLine):
            self.flag("line_too_long", f"{line.size} bytes > max_line_bytes {self.limit}", line.size)
            return self.PLACEHOLDER
        if "\x00" in line:
            self.flag("nul_byte", "NUL byte in the row")
        return line

    def flag(self, reason: str, error: str, size: int | None = None) -> None:
        if self.problem is None:
            self.problem = (reason, self.lineno, error, size)


@dataclass
class TextLines:
    """Decoded lines of a text stream and the codec they were decoded with (numbered from 1)."""

    codec: str
    lines: Iterator[tuple[int, str | LongLine]]


def text_lines(chunks: Iterator[bytes], limit: int, nul_ok: bool = False) -> TextLines | str:
    """Detect the codec on the first chunk, then decode line by line; or why it is not text.

    The reason is `binary_file` or `undecodable`. With `nul_ok`, a few NUL bytes do not make a file
    binary (a CSV with one damaged row); the lines holding them are the caller's business.
    """
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) > SAMPLE_BYTES:  # more than the sample, so detection knows the sample is cut
            break
    if looks_binary(head, nul_ok=nul_ok):
        return "binary_file"
    codec = detect_encoding(bytes(head)) if head else "utf-8"
    if codec is None:
        return "undecodable"
    stream: Iterator[bytes] = itertools.chain([bytes(head)], chunks)
    line_codec = codec
    if codec == "utf-8-sig":
        stream = itertools.chain([bytes(head[len(codecs.BOM_UTF8):])], chunks)
        line_codec = "utf-8"
    elif codec not in _LINE_SAFE:  # UTF-16/32: re-encode as UTF-8 so that lines can be cut on b"\n"
        stream, line_codec = _transcode(stream, codec), "utf-8"
    return TextLines(codec, _decoded_lines(iter_lines(stream, limit), line_codec))


def _transcode(chunks: Iterable[bytes], codec: str) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder(codec)("replace")
    for chunk in chunks:
        yield decoder.decode(chunk).encode("utf-8", "surrogatepass")
    yield decoder.decode(b"", final=True).encode("utf-8", "surrogatepass")


def _decoded_lines(lines: Iterator[bytes | LongLine], codec: str) -> Iterator[tuple[int, str | LongLine]]:
    for n, line in enumerate(lines, start=1):
        if isinstance(line, LongLine):
            yield n, line
            continue
        try:
            yield n, line.decode(codec)
        except UnicodeDecodeError:  # the sample decoded but this line did not: keep it, mark the damage
            yield n, line.decode(codec, errors="replace")


# --------------------------------------------------------------------------- HTTP Content-Encoding


@functools.lru_cache(maxsize=1)
def _brotli():
    """The brotli module if its decompressor can cap its output (brotli >= 1.1), else None."""
    try:
        import brotli

        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except (ImportError, TypeError, AttributeError):
        return None
    return brotli


def accept_encoding() -> str:
    """The Accept-Encoding to send: only the codings `BoundedDecoder` can decode under a cap."""
    return "gzip, deflate, br" if _brotli() else "gzip, deflate"


class BadEncoding(ValueError):
    """The body is not what its Content-Encoding says (or uses one we do not decode)."""


class UnsupportedEncoding(BadEncoding):
    pass


class _Zlib:
    errors = (zlib.error,)

    def __init__(self, wbits: int, fallback: int | None = None) -> None:
        self.wbits, self.fallback, self.started = wbits, fallback, False
        self.d = zlib.decompressobj(wbits)

    def run(self, data: bytes, room: int) -> tuple[bytes, bytes]:
        """(output of at most `room` bytes, input not yet consumed)."""
        try:
            out = self.d.decompress(data, room)
        except zlib.error:
            if self.started or self.fallback is None:
                raise
            self.d, self.fallback = zlib.decompressobj(self.fallback), None  # deflate sent without its zlib header
            out = self.d.decompress(data, room)
        self.started = True
        rest = self.d.unconsumed_tail
        if self.d.eof:
            rest = self.d.unused_data
            if self.wbits & 16 and rest.startswith(b"\x1f\x8b"):  # gzip may hold several members
                self.d = zlib.decompressobj(self.wbits)
            else:
                rest = b""  # padding after the stream, as browsers do: ignored
        return out, rest


class _Brotli:
    def __init__(self) -> None:
        brotli = _brotli()
        self.errors = (brotli.error,)
        self.d = brotli.Decompressor()

    def run(self, data: bytes, room: int) -> tuple[bytes, bytes]:
        if data:
            return self.d.process(data, output_buffer_limit=room), b""
        if self.d.can_accept_more_data() or self.d.is_finished():
            return b"", b""
        return self.d.process(b"", output_buffer_limit=room), b""

    def pending(self) -> bool:
        return not self.d.can_accept_more_data() and not self.d.is_finished()


class BoundedDecoder:
    """Decodes an HTTP body's Content-Encoding chunk by chunk, never producing more than `limit` + 1 bytes.

    httpx decodes a whole network read at once, and 64 KB of gzip can be 64 MB of zeros; here each
    step asks the decompressor for at most the room left, so `exceeded` turns true one byte past the
    cap and nothing more was decoded. One coding at most (stacked codings are not sent in practice,
    and we never ask for them).
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.limit = limit
        self.total = 0
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise UnsupportedEncoding(f"Content-Encoding {content_encoding!r}: more than one coding")
        self.stage = self._stage(codings[0]) if codings else None

    @staticmethod
    def _stage(name: str) -> _Zlib | _Brotli:
        if name in ("gzip", "x-gzip"):
            return _Zlib(16 + zlib.MAX_WBITS)
        if name == "deflate":
            return _Zlib(zlib.MAX_WBITS, fallback=-zlib.MAX_WBITS)
        if name == "br" and _brotli():
            return _Brotli()
        raise UnsupportedEncoding(f"Content-Encoding {name!r} is not one of {accept_encoding()}")

    @property
    def exceeded(self) -> bool:
        return self.total > self.limit

    def feed(self, data: bytes) -> bytes:
        """Decoded bytes of `data`, stopping one byte past the cap (then `exceeded` is true).

        Raises BadEncoding when the bytes are not in the declared coding.
        """
        out = bytearray()
        while not self.exceeded:
            room = self.limit + 1 - self.total
            if self.stage is None:
                piece, data = data[:room], b""
            else:
                try:
                    piece, data = self.stage.run(data, room)
                except self.stage.errors as exc:
                    raise BadEncoding(f"{type(exc).__name__}: {exc}") from exc
                piece = piece[:room]  # brotli may overshoot its output limit by a buffer's worth
            out += piece
            self.total += len(piece)
            if not data and not (isinstance(self.stage, _Brotli) and self.stage.pending()):
                break
        return bytes(out)
