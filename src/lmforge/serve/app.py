"""The OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions.

Bodies are read by hand (capped at `max_request_bytes`) and validated with the protocol models,
so every failure has OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`
with 401 for a bad key, 404 for an unknown model, 413 for an oversize body, 422 for bad JSON or
a wrong field, 400 for a request the model cannot serve, 429 over the rate limit. Messages quote
at most `QUOTE` characters of a value a client sent.

Parsing, PII masking and tokenizing run on a small thread pool (`Service.offload`), never on the
event loop: a 1 MB prompt takes about a second to tokenize, and the loop must keep answering.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from lmforge.errors import UserError
from lmforge.serve.engine import Event
from lmforge.serve.logprobs import TokenText
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import ChatRequest, CompletionRequest, ServeConfig
from lmforge.serve.ratelimit import RateLimiter
from lmforge.serve.redact import Redactor
from lmforge.serve.sampling import SamplingParams
from lmforge.tokenize.chat import ChatEncoder, encode_texts

logger = logging.getLogger(__name__)

QUOTE = 100  # characters of a client's value an error message may repeat
MAX_JSON_DEPTH = 64  # OpenAI bodies nest a few levels; json.loads itself fails near 1000


def quote(value: Any, limit: int = QUOTE) -> str:
    """A short, printable rendering of a value a client sent, for an error message."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode()  # lone surrogates as \\udXXX
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass
class Job:
    """One prompt of a request, ready for the backend: its ids, sampling, and the text to echo."""

    ids: list[int]
    params: SamplingParams
    echo: str = ""


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Service:
    """Everything a request needs: backend, tokenizer, limits, metrics; no HTTP in here."""

    def __init__(self, backend: Any, config: ServeConfig, name: str) -> None:
        self.backend = backend
        self.config = config
        self.name = name
        self.tokenizer = backend.loaded.tokenizer
        self.metrics = Metrics(backend)
        self.limiter = RateLimiter(config.rate_limit)
        self.redactor = Redactor() if config.redact_pii else None
        self.created = int(time.time())
        self.chat = ChatEncoder(self.tokenizer, backend.loaded.chat_template, **backend.loaded.chat_tokens)
        self.token_text = TokenText(self.tokenizer)
        self.vocab = self.tokenizer.get_vocab_size()
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                        thread_name_prefix="lmforge-prepare")

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work of a request (parse, mask, tokenize) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- checks

    def authorize(self, header: str | None) -> str:
        """The caller's key ("" when the server has none). Only `Bearer <key>` is a key (RFC 6750)."""
        if not self.config.api_keys:
            return ""
        scheme, _, key = (header or "").strip().partition(" ")
        key = key.strip()
        given = key.encode("utf-8", "backslashreplace")
        # Every key is compared, in constant time, so timing says nothing about how much of a key matched.
        matched = [hmac.compare_digest(given, k.encode()) for k in self.config.api_keys]
        if scheme.lower() != "bearer" or not key or not any(matched):
            raise APIError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
        return key

    def rate_check(self, key: str) -> None:
        wait = self.limiter.acquire(key)
        if wait > 0:
            raise APIError(429, f"Rate limit reached: {self.config.rate_limit:g} requests per minute; retry in "
                           f"{wait:.1f} s.", type_="requests", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, round(wait)))})

    def parse(self, raw: bytes, model_cls: type) -> Any:
        try:
            body = json.loads(raw)
        except RecursionError:
            raise APIError(422, f"The request body nests deeper than {MAX_JSON_DEPTH} levels.",
                           code="invalid_json") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(422, f"The request body is not valid JSON: {quote(str(exc))}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(422, "The request body must be a JSON object.", code="invalid_json")
        check_json(body)
        try:
            req = model_cls.model_validate(body)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise APIError(422, message, code="invalid_value", param=param) from None
        if req.model != self.name:
            raise APIError(404, f"The model '{quote(req.model)}' does not exist; this server has '{self.name}'.",
                           code="model_not_found", param="model")
        if req.n > self.config.max_n:
            raise APIError(400, f"n must be at most {self.config.max_n} (got {req.n}).", param="n")
        unsupported = req.unsupported()
        if unsupported is not None:
            raise APIError(400, unsupported[1] + ".", param=unsupported[0], code="unsupported_parameter")
        return req

    def params(self, req: Any, max_tokens: int | None, prompt_tokens: int, logprobs: int | None = None,
               prompt_logprobs: int | None = None) -> SamplingParams:
        cap = min(self.config.max_tokens_limit or self.backend.max_len, self.backend.max_len)
        if max_tokens is None:  # chat without a limit: whatever the context leaves, up to the cap
            max_tokens = max(1, min(cap, self.backend.max_len - prompt_tokens))
        if max_tokens > cap:
            raise APIError(400, f"max_tokens is {max_tokens}, but this server allows at most {cap}.",
                           param="max_tokens", code="max_tokens_exceeded")
        params = SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k,
                                top_p=req.top_p, repetition_penalty=req.repetition_penalty, n=req.n,
                                stop=req.stop, seed=req.seed, ignore_eos=req.ignore_eos,
                                logit_bias=self.logit_bias(req.logit_bias), logprobs=logprobs,
                                prompt_logprobs=prompt_logprobs)
        try:
            self.backend.check_fits(prompt_tokens, params)
        except UserError as exc:
            raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        return params

    def logit_bias(self, given: dict[str, float] | None) -> dict[int, float]:
        """OpenAI's {"token id": bias} checked against this vocabulary and range."""
        bias: dict[int, float] = {}
        if given and not getattr(self.backend, "supports_logprobs", True):
            raise APIError(400, "logit_bias is not available with this backend.", param="logit_bias",
                           code="unsupported_parameter")
        for key, value in (given or {}).items():
            if not (key.isascii() and key.isdigit() and int(key) < self.vocab):
                raise APIError(400, f"logit_bias keys must be token ids in [0, {self.vocab}) (got {quote(key)}).",
                               param="logit_bias", code="invalid_value")
            if not -100 <= value <= 100:  # also NaN
                raise APIError(400, f"logit_bias values must be in [-100, 100] (got {value!r} for {key}).",
                               param="logit_bias", code="invalid_value")
            bias[int(key)] = float(value)
        return bias

    def check_logprobs(self, wanted: bool) -> None:
        if not wanted:
            return
        if self.redactor is not None:  # token strings would spell out what the masking hides
            raise APIError(400, "logprobs are not available on a server that masks PII (--redact-pii).",
                           param="logprobs", code="unsupported_parameter")
        if not getattr(self.backend, "supports_logprobs", True):
            raise APIError(400, "logprobs are not available with this backend.", param="logprobs",
                           code="unsupported_parameter")


    # ---- the two generation endpoints

    def completion_jobs(self, req: CompletionRequest) -> list[Job]:
        try:
            prompts = req.prompts()
        except ValueError as exc:
            raise APIError(422, str(exc), param="prompt", code="invalid_value") from None
        if len(prompts) * req.n > self.config.max_choices:  # before any tokenizing: the cap bounds the work
            raise APIError(400, f"{len(prompts)} prompts x n={req.n} asks for {len(prompts) * req.n} completions; "
                           f"this server gives at most {self.config.max_choices} per request.", param="prompt",
                           code="too_many_completions")
        self.check_logprobs(req.logprobs is not None)
        if self.redactor is not None:
            prompts = [self.redactor.text(p) if isinstance(p, str) else p for p in prompts]
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(encode_texts(self.tokenizer, texts) if texts else [])
        jobs = []
        for p in prompts:
            ids = p if isinstance(p, list) else next(encoded)
            if any(not 0 <= t < self.vocab for t in ids):
                raise APIError(400, f"Prompt token ids must be in [0, {self.vocab}).", param="prompt")
            if not ids:
                raise APIError(400, "The prompt is empty.", param="prompt")
            prompt_logprobs = req.logprobs if req.echo else None
            params = self.params(req, req.max_tokens, len(ids), req.logprobs, prompt_logprobs)
            echo = (p if isinstance(p, str) else self.tokenizer.decode(p)) if req.echo else ""
            jobs.append(Job(ids, params, echo))
        return jobs

    def chat_job(self, req: ChatRequest) -> Job:
        self.check_logprobs(req.logprobs)
        messages = [m.model_dump() for m in req.messages]
        if self.redactor is not None:
            for m in messages:
                if isinstance(m.get("content"), str):
                    m["content"] = self.redactor.text(m["content"])
        try:
            ids = self.chat.encode(messages)
        except UserError as exc:
            raise APIError(400, str(exc), param="messages") from None
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        return Job(ids, self.params(req, req.limit, len(ids), logprobs))

    async def run(self, jobs: list[Job]) -> AsyncIterator[Event]:
        """Every prompt's samples' events as they come, each `index` made the choice's index."""
        queue: asyncio.Queue = asyncio.Queue()
        started = time.monotonic()
        first = [True]

        async def one(base: int, ids: list[int], params: SamplingParams) -> None:
            filters = [self.redactor.stream() if self.redactor else None for _ in range(params.n)]
            try:
                async for ev in self.backend.generate(ids, params):
                    if first[0] and ev.token_ids:
                        first[0] = False
                        self.metrics.first_token.observe(time.monotonic() - started)
                    text = ev.text
                    if filters[ev.index] is not None:
                        text = filters[ev.index].feed(text, final=ev.finish_reason is not None)
                    await queue.put(replace(ev, index=base + ev.index, text=text))
            finally:
                await queue.put(None)

        tasks = []
        base = 0
        for job in jobs:
            tasks.append(asyncio.create_task(one(base, job.ids, job.params)))
            base += job.params.n
        try:
            done = 0
            while done < len(tasks):
                item = await queue.get()
                if item is None:
                    done += 1
                    continue
                yield item
            for t in tasks:
                t.result()  # re-raise a backend failure
        finally:
            for t in tasks:
                t.cancel()


