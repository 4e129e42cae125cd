"""A polite, resumable web crawler whose output is WARC files plus records.

This module decides *what* to fetch: scope (include/exclude, seed hosts), depth, redirects
checked hop by hop against robots, scope, loops and the frontier, canonical dedup, and the
scheduling of visits. *How* a request is made politely (per-host pacing and concurrency,
robots.txt, retries, size and type caps) lives in `robots`, the only place requests are sent.

Durability and "each page fetched once" are the business of `crawl_frontier`: a page's WARC
record is fsync'd before its frontier row is committed, and a restart reconciles the two.
Pages that could not be kept (robots, size, type, HTTP errors, redirect loops) are kept in
the frontier with their reason and come out of `iter_crawl` as quarantine records.

Limits worth knowing: the stdlib robots parser ignores `*`/`$` wildcards in paths; the
queued URLs of a crawl are held in memory (fine for millions, not for billions); and the
WARC holds each body as decoded (Content-Encoding removed, Content-Length fixed) so every
reader gets the payload without a decompression step.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urljoin, urlsplit

from pydantic import AfterValidator, Field

from lmforge import progress
from lmforge.collect.bounded import accept_encoding
from lmforge.collect.crawl_frontier import (
    H_CANONICAL,
    H_DEPTH,
    Fetched,
    Frontier,
    WarcStore,
    extract_links,
    normalize_url,
    warc_names,
)
from lmforge.collect.html import decode_html
from lmforge.collect.http_client import FetchFailure, Page, PoliteClient, Redirect
from lmforge.config import StrictModel, valid_regex
from lmforge.errors import require
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, make_id, read_json, write_json_atomic

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _http_url(value: str) -> str:
    if normalize_url(value) is None:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _host(value: str) -> str:
    norm = normalize_url(f"http://{value.strip()}/")
    if norm is None or norm.count("/") != 3 or "?" in norm or "@" in value:
        raise ValueError("must be a host name, optionally with :port (no scheme or path)")
    return urlsplit(norm).netloc


_PATTERNS = ("regular expressions searched (re.search) in scheme://host[:port]/path of a normalized URL; "
             "the query and fragment are not part of it, and no pattern can take the crawl off the allowed hosts")


class CrawlConfig(StrictModel):
    seeds: list[Annotated[str, AfterValidator(_http_url)]] = Field(min_length=1)
    allowed_hosts: list[Annotated[str, AfterValidator(_host)]] = Field(
        default_factory=list, description="hosts (host or host:port) the crawl may visit besides the seeds' own")
    include: list[Annotated[str, AfterValidator(valid_regex)]] = Field(
        default_factory=list, description="follow only URLs matching one of these: " + _PATTERNS)
    exclude: list[Annotated[str, AfterValidator(valid_regex)]] = Field(
        default_factory=list, description="never follow URLs matching one of these: " + _PATTERNS)
    max_depth: int = Field(3, ge=0)
    max_pages: int = Field(1000, ge=1)
    concurrency: int = Field(8, ge=1)
    per_host_concurrency: int = Field(2, ge=1)
    delay: float = Field(1.0, ge=0)
    timeout: float = Field(
        30, gt=0, description="total seconds one request may take: connecting, headers and the whole body. "
                              "A server that sends a byte a second is cut off here; each retry has its own "
                              "deadline, so a page costs at most (retries + 1) x timeout plus the backoff")
    max_bytes: int = Field(5_000_000, gt=0, description="largest body kept, counted after its "
                           "Content-Encoding is decoded; reading stops one byte past it (too_large)")
    content_types: list[str] = Field(default_factory=lambda: ["text/html", "text/plain", "application/xhtml+xml"],
                                     min_length=1)
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(2, ge=0)
    backoff: float = Field(0.5, ge=0)
    user_agent: str = Field("lmforge-crawler/0.1 (+https://github.com/lmforge)", min_length=1)
    respect_robots: bool = True
    warc_max_bytes: int = Field(100_000_000, gt=0)


@dataclass
class CrawlSummary:
    """Counts over the whole crawl (all runs on the work dir); `requests` and `seconds` are this call's."""

    fetched: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # pages dropped, by reason (quarantined)
    links_ignored: dict[str, int] = field(default_factory=dict)  # links not followed, by reason
    aliases: int = 0  # URLs that redirected to, or were the canonical of, another page
    queued: int = 0  # still in the frontier when max_pages stopped the crawl
    requests: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- decoding

