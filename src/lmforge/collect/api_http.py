"""HTTP for the `api` source: one request under a total deadline, its body decoded under a cap, retried.

Kept apart from `api` (selectors, pagination, records) because it is the part that faces the
server: everything a hostile or broken server can do to a request is bounded here, in time by
`timeout` (a deadline for the whole request) and in memory by `max_bytes` (counted after the
Content-Encoding is decoded, by `collect.bounded`). See `api`'s docstring for what each failure
becomes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lmforge.collect.bounded import BadEncoding, BoundedDecoder
from lmforge.errors import InputError

log = logging.getLogger("lmforge.collect.api")  # one logger for the whole source

MAX_RETRY_AFTER = 300.0  # seconds; a server asking for longer is treated as down
MAX_BAD_BODY = 10_000  # bytes of an unusable body kept for its message or quarantine record
# what a deadline raises through run_coroutine_threadsafe: three names for one class from Python 3.11 on
_TIMEOUTS = (asyncio.TimeoutError, concurrent.futures.TimeoutError, TimeoutError)


class FetchSettings(Protocol):
    """The `api` options a request obeys (`ApiConfig` has them all)."""

    method: str
    rate_limit: float | None
    retries: int
    backoff: float
    timeout: float
    max_bytes: int


_SECRET_NAME = re.compile(r"key|token|secret|passw|auth|sig|session|credential", re.IGNORECASE)


def public_url(url: str) -> str:
    """`url` without user info and with secret-looking query values masked, for provenance and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = [(k, "***" if _SECRET_NAME.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


class Session:
    """An httpx.AsyncClient used from this sync generator, on an event loop in a thread of its own.

    Async for one reason: a total deadline per request. Sync httpx has only per-read timeouts,
    which a server sending a byte a second (of headers or of body) passes for ever; asyncio.wait_for
    bounds connecting, redirects, headers and body together, as in the crawler. The loop has its
    own thread so that iter_api also works where an event loop already runs (a notebook, async code).
    """

    def __init__(self, httpx, headers, timeout: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lmforge-api", daemon=True)
        self.thread.start()

        async def make():
            return httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False)

        self.client = self.run(make())

    def run(self, coro, deadline: float | None = None):
        """The coroutine's result; TimeoutError once `deadline` seconds have passed (the coroutine is cancelled)."""
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, deadline), self.loop)
        try:
            return future.result()
        except _TIMEOUTS:
            raise TimeoutError(f"no complete response within {deadline:g} s") from None
        except BaseException:  # Ctrl-C included: nothing may go on running in the loop
            future.cancel()
            raise

    def close(self) -> None:
        try:
            self.run(self.client.aclose(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


@dataclass
class BadPage:
    """A body that cannot be used: an InputError on the first page, a quarantine record on a later one."""

    reason: str  # the drop_reason: api_bad_json, api_bad_encoding, api_too_large
    problem: str  # for messages: what is wrong and what to do
    response: Any  # status, headers and at most the first MAX_BAD_BODY bytes of the body
    bytes_read: int
    retry: bool = True


class Fetcher:
    """One request with rate limiting and retries; knows the secrets so it can keep them out of messages."""

    def __init__(self, httpx, session: Session, config: FetchSettings, secrets: list[str]):
        self.httpx, self.session, self.config, self.secrets = httpx, session, config, secrets
        self.interval = 1.0 / config.rate_limit if config.rate_limit else 0.0
        self.last_response: float | None = None

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def _wait_turn(self) -> None:
        """Wait 1/rate_limit after the previous response (retries included: a retry is a request too).

        Counting from the previous *response* rather than the previous send guarantees the
        server sees requests at least that far apart, however the network delays one of them.
        """
        if self.last_response is not None:
            remaining = self.last_response + self.interval - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)

    def fetch(self, url: str, params: dict | None, first: bool):
        """(response, parsed JSON), or (response, BadPage) for an unusable body on a later page."""
        config, method = self.config, self.config.method
        shown = public_url(url)
        problem, problem_response, bad = "", None, None
        for attempt in range(config.retries + 1):
            if attempt:
                delay = self._delay(attempt, problem_response)
                log.warning("%s %s: %s; retry %d/%d in %.2f s", method, shown, problem, attempt, config.retries, delay)
                time.sleep(delay)
            problem_response, bad = None, None
            self._wait_turn()
            log.debug("%s %s %s", method, shown, self.scrub(json.dumps(params, default=str)) if params else "")
            try:
                got = self.session.run(self._exchange(method, url, params), config.timeout)
            except TimeoutError as exc:
                problem = f"timeout: {exc}"
                continue
            except self.httpx.TransportError as exc:  # connection refused or reset, bad protocol
                problem = f"{type(exc).__name__}: {self.scrub(str(exc))[:200]}"
                continue
            finally:
                self.last_response = time.monotonic()
            if isinstance(got, BadPage):
                bad, problem = got, got.problem
                if bad.retry:
                    continue
                break
            status = got.status_code
            if status == 429 or status >= 500:
                problem, problem_response = f"HTTP {status}", got
                continue
            if status >= 400:
                body = self.scrub(got.text).strip()[:200]
                raise InputError(f"{method} {shown} returned HTTP {status} {got.reason_phrase}"
                                 + (f": {body}" if body else ""))
            try:
                return got, got.json()
            except ValueError:
                bad = BadPage("api_bad_json", f"HTTP {status} body is not JSON", got, len(got.content))
                problem = bad.problem
        if bad is not None and not first:
            return bad.response, bad
        if bad is not None and not bad.retry:
            raise InputError(f"{method} {shown}: {bad.problem}")
        raise InputError(f"{method} {shown} failed after {config.retries + 1} attempts: {problem}")

    async def _exchange(self, method: str, url: str, params: dict | None):
        """The final response with its body read, or a BadPage; redirects followed without reading their bodies."""
        client = self.session.client
        if method == "POST":
            request = client.build_request(method, url, json=params or {})
        else:
            request = client.build_request(method, url, params=params)
        for _ in range(client.max_redirects + 1):
            response = await client.send(request, stream=True)
            try:
                if response.next_request is None:
                    return await self._read(response)
                request = response.next_request  # httpx drops Authorization when it leaves the origin
            finally:
                await response.aclose()
        raise InputError(f"{method} {public_url(url)}: more than {client.max_redirects} redirects")

    async def _read(self, response):
        """The response with its body decoded under the cap: max_bytes for 2xx, the head of an error page."""
        status = response.status_code
        if status == 429 or status >= 500:
            return _with_body(self.httpx, response, b"")  # retried: only the headers matter
        ok = status < 400
        cap = self.config.max_bytes if ok else MAX_BAD_BODY
        declared = response.headers.get("content-length", "")
        if ok and declared.isdigit() and int(declared) > cap:
            return self._too_large(response, b"", 0, f"it declares Content-Length: {declared}")
        pieces: list[bytes] = []  # not one growing buffer: reallocating it would briefly hold it twice
        try:
            decoder = BoundedDecoder(response.headers.get("content-encoding", ""), cap)
            await _read_into(pieces, decoder, response)
        except BadEncoding as exc:
            if not ok:
                return _with_body(self.httpx, response, _head(pieces, cap))  # an error page: its head is enough
            bad = _with_body(self.httpx, response, _head(pieces, MAX_BAD_BODY))
            return BadPage("api_bad_encoding", f"HTTP {status} body: {exc}"[:300], bad, sum(map(len, pieces)))
        if ok and decoder.exceeded:
            return self._too_large(response, _head(pieces, MAX_BAD_BODY), decoder.total,
                                   f"stopped reading after {decoder.total} bytes")
        body = b"".join(pieces) if ok else _head(pieces, cap)
        pieces.clear()
        return _with_body(self.httpx, response, body)

    def _too_large(self, response, head: bytes, size: int, how: str) -> BadPage:
        problem = (f"the response is larger than max_bytes={self.config.max_bytes} bytes once decoded ({how}); "
                   "raise max_bytes, or ask for smaller pages with limit")
        return BadPage("api_too_large", problem, _with_body(self.httpx, response, head), size, False)

    def _delay(self, attempt: int, response) -> float:
        backoff = self.config.backoff * 2 ** (attempt - 1)
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
            except ValueError:
                pass  # an HTTP date, or nothing: fall back to the backoff
        return backoff


_FEED = 4096  # raw bytes decoded at a time; 4 kB of deflate is 4 MB at most once inflated


async def _read_into(pieces: list[bytes], decoder: BoundedDecoder, response) -> None:
    """Decode the raw body into `pieces` until it ends or passes the decoder's cap.

    Raw bytes rather than httpx's decoded ones: httpx inflates a whole network read at once, and
    64 kB of gzip can be 64 MB of zeros. Each read is fed in slices for the same reason, so that
    what one slice inflates to (and its copy) stays small next to the cap.
    """
    async for chunk in response.aiter_raw():
        for start in range(0, len(chunk), _FEED):
            if piece := decoder.feed(chunk[start:start + _FEED]):
                pieces.append(piece)
            if decoder.exceeded:
                return


def _head(pieces: list[bytes], size: int) -> bytes:
    out = bytearray()
    for piece in pieces:
        if len(out) >= size:
            break
        out += piece[:size - len(out)]
    return bytes(out)


_FRAMING = {"content-encoding", "content-length", "transfer-encoding"}


def _with_body(httpx, response, body: bytes):
    """A plain httpx.Response holding `body`, already decoded: .text, .json(), .links, .url work as usual."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _FRAMING]
    extensions = {k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")}
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request,
                          extensions=extensions)
