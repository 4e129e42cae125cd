"""Asking an OpenAI-compatible endpoint many prompts at once, politely and within a budget.

Async (httpx + asyncio) because the work is waiting: a hosted model takes seconds per answer and
the useful parallelism is tens of requests, not tens of processes. Three limits apply together:
`concurrency` (requests in flight), `requests_per_second` (starts spaced evenly, so a burst never
trips the provider's limiter) and a `Budget` (requests sent, including retries, and a deadline).
When the budget runs out no new request or retry starts; those in flight finish, so a deadline is
overrun by at most one request timeout. Prompts never started are `skipped`, not failed, and a
later run sends them.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff (a
`Retry-After` header lengthens the wait); any other 4xx is the request's fault and is final.
The API key is sent as a bearer header and scrubbed from every message this module returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import require

log = logging.getLogger(__name__)

MAX_WAIT = 120.0  # seconds: the longest single backoff, whatever Retry-After asks
ERROR_CHARS = 300


@dataclass
class Settings:
    """What the request loop needs from AnnotateConfig, without importing it."""

    url: str  # the full endpoint URL: .../v1/chat/completions or .../v1/completions
    chat: bool
    key: str | None = field(default=None, repr=False)  # never in a repr, so never in a log line
    concurrency: int = 8
    requests_per_second: float | None = None
    retries: int = 4
    backoff: float = 1.0
    timeout: float = 120.0
    budget_seconds: float | None = None
    max_requests: int | None = None


@dataclass
class Outcome:
    """How one prompt ended: an answer, a final error, or skipped because the budget ran out."""

    answer: str | None = None
    error: str | None = None
    status: int | None = None  # the last HTTP status, None for a connection error or timeout
    attempts: int = 0

    @property
    def skipped(self) -> bool:
        return self.answer is None and self.error is None


@dataclass
class Budget:
    """Requests left and the deadline, shared by every worker (one event loop: no lock needed)."""

    max_requests: int | None
    deadline: float | None  # time.monotonic() value
    sent: int = 0
    retries: int = 0

    def open(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        within_time = self.deadline is None or now < self.deadline
        return within_time and (self.max_requests is None or self.sent < self.max_requests)

    def ends_before(self, seconds: float) -> bool:
        """True when the deadline comes before a wait of `seconds` would end."""
        return self.deadline is not None and time.monotonic() + seconds >= self.deadline


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart (a token bucket holding one token)."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next_start = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        start = max(now, self.next_start)
        self.next_start = start + self.interval  # claimed before sleeping, so workers queue up in order
        if start > now:
            await asyncio.sleep(start - now)


class Asker:
    """Sends prompts with retries; one per run (it owns the budget and the rate limiter)."""

    def __init__(self, settings: Settings, body: Callable[[str], dict[str, Any]]) -> None:
        self.settings = settings
        self.body = body  # prompt -> request JSON
        deadline = time.monotonic() + settings.budget_seconds if settings.budget_seconds else None
        self.budget = Budget(settings.max_requests, deadline)
        self.limiter = RateLimiter(settings.requests_per_second)
        self.httpx = require("httpx", "quality")
        self._random = random.Random()

    def scrub(self, text: str) -> str:
        """`text` without the API key, one line, bounded: safe to log, quarantine and cache."""
        if self.settings.key:
            text = text.replace(self.settings.key, "***")
        return " ".join(text.split())[:ERROR_CHARS]

    async def ask(self, client: Any, prompt: str) -> Outcome:
        """One prompt to an answer, a final error, or a skip (the budget ran out first)."""
        retries = self.settings.retries
        for attempt in range(retries + 1):
            await self.limiter.wait()
            if not self.budget.open():
                return Outcome(attempts=attempt)
            self.budget.sent += 1
            self.budget.retries += attempt > 0
            outcome, retry_after, final = await self._attempt(client, prompt)
            outcome.attempts = attempt + 1
            if final or attempt == retries:
                return outcome
            delay = min(MAX_WAIT, max(self.settings.backoff * 2 ** attempt * (1 + 0.25 * self._random.random()),
                                      retry_after or 0.0))
            if self.budget.ends_before(delay):
                return Outcome(attempts=attempt + 1)  # not a failure: a later run asks again
            log.debug("retrying in %.2f s after %s", delay, outcome.error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    async def _attempt(self, client: Any, prompt: str) -> tuple[Outcome, float | None, bool]:
        """One request: (outcome, Retry-After seconds, final: True when retrying cannot help)."""
        try:
            response = await client.post(self.settings.url, json=self.body(prompt), timeout=self.settings.timeout)
        except self.httpx.HTTPError as exc:  # connection refused or reset, timeout, bad protocol
            return Outcome(error=self.scrub(f"{type(exc).__name__}: {exc}")), None, False
        status = response.status_code
        if status == 200:
            try:
                return Outcome(answer=answer_text(response.json(), self.settings.chat), status=200), None, True
            except ValueError as exc:  # a 200 without an answer (a proxy's page): worth another try
                return Outcome(error=self.scrub(f"bad response: {exc}"), status=200), None, False
        outcome = Outcome(error=self.scrub(f"HTTP {status}: {error_message(response)}"), status=status)
        final = status != 429 and status < 500  # the request itself is wrong: sending it again cannot help
        return outcome, _seconds(response.headers.get("retry-after")), final

    async def ask_all(self, prompts: Iterable[tuple[Any, str]], on_outcome: Callable[[Any, Outcome], None]) -> None:
        """Every (key, prompt) through `concurrency` workers; `on_outcome` sees each as it ends."""
        s = self.settings
        headers = {"Authorization": f"Bearer {s.key}"} if s.key else {}
        limits = self.httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        pending = iter(prompts)
        async with self.httpx.AsyncClient(headers=headers, limits=limits, follow_redirects=False) as client:

            async def worker() -> None:
                for key, prompt in pending:  # a shared iterator: each prompt goes to exactly one worker
                    if not self.budget.open():
                        return
                    on_outcome(key, await self.ask(client, prompt))

            await asyncio.gather(*(worker() for _ in range(s.concurrency)))


def answer_text(data: Any, chat: bool) -> str:
    """The first choice's text of a chat or completions response; ValueError when there is none."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0]." + ("message.content" if chat else "text") + " in the response") from None
    if not isinstance(text, str):
        raise ValueError(f"the answer is {type(text).__name__}, not text")
    return text


def error_message(response: Any) -> str:
    """The provider's own error message when it sent the OpenAI error shape, else the body's start."""
    try:
        data = response.json()
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
        if message:
            return str(message)
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return response.text[:ERROR_CHARS]


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is rare from APIs and ignored)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