def check_json(body: Any) -> None:
    """Refuse what JSON allows but text and this server do not: lone UTF-16 surrogates (`"\\ud800"`,
    which no encoder can write back) and nesting deeper than MAX_JSON_DEPTH."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                raise APIError(422, "A string in the request holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                               "which is not text.", code="invalid_value", param=_surrogate_path(body))
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise APIError(422, f"The request body nests deeper than {MAX_JSON_DEPTH} levels.",
                               code="invalid_json")
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)  # keys are strings to check too
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_path(value: Any, path: str = "", depth: int = 1) -> str | None:
    """Where the first lone surrogate is, as a dotted path (quoted safely), looking MAX_JSON_DEPTH deep."""
    if isinstance(value, str):
        return (path or "<body>") if not _is_text(value) else None
    if depth > MAX_JSON_DEPTH:
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}.{quote(str(key), 40)}" if path else quote(str(key), 40)
        if isinstance(key, str) and not _is_text(key):
            return where
        found = _surrogate_path(item, where, depth + 1)
        if found:
            return found
    return None


def describe_validation_error(exc: ValidationError, shown: int = 3) -> tuple[str, str | None]:
    """pydantic's report as one short line (at most `shown` problems, values quoted briefly) and the
    first problem's field."""
    errors = exc.errors(include_url=False, include_context=False)
    parts = []
    for err in errors[:shown]:
        where = ".".join(str(p) for p in err["loc"]) or "<body>"
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        value = "" if err["type"] == "missing" or isinstance(got, (dict, list)) else f" (got {quote(got)})"
        parts.append(f"{quote(where, 60)}: {message}{value}")
    if len(errors) > shown:
        parts.append(f"and {len(errors) - shown} more")
    param = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
    return "; ".join(parts), quote(param, 60) or None


def completion_body(kind: str, rid: str, created: int, model: str, choices: list[dict], usage: dict | None) -> dict:
    body: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
