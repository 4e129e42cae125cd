"""Durable crawl state: URL normalization, the SQLite frontier, and the WARC files pages go to.

They live together because "every page fetched exactly once, even across SIGKILL" depends on
how they are written together: a page's WARC record is appended as its own gzip member and
fsync'd, then its frontier row, its new links and the WARC file's committed length change in
one SQLite transaction. On start, whatever lies in a WARC file past its committed length is
either a complete record (the process died before the commit: the page counts as fetched) or
a torn member (cut off, so the file stays readable, and the page is fetched again).
"""

from __future__ import annotations

import io
import logging
import os
import re
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

log = logging.getLogger(__name__)

# Custom WARC header fields: enough to rebuild a frontier row from the WARC alone.
H_FRONTIER = "LMForge-Frontier-URL"
H_DEPTH = "LMForge-Depth"
H_CANONICAL = "LMForge-Canonical"

# --------------------------------------------------------------------------- URLs

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _fix_escapes(part: str) -> str:
    """Uppercase %xx escapes and decode those of unreserved characters (RFC 3986 6.2.2)."""

    def repl(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch.isascii() and (ch.isalnum() or ch in "-._~") else "%" + m.group(1).upper()

    return _ESCAPE.sub(repl, part)


def _remove_dot_segments(path: str) -> str:
    if "/." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            continue
        out.append(seg)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/".join(out)


def normalize_url(url: str) -> str | None:
    """The frontier's key for a URL, or None when it is not a usable http(s) URL.

    Lowercase scheme and host (IDNA), no default port, no fragment or userinfo, dot segments
    resolved, escapes normalized, query parameters sorted, so that `?b=2&a=1#top` and
    `?a=1&b=2` are one page. Parameters are not dropped: which ones matter is site-specific.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    else:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _fix_escapes(_remove_dot_segments(quote(parts.path, safe=_SAFE_PATH))) or "/"
    query = quote(parts.query, safe=_SAFE_PATH + "?")
    query = "&".join(sorted(_fix_escapes(p) for p in query.split("&") if p))
    return urlunsplit((scheme, netloc, path, query, ""))


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.base: str | None = None
        self.canonical: str | None = None
        self.nofollow = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: (v or "").strip() for k, v in attrs}
        rel = attr.get("rel", "").lower().split()
        if tag in ("a", "area") and attr.get("href") and "nofollow" not in rel:
            self.links.append(attr["href"])
        elif tag in ("frame", "iframe") and attr.get("src"):
            self.links.append(attr["src"])
        elif tag == "link" and "canonical" in rel and attr.get("href") and self.canonical is None:
            self.canonical = attr["href"]
        elif tag == "base" and attr.get("href") and self.base is None:
            self.base = attr["href"]
        elif tag == "meta" and attr.get("name", "").lower() == "robots":
            self.nofollow = self.nofollow or "nofollow" in attr.get("content", "").lower()


def extract_links(html: str, page_url: str) -> tuple[list[str], str | None]:
    """Absolute link targets and the rel=canonical URL of a page (none if it says nofollow)."""
    parser = _LinkParser()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError) as exc:  # very broken markup: keep what was found
        log.debug("HTML parse error on %s: %s", page_url, exc)
    base = urljoin(page_url, parser.base) if parser.base else page_url
    canonical = urljoin(base, parser.canonical) if parser.canonical else None
    links = [] if parser.nofollow else [urljoin(base, href) for href in parser.links]
    return links, canonical


# --------------------------------------------------------------------------- frontier

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    url TEXT PRIMARY KEY,       -- normalized
    depth INTEGER NOT NULL,
    state TEXT NOT NULL,        -- queued | done | failed | alias
    reason TEXT,                -- failed: the drop reason; alias: redirect | canonical
    via TEXT,                   -- alias: the frontier URL whose redirect or canonical named it
    parent TEXT,                -- the page the link was found on
    final_url TEXT, http_status INTEGER, content_type TEXT, size INTEGER, fetched_at TEXT,
    requested INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS urls_state ON urls(state);
CREATE TABLE IF NOT EXISTS robots (origin TEXT PRIMARY KEY, status INTEGER, body TEXT);
CREATE TABLE IF NOT EXISTS link_counts (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS warc_files (name TEXT PRIMARY KEY, committed INTEGER NOT NULL);
"""


@dataclass
class Fetched:
    """What the frontier keeps about a fetched page (the body itself is in the WARC)."""

    url: str
    final_url: str
    depth: int
    http_status: int
    content_type: str
    size: int
    fetched_at: str


class Frontier:
    """URL states in SQLite (WAL), written only from the event loop's thread."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return _Transaction(self.db)

    def add(self, urls: Iterable[str], depth: int, parent: str | None = None) -> list[str]:
        """Queue URLs not seen before; returns those that were new."""
        with self._tx():
            return self._add(urls, depth, parent)

    def _add(self, urls: Iterable[str], depth: int, parent: str | None) -> list[str]:
        new = []
        for url in urls:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO urls(url, depth, state, parent) VALUES (?, ?, 'queued', ?)",
                (url, depth, parent))
            if cur.rowcount:
                new.append(url)
        return new

    def queued(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT url, depth FROM urls WHERE state = 'queued' ORDER BY rowid").fetchall()

    def attempted(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM urls WHERE requested = 1").fetchone()[0]

    def claim(self, url: str, via: str, depth: int) -> bool:
        """Reserve a redirect target for the chain starting at `via`.

        False when another page already knows the URL (it is or was fetched on its own); true
        when it is new or was claimed by `via` itself before a kill.
        """
        with self._tx():
            row = self.db.execute("SELECT via FROM urls WHERE url = ?", (url,)).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO urls(url, depth, state, reason, via) VALUES (?, ?, 'alias', 'redirect', ?)",
                    (url, depth, via))
                return True
            return row[0] == via

    def record_fetched(self, page: Fetched, links: list[str], canonical: str | None,
                       ignored: dict[str, int], warc: tuple[str, int] | None) -> list[str]:
        """Mark a page done, queue its new links and commit the WARC length, atomically."""
        with self._tx():
            self.db.execute(
                "INSERT INTO urls(url, depth, state, final_url, http_status, content_type, size, fetched_at,"
                " requested) VALUES (?, ?, 'done', ?, ?, ?, ?, ?, 1) ON CONFLICT(url) DO UPDATE SET"
                " state='done', reason=NULL, final_url=excluded.final_url, http_status=excluded.http_status,"
                " content_type=excluded.content_type, size=excluded.size, fetched_at=excluded.fetched_at,"
                " requested=1",
                (page.url, page.depth, page.final_url, page.http_status, page.content_type, page.size,
                 page.fetched_at))
            if canonical:
                self.db.execute(
                    "INSERT OR IGNORE INTO urls(url, depth, state, reason, via) VALUES (?, ?, 'alias', 'canonical', ?)",
                    (canonical, page.depth, page.url))
            new = self._add(links, page.depth + 1, page.url)
            self._count(ignored)
            if warc is not None:
                self._set_committed(*warc)
            return new

    def record_other(self, url: str, state: str, reason: str, *, requested: bool, final_url: str | None = None,
                     http_status: int | None = None, content_type: str | None = None, size: int | None = None,
                     fetched_at: str | None = None, error: str | None = None) -> None:
        """Mark a page failed (dropped with `reason`) or an alias of another URL."""
        with self._tx():
            self.db.execute(
                "UPDATE urls SET state=?, reason=?, requested=?, final_url=?, http_status=?, content_type=?,"
                " size=?, fetched_at=?, error=? WHERE url=?",
                (state, reason, int(requested), final_url, http_status, content_type, size, fetched_at,
                 error, url))

    def _count(self, ignored: dict[str, int]) -> None:
        for reason, n in ignored.items():
            self.db.execute(
                "INSERT INTO link_counts(reason, n) VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET n = n + ?",
                (reason, n, n))

    def state(self, url: str) -> str | None:
        row = self.db.execute("SELECT state FROM urls WHERE url = ?", (url,)).fetchone()
        return row[0] if row else None

    # robots.txt answers survive a restart so a resumed crawl does not ask again
    def robots(self, origin: str) -> tuple[int, str] | None:
        return self.db.execute("SELECT status, body FROM robots WHERE origin = ?", (origin,)).fetchone()

    def save_robots(self, origin: str, status: int, body: str) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO robots VALUES (?, ?, ?)", (origin, status, body))

    def committed(self, name: str) -> int:
        row = self.db.execute("SELECT committed FROM warc_files WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def set_committed(self, name: str, length: int) -> None:
        with self._tx():
            self._set_committed(name, length)

    def _set_committed(self, name: str, length: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO warc_files VALUES (?, ?)", (name, length))

    def counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(URLs by state, failed URLs by reason, ignored links by reason)."""
        by_state = dict(self.db.execute("SELECT state, COUNT(*) FROM urls GROUP BY state").fetchall())
        failed = dict(self.db.execute(
            "SELECT reason, COUNT(*) FROM urls WHERE state = 'failed' GROUP BY reason ORDER BY reason").fetchall())
        links = dict(self.db.execute("SELECT reason, n FROM link_counts ORDER BY reason").fetchall())
        return by_state, failed, links

    def failed_rows(self) -> list[sqlite3.Row]:
        cur = self.db.execute("SELECT * FROM urls WHERE state = 'failed' ORDER BY url")
        cur.row_factory = sqlite3.Row
        return cur.fetchall()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")


# --------------------------------------------------------------------------- WARC files


@dataclass
class WarcPage:
    """A response record found in a WARC file past its committed length (recovery input)."""

    file: str
    end: int
    frontier_url: str
    target_url: str
    depth: int
    http_status: int
    content_type: str
    body: bytes
    fetched_at: str


def warc_names(directory: Path) -> list[Path]:
    return sorted(directory.glob("crawl-*.warc.gz"))


def _members(fh: io.BufferedReader, start: int) -> Iterator[tuple[int, bytes]]:
    """(end offset, raw member bytes) of each complete gzip member from `start`; stops at a torn one."""
    fh.seek(start)
    pos = start
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        raw = bytearray()
        while not inflater.eof:
            chunk = fh.read(1 << 16)
            if not chunk:
                return
            raw += chunk
            try:
                inflater.decompress(chunk)
            except zlib.error:
                return
        size = len(raw) - len(inflater.unused_data)
        pos += size
        yield pos, bytes(raw[:size])
        fh.seek(pos)


class WarcStore:
    """Appends one gzip member per record to `crawl-NNNNN.warc.gz`, rotating by size."""

    def __init__(self, directory: Path, frontier: Frontier, max_bytes: int, software: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.frontier = frontier
        self.max_bytes = max_bytes
        self.software = software
        self._fh: io.BufferedWriter | None = None
        self._name = ""

    def recover(self) -> list[WarcPage]:
        """Cut torn tails off every file and return the complete records past the committed length."""
        from warcio.exceptions import ArchiveLoadFailed

        pages: list[WarcPage] = []
        for path in warc_names(self.dir):
            committed = self.frontier.committed(path.name)
            size = path.stat().st_size
            end, found = committed, []
            if size > committed:
                with open(path, "rb") as fh:
                    for member_end, raw in _members(fh, committed):
                        try:
                            records = self._parse_member(path.name, member_end, raw)
                        except (ArchiveLoadFailed, ValueError) as exc:
                            log.warning("unreadable record in %s at offset %d: %s", path, end, exc)
                            break
                        end = member_end
                        found.extend(records)
                        if not found:  # a warcinfo record before any page: nothing to replay
                            self.frontier.set_committed(path.name, end)
            if end < size:
                log.warning("cutting a torn record off %s (%d bytes after offset %d)", path, size - end, end)
                os.truncate(path, end)
            pages.extend(found)
        return pages

    @staticmethod
    def _parse_member(name: str, end: int, raw: bytes) -> list[WarcPage]:
        from warcio.archiveiterator import ArchiveIterator

        out = []
        for rec in ArchiveIterator(io.BytesIO(raw)):
            frontier_url = rec.rec_headers.get_header(H_FRONTIER)
            if rec.rec_type != "response" or not frontier_url:
                continue
            out.append(WarcPage(
                file=name, end=end, frontier_url=frontier_url,
                target_url=rec.rec_headers.get_header("WARC-Target-URI"),
                depth=int(rec.rec_headers.get_header(H_DEPTH) or 0),
                http_status=int(rec.http_headers.get_statuscode() or 0),
                content_type=rec.http_headers.get_header("Content-Type") or "",
                body=rec.content_stream().read(),
                fetched_at=rec.rec_headers.get_header("WARC-Date") or "",
            ))
        return out

    def _open(self) -> io.BufferedWriter:
        if self._fh is not None and self._fh.tell() < self.max_bytes:
            return self._fh
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        files = warc_names(self.dir)
        if files and files[-1].stat().st_size < self.max_bytes:
            path = files[-1]
        else:
            path = self.dir / f"crawl-{len(files):05d}.warc.gz"
        self._fh = open(path, "ab")  # noqa: SIM115 - kept open across records, closed in close()
        self._name = path.name
        if self._fh.tell() == 0:
            self._write(self._warcinfo())
            self.frontier.set_committed(self._name, self._fh.tell())
        return self._fh

    def _warcinfo(self) -> bytes:
        from warcio.warcwriter import WARCWriter

        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=True, warc_version="WARC/1.1")
        writer.write_record(writer.create_warcinfo_record(self._name, {"software": self.software,
                                                                       "format": "WARC File Format 1.1"}))
        return buf.getvalue()

    def _write(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, frontier_url: str, target_url: str, depth: int, canonical: str | None,
               status_line: str, headers: list[tuple[str, str]], body: bytes,
               protocol: str = "HTTP/1.1") -> tuple[str, int, str]:
        """Write one response record durably; returns (file name, end offset, WARC-Date)."""
        from warcio.statusandheaders import StatusAndHeaders
        from warcio.warcwriter import WARCWriter

        fh = self._open()
        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=True, warc_version="WARC/1.1")
        record = writer.create_warc_record(
            target_url, "response", payload=io.BytesIO(body), length=len(body),
            http_headers=StatusAndHeaders(status_line, headers, protocol=protocol))
        record.rec_headers.add_header(H_FRONTIER, frontier_url)  # after the standard fields, for readers' sake
        record.rec_headers.add_header(H_DEPTH, str(depth))
        if canonical:
            record.rec_headers.add_header(H_CANONICAL, canonical)
        writer.write_record(record)
        self._write(buf.getvalue())
        return self._name, fh.tell(), record.rec_headers.get_header("WARC-Date")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