@dataclass
class _Alias:
    """The URL redirected to a page the frontier already knows; it is fetched (or was) on its own."""

    target: str


class CrawlScope:
    """Which URLs a crawl may visit: a URL on an allowed host, then passing include and exclude.

    The host check comes first and does not depend on the patterns, and the patterns see only
    scheme://host/path: `http://other.example/?ref=allowed.example` has the allowed host in its
    query, and a pattern searched in the whole URL would follow it off the site.
    """

    def __init__(self, config: CrawlConfig) -> None:
        self.seeds = [u for u in (normalize_url(s) for s in config.seeds) if u]
        self.hosts = {urlsplit(u).netloc for u in self.seeds} | set(config.allowed_hosts)
        self.include = [re.compile(p) for p in config.include]
        self.exclude = [re.compile(p) for p in config.exclude]

    def allows(self, url: str) -> bool:
        """`url` is normalized (`normalize_url`), so host and port are in canonical form."""
        parts = urlsplit(url)
        if parts.netloc not in self.hosts:
            return False
        target = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if self.include and not any(p.search(target) for p in self.include):
            return False
        return not any(p.search(target) for p in self.exclude)


class _Crawler:
    def __init__(self, config: CrawlConfig, work_dir: Path) -> None:
        self.cfg = config
        self.frontier = Frontier(work_dir / "frontier.sqlite")
        self.warcs = WarcStore(work_dir / "warc", self.frontier, config.warc_max_bytes, config.user_agent)
        self.scope = CrawlScope(config)
        self.seeds = self.scope.seeds
        self.http: PoliteClient | None = None

    # ---------------------------------------------------------------- pages

    def analyse(self, url: str, depth: int, body: bytes, content_type: str):
        """Links to queue, the same-host canonical URL, and counts of links not followed."""
        if content_type.split(";")[0].strip().lower() not in HTML_TYPES:
            return [], None, {}
        decoded = decode_html(body, content_type)
        html = decoded[0] if decoded else body.decode("utf-8", "replace")
        raw_links, raw_canonical = extract_links(html, url)
        canonical = normalize_url(raw_canonical) if raw_canonical else None
        if canonical == url or (canonical and (urlsplit(canonical).netloc != urlsplit(url).netloc
                                               or not self.scope.allows(canonical))):
            canonical = None
        keep: list[str] = []
        ignored: Counter[str] = Counter()
        for link in raw_links:
            norm = normalize_url(link)
            if norm is None:
                http = urlsplit(link).scheme.lower() in ("http", "https")
                ignored["bad_url" if http else "bad_scheme"] += 1
            elif norm in keep:
                continue
            elif not self.scope.allows(norm):
                ignored["out_of_scope"] += 1
            elif depth + 1 > self.cfg.max_depth:
                ignored["max_depth"] += 1
            else:
                keep.append(norm)
        return keep, canonical, dict(ignored)

    async def _fetch(self, url: str, depth: int) -> Page | FetchFailure | _Alias:
        """Follow redirects by hand so each hop passes robots, scope, loop and dedup checks."""
        http, chain = self.http, [url]
        assert http is not None
        while True:
            current = chain[-1]
            rules = await http.robots(current)
            if not rules.allowed(current):
                return FetchFailure(rules.reason or "robots_disallowed", current, requested=len(chain) > 1)
            result = await http.get(current)
            if not isinstance(result, Redirect):
                return result
            target = normalize_url(urljoin(current, result.location))
            reason = None
            if target is None:
                reason = "bad_redirect"
            elif target in chain:
                reason = "redirect_loop"
            elif len(chain) > self.cfg.max_redirects:
                reason = "too_many_redirects"
            elif not self.scope.allows(target):
                reason = "redirect_out_of_scope"
            if reason:
                return FetchFailure(reason, target or current, result.status, error=f"Location: {result.location}"[:200])
            if not self.frontier.claim(target, via=url, depth=depth):
                return _Alias(target)
            chain.append(target)

    async def _visit(self, url: str, depth: int) -> tuple[list[tuple[str, int]], bool]:
        """Fetch one frontier URL and persist the outcome; returns (new URLs, whether a request was made)."""
        result = await self._fetch(url, depth)
        if isinstance(result, _Alias):
            self.frontier.record_other(url, "alias", "redirect", requested=True, final_url=result.target)
            return [], True
        if isinstance(result, FetchFailure):
            log.debug("dropped %s: %s", url, result.reason)
            self.frontier.record_other(url, "failed", result.reason, requested=result.requested,
                                       final_url=result.url, http_status=result.http_status,
                                       content_type=result.content_type, size=result.size, error=result.error)
            return [], result.requested
        links, canonical, ignored = self.analyse(result.url, depth, result.body, result.content_type)
        # From here to the commit there is no await: no other task can interleave, and a kill
        # in between is repaired by WarcStore.recover() on the next start.
        name, end, date = self.warcs.append(url, result.url, depth, canonical, f"{result.status} {result.reason}",
                                            result.headers, result.body, result.http_version)
        page = Fetched(url, result.url, depth, result.status, result.content_type, len(result.body), date)
        new = self.frontier.record_fetched(page, links, canonical, ignored, (name, end))
        return [(u, depth + 1) for u in new], True

    # ---------------------------------------------------------------- the crawl

    def _recover(self) -> None:
        for page in self.warcs.recover():
            if self.frontier.state(page.frontier_url) == "done":
                self.frontier.set_committed(page.file, page.end)
                continue
            links, canonical, ignored = self.analyse(page.target_url, page.depth, page.body, page.content_type)
            fetched = Fetched(page.frontier_url, page.target_url, page.depth, page.http_status, page.content_type,
                              len(page.body), page.fetched_at)
            self.frontier.record_fetched(fetched, links, canonical, ignored, (page.file, page.end))
            log.info("recovered %s from %s (fetched before the previous run stopped)", page.target_url, page.file)

    async def run(self) -> CrawlSummary:
        started_at = time.monotonic()
        try:
            return await self._run(started_at)
        finally:
            self.warcs.close()
            self.frontier.close()

    async def _run(self, started_at: float) -> CrawlSummary:
        httpx = require("httpx", "crawl")
        cfg = self.cfg
        self._recover()
        self.frontier.add(self.seeds, 0)
        pending: dict[str, deque[tuple[str, int]]] = {}
        for url, depth in self.frontier.queued():
            pending.setdefault(urlsplit(url).hostname or "", deque()).append((url, depth))
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        headers = {"User-Agent": cfg.user_agent, "Accept-Encoding": accept_encoding()}  # only what we cap
        async with httpx.AsyncClient(headers=headers, timeout=cfg.timeout,
                                     limits=limits, follow_redirects=False) as client:
            self.http = PoliteClient(client, cfg, self.frontier)
            await self._dispatch(pending)
        return self._summary(time.monotonic() - started_at)

    async def _dispatch(self, pending: dict[str, deque[tuple[str, int]]]) -> None:
        """Start visits round-robin over hosts, within the global and per-host limits and max_pages."""
        cfg = self.cfg
        attempted = self.frontier.attempted()
        active: dict[asyncio.Task, str] = {}
        per_host: Counter[str] = Counter()
        with progress.task("crawl", total=cfg.max_pages) as bar:
            bar.advance(attempted)
            try:
                while True:
                    started = True
                    while started and len(active) < cfg.concurrency and attempted < cfg.max_pages:
                        started = False
                        for host in list(pending):
                            if not pending[host]:
                                del pending[host]
                            elif per_host[host] < cfg.per_host_concurrency and len(active) < cfg.concurrency \
                                    and attempted < cfg.max_pages:
                                url, depth = pending[host].popleft()
                                active[asyncio.create_task(self._visit(url, depth))] = host
                                per_host[host] += 1
                                attempted += 1
                                started = True
                    if not active:
                        return
                    done, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        per_host[active.pop(task)] -= 1
                        new, requested = task.result()
                        if requested:
                            bar.advance(1)
                        else:
                            attempted -= 1  # robots-blocked pages do not count toward max_pages
                        for url, depth in new:
                            pending.setdefault(urlsplit(url).hostname or "", deque()).append((url, depth))
            finally:
                for task in active:
                    task.cancel()
                await asyncio.gather(*active, return_exceptions=True)

    def _summary(self, seconds: float) -> CrawlSummary:
        states, failed, links = self.frontier.counts()
        return CrawlSummary(fetched=states.get("done", 0), skipped=failed, links_ignored=links,
                            aliases=states.get("alias", 0), queued=states.get("queued", 0),
                            requests=self.http.requests if self.http else 0, seconds=round(seconds, 3))


