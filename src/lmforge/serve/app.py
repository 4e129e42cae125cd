"""The OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions.

Bodies are read by hand (capped at `max_request_bytes`) and validated with the protocol models,
so every failure has OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`
with 401 for a bad key, 404 for an unknown model, 413 for an oversize body, 422 for bad JSON or
a wrong field, 400 for a request the model cannot serve, 429 over the rate limit.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from lmforge.config import format_validation_error
from lmforge.errors import UserError
from lmforge.serve.chat import render_chat
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import ChatRequest, CompletionRequest, ServeConfig
from lmforge.serve.ratelimit import RateLimiter
from lmforge.serve.redact import Redactor
from lmforge.serve.sampling import SamplingParams

logger = logging.getLogger(__name__)


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

    # ---- checks

    def authorize(self, header: str | None) -> str:
        """The caller's key ("" when the server has none)."""
        if not self.config.api_keys:
            return ""
        key = (header or "").removeprefix("Bearer ").strip()
        if key not in self.config.api_keys:
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
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(422, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(422, "The request body must be a JSON object.", code="invalid_json")
        try:
            req = model_cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise APIError(422, format_validation_error(exc), code="invalid_value",
                           param=".".join(str(p) for p in first["loc"]) or None) from None
        if req.model != self.name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server has '{self.name}'.",
                           code="model_not_found", param="model")
        if req.n > self.config.max_n:
            raise APIError(400, f"n must be at most {self.config.max_n} (got {req.n}).", param="n")
        return req

    def params(self, req: Any, max_tokens: int | None, prompt_tokens: int) -> SamplingParams:
        cap = min(self.config.max_tokens_limit or self.backend.max_len, self.backend.max_len)
        if max_tokens is None:  # chat without a limit: whatever the context leaves, up to the cap
            max_tokens = max(1, min(cap, self.backend.max_len - prompt_tokens))
        if max_tokens > cap:
            raise APIError(400, f"max_tokens is {max_tokens}, but this server allows at most {cap}.",
                           param="max_tokens", code="max_tokens_exceeded")
        params = SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k,
                                top_p=req.top_p, repetition_penalty=req.repetition_penalty, n=req.n,
                                stop=req.stop, seed=req.seed, ignore_eos=req.ignore_eos)
        try:
            self.backend.check_fits(prompt_tokens, params)
        except UserError as exc:
            raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        return params


    # ---- the two generation endpoints

    def completion_jobs(self, req: CompletionRequest) -> list[tuple[list[int], SamplingParams, str]]:
        try:
            prompts = req.prompts()
        except ValueError as exc:
            raise APIError(422, str(exc), param="prompt", code="invalid_value") from None
        jobs = []
        for p in prompts:
            if isinstance(p, str) and self.redactor is not None:
                p = self.redactor.text(p)
            ids = p if isinstance(p, list) else self.tokenizer.encode(p, add_special_tokens=False).ids
            vocab = self.tokenizer.get_vocab_size()
            if any(not 0 <= t < vocab for t in ids):
                raise APIError(400, f"Prompt token ids must be in [0, {vocab}).", param="prompt")
            if not ids:
                raise APIError(400, "The prompt is empty.", param="prompt")
            echo = (p if isinstance(p, str) else self.tokenizer.decode(p)) if req.echo else ""
            jobs.append((ids, self.params(req, req.max_tokens, len(ids)), echo))
        return jobs

    def chat_job(self, req: ChatRequest) -> tuple[list[int], SamplingParams, str]:
        messages = [m.model_dump() for m in req.messages]
        if self.redactor is not None:
            for m in messages:
                if isinstance(m.get("content"), str):
                    m["content"] = self.redactor.text(m["content"])
        try:
            text = render_chat(messages, self.backend.loaded.chat_template)
        except UserError as exc:
            raise APIError(400, str(exc), param="messages") from None
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids, self.params(req, req.limit, len(ids)), ""

    async def run(self, jobs: list[tuple[list[int], SamplingParams, str]]) -> AsyncIterator[tuple[int, str, str | None, int]]:
        """(choice index, text delta, finish reason, new tokens) over every prompt's samples, as they come."""
        import asyncio

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
                    await queue.put((base + ev.index, text, ev.finish_reason, len(ev.token_ids)))
            finally:
                await queue.put(None)

        tasks = []
        base = 0
        for ids, params, _ in jobs:
            tasks.append(asyncio.create_task(one(base, ids, params)))
            base += params.n
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
