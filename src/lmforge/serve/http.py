"""FastAPI routes over `Service`, Server-Sent Events for streaming, and the uvicorn runner.

Imported only by `serve` paths (fastapi must resolve the handlers' annotations at module level).
Every response, unknown routes and unhandled errors included, is JSON in OpenAI's error shape
and counted under its route template (`Counted`), so /metrics holds a fixed set of series.
A non-streaming client that hangs up has its request cancelled, as a streaming one has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lmforge.serve.app import APIError, Job, Service, completion_body, new_id, quote, usage
from lmforge.serve.engine import Event, TokenLogprob
from lmforge.serve.logprobs import CompletionLogprobs, chat_logprobs, merge_completion_logprobs
from lmforge.serve.protocol import ChatRequest, CompletionRequest, ServeConfig

logger = logging.getLogger(__name__)

OTHER_ROUTE = "other"  # the metrics label of every path that is no route


class Counted:
    """ASGI middleware: count each response by route template and status; an unhandled error becomes
    a counted JSON 500 instead of a plain-text one."""

    def __init__(self, app: Any, service: Service, routes: Any) -> None:
        self.app, self.service, self.routes = app, service, routes

    def template(self, scope: dict) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match != Match.NONE:  # PARTIAL: the path is a route, the method is not (405)
                return getattr(route, "path", OTHER_ROUTE)
        return OTHER_ROUTE

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_counting(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        except Exception:
            logger.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            if not status:  # nothing sent yet: the client still gets OpenAI's shape
                error = APIError(500, "The server failed on this request; see its log.", type_="server_error",
                                 code="internal_error")
                await JSONResponse(error.body(), status_code=500)(scope, receive, send_counting)
        finally:
            self.service.metrics.requests.labels(self.template(scope), str(status[0] if status else 500)).inc()


@dataclass
class _Choice:
    """One choice as its events arrive: text, tokens and their log-probabilities."""

    text: str = ""
    reason: str | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def add(self, ev: Event) -> None:
        self.text += ev.text
        self.tokens += ev.token_ids
        self.logprobs += ev.logprobs or []
        if ev.prompt_logprobs is not None:
            self.prompt_logprobs = ev.prompt_logprobs
        if ev.finish_reason is not None:
            self.reason = ev.finish_reason


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"The request body is {int(declared)} bytes; this server accepts at most {limit}.",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"The request body exceeds {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.backend.start()
        yield
        # uvicorn has already let in-flight requests finish (or timed them out): stop the engine.
        await asyncio.to_thread(service.backend.stop)
        service.close()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Counted, service=service, routes=lambda: app.router.routes)
    metrics = service.metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"No route {request.method} {quote(request.url.path)}; this server has /v1/models, "
                        "/v1/completions, /v1/chat/completions, /health and /metrics."}.get(exc.status_code,
                                                                                             str(exc.detail))
        return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code,
                            headers=exc.headers)

    async def guarded(request: Request, model_cls: type) -> Any:
        key = service.authorize(request.headers.get("authorization"))
        service.rate_check(key)
        raw = await _read_body(request, service.config.max_request_bytes)
        return await service.offload(service.parse, raw, model_cls)

    @app.get("/health")
    async def health() -> JSONResponse:
        error = getattr(service.backend, "error", None)
        body = {"status": "error" if error else "ok", "model": service.name,
                "running": service.backend.running, "waiting": service.backend.waiting}
        return JSONResponse(body, status_code=503 if error else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    def model_card() -> dict[str, Any]:
        return {"id": service.name, "object": "model", "created": service.created, "owned_by": "lmforge",
                "max_model_len": service.backend.max_len}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        service.authorize(request.headers.get("authorization"))
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        service.authorize(request.headers.get("authorization"))
        if model_id != service.name:
            raise APIError(404, f"The model '{quote(model_id)}' does not exist.", code="model_not_found",
                           param="model")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        started = time.monotonic()
        req: CompletionRequest = await guarded(request, CompletionRequest)
        jobs: list[Job] = await service.offload(service.completion_jobs, req)
        prompt_tokens = sum(len(job.ids) for job in jobs)
        metrics.prompt_tokens.inc(prompt_tokens)
        rid, created = new_id("cmpl"), int(time.time())
        if req.stream:
            return StreamingResponse(_stream_completion(service, jobs, req, rid, created, prompt_tokens, started),
                                     media_type="text/event-stream")
        results = await _unless_gone(request, _collect(service, jobs))

        def answer() -> JSONResponse:  # logprobs of long echoed prompts are big: built and encoded off the loop
            owners = [job for job in jobs for _ in range(job.params.n)]
            choices = [{"text": owners[i].echo + c.text, "index": i, "finish_reason": c.reason,
                        "logprobs": _completion_logprobs(service, owners[i], c)} for i, c in enumerate(results)]
            return JSONResponse(completion_body("text_completion", rid, created, service.name, choices,
                                                usage(prompt_tokens, sum(len(c.tokens) for c in results))))

        response = await service.offload(answer)
        metrics.latency.labels("/v1/completions").observe(time.monotonic() - started)
        return response

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.monotonic()
        req: ChatRequest = await guarded(request, ChatRequest)
        job: Job = await service.offload(service.chat_job, req)
        prompt_tokens = len(job.ids)
        metrics.prompt_tokens.inc(prompt_tokens)
        rid, created = new_id("chatcmpl"), int(time.time())
        if req.stream:
            return StreamingResponse(_stream_chat(service, job, req, rid, created, prompt_tokens, started),
                                     media_type="text/event-stream")
        results = await _unless_gone(request, _collect(service, [job]))
        top = job.params.logprobs

        def answer() -> JSONResponse:
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.reason,
                        "logprobs": None if top is None else {
                            "content": chat_logprobs(service.token_text, c.logprobs, top), "refusal": None}}
                       for i, c in enumerate(results)]
            return JSONResponse(completion_body("chat.completion", rid, created, service.name, choices,
                                                usage(prompt_tokens, sum(len(c.tokens) for c in results))))

        response = await service.offload(answer)
        metrics.latency.labels("/v1/chat/completions").observe(time.monotonic() - started)
        return response

    return app


async def _until_disconnect(request: Request) -> None:
    """Return when the client hangs up (the body has been read, so the next message is the hang-up)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work: Awaitable[Any]) -> Any:
    """`work`'s result, or, if the client hangs up first, `work` cancelled (freeing its engine slots)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise APIError(499, "The client closed the request before it finished.", code="client_closed_request")
    return task.result()


async def _collect(service: Service, jobs: list[Job]) -> list[_Choice]:
    choices = [_Choice() for job in jobs for _ in range(job.params.n)]
    try:
        async for ev in service.run(jobs):
            choices[ev.index].add(ev)
    finally:  # a cancelled request still counts what it generated
        service.metrics.completion_tokens.inc(sum(len(c.tokens) for c in choices))
    if any(c.reason == "error" for c in choices):
        raise APIError(500, "The generation engine failed; see the server log.", type_="server_error",
                       code="engine_error")
    return choices


def _completion_logprobs(service: Service, job: Job, choice: _Choice) -> dict | None:
    if job.params.logprobs is None:
        return None
    builder = CompletionLogprobs(service.token_text, job.params.logprobs)
    parts = []
    if choice.prompt_logprobs is not None:  # echo: the prompt's tokens first
        parts.append(builder.add(job.ids, choice.prompt_logprobs))
    parts.append(builder.add(choice.tokens, choice.logprobs))
    return merge_completion_logprobs(parts)


async def _stream_completion(service: Service, jobs: list[Job], req, rid, created, prompt_tokens,
                             started) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, reason: str | None, logprobs: dict | None = None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}
        return _sse(completion_body("text_completion", rid, created, service.name, [choice], None))

    owners = [job for job in jobs for _ in range(job.params.n)]
    builders = [CompletionLogprobs(service.token_text, job.params.logprobs) if job.params.logprobs is not None
                else None for job in owners]
    echoed = [False] * len(owners)
    produced = 0
    try:
        async for ev in service.run(jobs):
            i, job, builder = ev.index, owners[ev.index], builders[ev.index]
            produced += len(ev.token_ids)
            if not echoed[i]:  # the echo goes first, with the prompt's logprobs that come with the first event
                echoed[i] = True
                if job.echo:
                    prompt_lp = ev.prompt_logprobs
                    lp = await service.offload(builder.add, job.ids, prompt_lp) if builder and prompt_lp else None
                    yield chunk(i, job.echo, None, lp)
            if ev.text or ev.finish_reason or ev.logprobs:
                yield chunk(i, ev.text, ev.finish_reason,
                            builder.add(ev.token_ids, ev.logprobs or []) if builder else None)
        async for tail in _stream_end(service, req, rid, created, "text_completion", prompt_tokens, produced,
                                      "/v1/completions", started):
            yield tail
    finally:
        service.metrics.completion_tokens.inc(produced)


async def _stream_chat(service: Service, job: Job, req, rid, created, prompt_tokens, started) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk"
    top = job.params.logprobs

    def chunk(index: int, delta: dict, reason: str | None, entries: list[TokenLogprob] | None = None) -> bytes:
        logprobs = None if top is None or entries is None else {"content": chat_logprobs(service.token_text,
                                                                                         entries, top)}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return _sse(completion_body(kind, rid, created, service.name, [choice], None))

    for i in range(job.params.n):
        yield chunk(i, {"role": "assistant", "content": ""}, None)
    produced = 0
    try:
        async for ev in service.run([job]):
            produced += len(ev.token_ids)
            if ev.text or ev.logprobs:
                yield chunk(ev.index, {"content": ev.text}, None, ev.logprobs)
            if ev.finish_reason:
                yield chunk(ev.index, {}, ev.finish_reason)
        async for tail in _stream_end(service, req, rid, created, kind, prompt_tokens, produced,
                                      "/v1/chat/completions", started):
            yield tail
    finally:
        service.metrics.completion_tokens.inc(produced)


async def _stream_end(service: Service, req, rid, created, kind, prompt_tokens, produced, endpoint,
                      started) -> AsyncIterator[bytes]:
    if req.include_usage:
        yield _sse(completion_body(kind, rid, created, service.name, [], usage(prompt_tokens, produced)))
    yield b"data: [DONE]\n\n"
    service.metrics.latency.labels(endpoint).observe(time.monotonic() - started)


def build_service(model: str | Path, config: ServeConfig, tokenizer: str | Path | None = None,
                  device: str = "auto", dtype: str = "auto") -> Service:
    from lmforge.serve.worker import make_backend

    if config.backend == "vllm":
        backend = make_backend("vllm", (model, tokenizer), config.slots)
        name = config.model_name or backend.loaded.name
    else:
        from lmforge.serve.loading import load_generator

        loaded = load_generator(model, tokenizer, device=device, name=config.model_name, dtype=dtype)
        backend = make_backend("lmforge", loaded, config.slots, config.max_model_len)
        name = loaded.name
    return Service(backend, config, name)


def log_exposure(config: ServeConfig) -> None:
    for warning in config.exposure_warnings():
        logger.warning(warning)


def uvicorn_server(service: Service, log_level: str = "warning") -> Any:
    import uvicorn

    cfg = service.config
    log_exposure(cfg)
    return uvicorn.Server(uvicorn.Config(create_app(service), host=cfg.host, port=cfg.port, log_level=log_level,
                                         timeout_graceful_shutdown=cfg.shutdown_timeout, access_log=False))


def serve(model: str | Path, config: ServeConfig, tokenizer: str | Path | None = None, device: str = "auto",
          dtype: str = "auto") -> None:
    """Load the model and serve until SIGINT/SIGTERM, letting in-flight requests finish."""
    service = build_service(model, config, tokenizer, device, dtype)
    logger.info("serving %s on http://%s:%d/v1 (%s backend, %d slots)", service.name, config.host, config.port,
                config.backend, config.slots)
    uvicorn_server(service, log_level="info").run()