# --------------------------------------------------------------------------- entry points


def crawl(config: CrawlConfig, work_dir: Path) -> CrawlSummary:
    """Crawl to completion (or max_pages) into `work_dir`, resuming whatever a previous call left.

    `work_dir/crawl.done` records the summary and the config it was made with; a later call
    with the same config returns that summary without a single request, and a call with a
    changed config (more pages, new seeds) continues the same frontier.
    """
    for module in ("httpx", "warcio"):
        require(module, "crawl")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = work_dir / "crawl.done"
    fingerprint = config.model_dump(mode="json")
    if marker.exists():
        done = read_json(marker)
        if done.get("config") == fingerprint:
            return CrawlSummary(**{**done["summary"], "requests": 0, "seconds": 0.0})
        log.info("crawl config changed since %s was written: continuing the crawl", marker)
        marker.unlink()
    log.info("crawling %d seed(s) into %s", len(config.seeds), work_dir)
    summary = asyncio.run(_Crawler(config, work_dir).run())
    write_json_atomic(marker, {"config": fingerprint, "summary": asdict(summary)})
    log.info("crawl finished: %d pages fetched, %d dropped, %d requests in %.1fs", summary.fetched,
             sum(summary.skipped.values()), summary.requests, summary.seconds)
    return summary


def iter_crawl(config: CrawlConfig, base_dir: Path, work_dir: Path) -> Iterator[Record]:
    """Crawl (unless already done), then yield the fetched pages in WARC order and the dropped ones by URL.

    `base_dir` is unused (seeds are URLs) and kept for the collector contract. A page whose
    rel=canonical names a page already yielded is quarantined as `duplicate_canonical`.
    """
    work_dir = Path(work_dir)
    crawl(config, work_dir)
    seen: set[str] = set()
    for path in warc_names(work_dir / "warc"):
        yield from _read_warc_pages(path, work_dir, seen)
    frontier = Frontier(work_dir / "frontier.sqlite")
    try:
        rows = frontier.failed_rows()
    finally:
        frontier.close()
    for row in rows:
        meta = {"drop_reason": row["reason"], "drop_stage": "input", "depth": row["depth"]}
        if row["error"]:
            meta["error"] = row["error"]
        if row["size"] is not None:
            meta["bytes_read"] = row["size"]
        if row["final_url"] and row["final_url"] != row["url"]:
            meta["final_url"] = row["final_url"]
        prov = {k: row[k] for k in ("fetched_at", "content_type", "http_status") if row[k] is not None}
        yield Record(id=make_id("crawl", row["url"]), text="", source="crawl", url=row["url"], meta=meta,
                     provenance=prov)


