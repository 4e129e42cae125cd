"""The crawler's HTTP client: per-host pacing, retries, size and type caps; the one place requests are made.

Politeness is enforced where requests are made, not where URLs are scheduled: every request
(robots.txt, each redirect hop, each retry) first takes a slot from its host's pacer, which
caps requests in flight to the host and spaces their starts by `delay`, raised by the site's
`Crawl-delay`. So no scheduling mistake elsewhere can make the crawler impolite.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from lmforge.collect.bounded import BadEncoding, BoundedDecoder, UnsupportedEncoding
from lmforge.collect.crawl_frontier import Frontier, normalize_url
from lmforge.collect.robots import ROBOTS_MAX_BYTES, RobotsRules

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0  # a server asking for a longer pause gets the page dropped, not a stalled crawl
_REDIRECTS = (301, 302, 303, 307, 308)


class ClientSettings(Protocol):
    """The crawl options the client obeys (`CrawlConfig` has them all)."""

    user_agent: str
    respect_robots: bool
    content_types: list[str]
    per_host_concurrency: int
    delay: float
    retries: int
    backoff: float
    timeout: float
    max_bytes: int


class HostPacer:
    """Requests in flight to one host (a semaphore) and the spacing of their starts.

    A request "starts" when its headers go out (an httpcore trace event), not when its slot is
    granted: an event loop busy for a few ms (an fsync, parsing a page) would otherwise send
    one request late and the next on time, closer together than `delay`. So the next request
    waits until the previous one has actually been sent, then `delay` more.
    """

    def __init__(self, limit: int, delay: float) -> None:
        self.sem = asyncio.Semaphore(limit)
        self.turn = asyncio.Lock()
        self.delay = delay
        self.last_start: float | None = None

    def raise_delay(self, delay: float) -> None:
        self.delay = max(self.delay, delay)

    @contextlib.asynccontextmanager
    async def slot(self):
        """Yields a callback to call when the request is sent; the next request waits for it."""
        async with self.sem:
            await self.turn.acquire()
            sent = False

            def started() -> None:
                nonlocal sent
                if not sent:
                    sent, self.last_start = True, time.monotonic()
                    self.turn.release()

            try:
                while self.last_start is not None and (
                        wait := self.last_start + self.delay - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                yield started
            finally:
                started()  # failed before sending (e.g. no connection): count it as a start anyway


# --------------------------------------------------------------------------- responses


@dataclass
class Page:
    url: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as sent, minus the transfer framing (the body is stored decoded)
    body: bytes
    content_type: str
    http_version: str = "HTTP/1.1"


@dataclass
class FetchFailure:
    """A URL that gave no page; the crawl quarantines it with `reason`."""

    reason: str  # the quarantine drop_reason: http_404, too_large, content_type, timeout, ...
    url: str
    http_status: int | None = None
    content_type: str | None = None
    size: int | None = None
    error: str | None = None
    requested: bool = True


@dataclass
class Redirect:
    location: str
    status: int


@dataclass
class _Retry:
    drop: FetchFailure
    after: float | None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


class PoliteClient:
    """GETs one URL at a time for the crawler: paced per host, retried, capped in size and type."""

    def __init__(self, client: Any, config: ClientSettings, frontier: Frontier) -> None:
        import httpx

        self.httpx = httpx
        self.client = client
        self.cfg = config
        self.frontier = frontier
        self.content_types = {t.strip().lower() for t in config.content_types}
        self.pacers: dict[str, HostPacer] = {}
        self.rules: dict[str, RobotsRules] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.requests = 0

    def pacer(self, host: str) -> HostPacer:
        if host not in self.pacers:
            self.pacers[host] = HostPacer(self.cfg.per_host_concurrency, self.cfg.delay)
        return self.pacers[host]

    async def get(self, url: str, robots: bool = False) -> Page | Redirect | FetchFailure:
        """One URL, retried with exponential backoff on connection errors, timeouts, 429 and 5xx."""
        httpx, cfg = self.httpx, self.cfg
        pacer = self.pacer(urlsplit(url).hostname or "")
        drop = FetchFailure("connection_error", url)
        wait = 0.0
        for attempt in range(cfg.retries + 1):
            if attempt:
                log.debug("retrying %s in %.2fs (%s)", url, wait, drop.reason)
                await asyncio.sleep(wait)
            wait = cfg.backoff * 2**attempt
            try:
                async with pacer.slot() as started:
                    self.requests += 1
                    # the deadline covers the whole request: a server sending a byte a second passes
                    # every per-read timeout, but not this
                    result = await asyncio.wait_for(self._request(url, robots, started), cfg.timeout)
            except asyncio.TimeoutError:
                drop = FetchFailure("timeout", url, error=f"no complete response within {cfg.timeout:g} s (timeout)")
                continue
            except httpx.TimeoutException as exc:
                drop = FetchFailure("timeout", url, error=f"{type(exc).__name__}: {exc}"[:200])
                continue
            except httpx.DecodingError as exc:
                return FetchFailure("bad_content_encoding", url, error=str(exc)[:200])
            except httpx.TransportError as exc:
                drop = FetchFailure("connection_error", url, error=f"{type(exc).__name__}: {exc}"[:200])
                continue
            except httpx.InvalidURL as exc:
                return FetchFailure("bad_url", url, error=str(exc)[:200], requested=False)
            if not isinstance(result, _Retry):
                return result
            drop = result.drop
            if result.after is not None:
                if result.after > MAX_RETRY_AFTER:
                    return drop
                wait = max(wait, result.after)
        return drop

    async def _request(self, url: str, robots: bool, started) -> Page | Redirect | FetchFailure | _Retry:
        async def trace(event: str, info: dict) -> None:
            if event.endswith("send_request_headers.started"):
                started()

        async with self.client.stream("GET", url, extensions={"trace": trace}) as resp:
            return await self._read(resp, url, robots)

    async def _read(self, resp, url: str, robots: bool) -> Page | Redirect | FetchFailure | _Retry:
        """Decide on the headers before reading the body, and stop reading at the size cap."""
        status, ctype = resp.status_code, resp.headers.get("content-type", "")
        if status in _REDIRECTS and resp.headers.get("location"):
            return Redirect(resp.headers["location"], status)
        if status == 429 or status >= 500:
            return _Retry(FetchFailure(f"http_{status}", url, status, ctype), _retry_after(resp.headers.get("retry-after")))
        if not robots:
            if not 200 <= status < 300:
                return FetchFailure(f"http_{status}", url, status, ctype)
            if ctype.split(";")[0].strip().lower() not in self.content_types:
                return FetchFailure("content_type", url, status, ctype or None, 0)
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.cfg.max_bytes:
                return FetchFailure("too_large", url, status, ctype, 0, f"Content-Length: {declared}")
        cap = ROBOTS_MAX_BYTES if robots else self.cfg.max_bytes
        body = bytearray()
        if 200 <= status < 300:
            try:
                decoder = BoundedDecoder(resp.headers.get("content-encoding", ""), cap)
            except UnsupportedEncoding as exc:
                return FetchFailure("bad_content_encoding", url, status, ctype, 0, str(exc)[:200])
            # raw bytes, decoded here under the cap: httpx would inflate a whole network read at once
            async for chunk in resp.aiter_raw():
                try:
                    body += decoder.feed(chunk)
                except BadEncoding as exc:
                    return FetchFailure("bad_content_encoding", url, status, ctype, len(body), str(exc)[:200])
                if decoder.exceeded:
                    if robots:
                        del body[cap:]
                        break
                    return FetchFailure("too_large", url, status, ctype, len(body), f"stopped reading after {len(body)} bytes")
        framing = (b"content-encoding", b"transfer-encoding", b"content-length")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers.raw
                   if k.lower() not in framing]
        headers.append(("Content-Length", str(len(body))))
        return Page(url, status, resp.reason_phrase, headers, bytes(body), ctype, resp.http_version)

    async def robots(self, url: str) -> RobotsRules:
        """The rules for the URL's origin: from memory, else the frontier, else fetched (once)."""
        if not self.cfg.respect_robots:
            return RobotsRules(status=0)
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin in self.rules:
            return self.rules[origin]
        async with self.locks.setdefault(origin, asyncio.Lock()):
            if origin not in self.rules:
                saved = self.frontier.robots(origin)
                if saved is not None:
                    rules = RobotsRules.from_response(saved[0], saved[1], self.cfg.user_agent)
                else:
                    rules = await self._fetch_robots(origin)
                    if rules.cacheable:
                        self.frontier.save_robots(origin, rules.status, rules.body)
                if rules.crawl_delay:
                    self.pacer(parts.hostname or "").raise_delay(rules.crawl_delay)
                self.rules[origin] = rules
        return self.rules[origin]

    async def _fetch_robots(self, origin: str) -> RobotsRules:
        url = origin + "/robots.txt"
        for _ in range(6):  # RFC 9309: follow at least five redirects
            result = await self.get(url, robots=True)
            if isinstance(result, Redirect):
                url = normalize_url(urljoin(url, result.location)) or ""
                if not url:
                    break
                continue
            if isinstance(result, FetchFailure):
                log.warning("robots.txt of %s unavailable (%s): not crawling that host", origin, result.reason)
                return RobotsRules(status=result.http_status or 0, reason="robots_unavailable")
            return RobotsRules.from_response(result.status, result.body.decode("utf-8", "replace"),
                                             self.cfg.user_agent)
        return RobotsRules(status=0)  # RFC 9309: too many redirects means "unavailable", i.e. no rules
