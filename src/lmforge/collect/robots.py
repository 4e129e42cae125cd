"""Being a good robot: robots.txt rules, per-host pacing, and the one place HTTP requests are made.

Politeness is enforced where requests are made, not where URLs are scheduled: every request
(robots.txt, each redirect hop, each retry) first takes a slot from its host's pacer, which
caps requests in flight to the host and spaces their starts by `delay`, raised by the site's
`Crawl-delay`. So no scheduling mistake elsewhere can make the crawler impolite.

robots.txt follows RFC 9309: fetched once per origin (and kept in the frontier across runs),
a 4xx means "no rules", a 5xx or an unreachable server means "assume everything is
disallowed" for this run. The stdlib parser decides Allow/Disallow (it ignores `*`/`$`
wildcards in paths); `Crawl-delay` is read here because the stdlib keeps only whole numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
import urllib.robotparser
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from lmforge.collect.bounded import BadEncoding, BoundedDecoder, UnsupportedEncoding
from lmforge.collect.crawl_frontier import Frontier, normalize_url

if TYPE_CHECKING:
    from lmforge.collect.crawl import CrawlConfig

log = logging.getLogger(__name__)

ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least 500 KiB, ignore the rest
MAX_RETRY_AFTER = 60.0  # a server asking for a longer pause gets the page dropped, not a stalled crawl
_REDIRECTS = (301, 302, 303, 307, 308)


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against ("lmforge-crawler/0.1 (...)" -> "lmforge-crawler")."""
    return user_agent.split("/", 1)[0].split(" ", 1)[0].strip().lower() or "*"


@dataclass
class RobotsRules:
    """The outcome of fetching one origin's robots.txt.

    `status` is the HTTP status of the robots.txt response (0 when it could not be fetched at
    all); `reason` is set when the whole origin is off limits, and becomes the drop reason of
    every page skipped because of it.
    """

    status: int
    body: str = ""
    user_agent: str = "*"
    reason: str | None = None
    crawl_delay: float | None = None
    _parser: urllib.robotparser.RobotFileParser | None = field(default=None, repr=False)

    @classmethod
    def from_response(cls, status: int, body: str, user_agent: str) -> RobotsRules:
        if 200 <= status < 300:
            parser = urllib.robotparser.RobotFileParser()
            lines = body.splitlines()
            parser.parse(lines)
            return cls(status, body, user_agent, None, _crawl_delay(lines, agent_token(user_agent)), parser)
        if 400 <= status < 500:
            return cls(status, "", user_agent)
        return cls(status, "", user_agent, reason="robots_unavailable")

    @property
    def cacheable(self) -> bool:
        """Only definite answers are kept across runs; an outage is retried by the next run."""
        return self.reason is None and self.status != 0

    def allowed(self, url: str) -> bool:
        if self.reason is not None:
            return False
        return self._parser is None or self._parser.can_fetch(self.user_agent, url)


def _crawl_delay(lines: list[str], token: str) -> float | None:
    """Crawl-delay of the first group naming our agent, else of the `*` group."""
    groups: list[tuple[list[str], float | None]] = []
    agents: list[str] = []
    delay: float | None = None
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        if key.lower() == "user-agent":
            if in_rules:
                groups.append((agents, delay))
                agents, delay, in_rules = [], None, False
            agents.append(value.lower())
        elif agents:
            in_rules = True
            if key.lower() == "crawl-delay":
                with contextlib.suppress(ValueError):
                    delay = max(0.0, float(value))
    if agents:
        groups.append((agents, delay))
    for names, value in groups:
        if any(name != "*" and name in token for name in names):
            return value
    for names, value in groups:
        if "*" in names:
            return value
    return None


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
class Drop:
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
    drop: Drop
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

    def __init__(self, client: Any, config: CrawlConfig, frontier: Frontier) -> None:
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

    async def get(self, url: str, robots: bool = False) -> Page | Redirect | Drop:
        """One URL, retried with exponential backoff on connection errors, timeouts, 429 and 5xx."""
        httpx, cfg = self.httpx, self.cfg
        pacer = self.pacer(urlsplit(url).hostname or "")
        drop = Drop("connection_error", url)
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
                drop = Drop("timeout", url, error=f"no complete response within {cfg.timeout:g} s (timeout)")
                continue
            except httpx.TimeoutException as exc:
                drop = Drop("timeout", url, error=f"{type(exc).__name__}: {exc}"[:200])
                continue
            except httpx.DecodingError as exc:
                return Drop("bad_content_encoding", url, error=str(exc)[:200])
            except httpx.TransportError as exc:
                drop = Drop("connection_error", url, error=f"{type(exc).__name__}: {exc}"[:200])
                continue
            except httpx.InvalidURL as exc:
                return Drop("bad_url", url, error=str(exc)[:200], requested=False)
            if not isinstance(result, _Retry):
                return result
            drop = result.drop
            if result.after is not None:
                if result.after > MAX_RETRY_AFTER:
                    return drop
                wait = max(wait, result.after)
        return drop

    async def _request(self, url: str, robots: bool, started) -> Page | Redirect | Drop | _Retry:
        async def trace(event: str, info: dict) -> None:
            if event.endswith("send_request_headers.started"):
                started()

        async with self.client.stream("GET", url, extensions={"trace": trace}) as resp:
            return await self._read(resp, url, robots)

    async def _read(self, resp, url: str, robots: bool) -> Page | Redirect | Drop | _Retry:
        """Decide on the headers before reading the body, and stop reading at the size cap."""
        status, ctype = resp.status_code, resp.headers.get("content-type", "")
        if status in _REDIRECTS and resp.headers.get("location"):
            return Redirect(resp.headers["location"], status)
        if status == 429 or status >= 500:
            return _Retry(Drop(f"http_{status}", url, status, ctype), _retry_after(resp.headers.get("retry-after")))
        if not robots:
            if not 200 <= status < 300:
                return Drop(f"http_{status}", url, status, ctype)
            if ctype.split(";")[0].strip().lower() not in self.content_types:
                return Drop("content_type", url, status, ctype or None, 0)
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.cfg.max_bytes:
                return Drop("too_large", url, status, ctype, 0, f"Content-Length: {declared}")
        cap = ROBOTS_MAX_BYTES if robots else self.cfg.max_bytes
        body = bytearray()
        if 200 <= status < 300:
            try:
                decoder = BoundedDecoder(resp.headers.get("content-encoding", ""), cap)
            except UnsupportedEncoding as exc:
                return Drop("bad_content_encoding", url, status, ctype, 0, str(exc)[:200])
            # raw bytes, decoded here under the cap: httpx would inflate a whole network read at once
            async for chunk in resp.aiter_raw():
                try:
                    body += decoder.feed(chunk)
                except BadEncoding as exc:
                    return Drop("bad_content_encoding", url, status, ctype, len(body), str(exc)[:200])
                if decoder.exceeded:
                    if robots:
                        del body[cap:]
                        break
                    return Drop("too_large", url, status, ctype, len(body), f"stopped reading after {len(body)} bytes")
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
            if isinstance(result, Drop):
                log.warning("robots.txt of %s unavailable (%s): not crawling that host", origin, result.reason)
                return RobotsRules(status=result.http_status or 0, reason="robots_unavailable")
            return RobotsRules.from_response(result.status, result.body.decode("utf-8", "replace"),
                                             self.cfg.user_agent)
        return RobotsRules(status=0)  # RFC 9309: too many redirects means "unavailable", i.e. no rules