def _read_warc_pages(path: Path, work_dir: Path, seen: set[str]) -> Iterator[Record]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    rel = path.relative_to(work_dir).as_posix()
    with open(path, "rb") as fh:
        records = ArchiveIterator(fh)
        try:
            for rec in records:
                if rec.rec_type != "response":
                    continue
                url = rec.rec_headers.get_header("WARC-Target-URI")
                ctype = rec.http_headers.get_header("Content-Type") or ""
                decoded = decode_html(rec.content_stream().read(), ctype)
                text, encoding = decoded if decoded else ("", None)
                prov = {"fetched_at": rec.rec_headers.get_header("WARC-Date"), "content_type": ctype,
                        "encoding": encoding, "http_status": int(rec.http_headers.get_statuscode()),
                        "warc_file": rel, "warc_offset": records.get_record_offset(),
                        "depth": int(rec.rec_headers.get_header(H_DEPTH) or 0)}
                canonical = rec.rec_headers.get_header(H_CANONICAL) or url
                rid = make_id("crawl", canonical)
                if rid in seen:
                    yield Record(id=make_id("crawl", url), text="", source="crawl", url=url, provenance=prov,
                                 meta={"drop_reason": "duplicate_canonical", "drop_stage": "input",
                                       "canonical": canonical})
                    continue
                seen.add(rid)
                meta = {} if decoded else {"drop_reason": "undecodable", "drop_stage": "input"}
                yield Record(id=rid, text=text, source="crawl", url=url, provenance=prov, meta=meta)
        except (ArchiveLoadFailed, OSError, EOFError, ValueError) as exc:
            yield Record(id=make_id("crawl", f"{rel}:damaged"), text="", source="crawl", url=rel,
                         meta={"drop_reason": "corrupt_file", "drop_stage": "input",
                               "error": f"{type(exc).__name__}: {exc}"[:200]})


class CrawlSource(Source):
    """A polite crawl from seed URLs, resumable through its frontier in the work folder."""

    name = "crawl"
    Config = CrawlConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_crawl(self.config, ctx.base_dir, ctx.work_dir)
