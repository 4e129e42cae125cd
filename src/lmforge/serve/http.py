"""FastAPI routes over `Service`, Server-Sent Events for streaming, and the uvicorn runner.

Imported only by `serve` paths (fastapi must resolve the handlers' annotations at module level).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmforge.serve.app import APIError, Service, completion_body, new_id, usage
from lmforge.serve.protocol import ChatRequest, CompletionRequest, ServeConfig

logger = logging.getLogger(__name__)


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

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = service.metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    async def guarded(request: Request, model_cls: type) -> Any:
        key = service.authorize(request.headers.get("authorization"))
        service.rate_check(key)
        return service.parse(await _read_body(request, service.config.max_request_bytes), model_cls)

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
            raise APIError(404, f"The model '{model_id}' does not exist.", code="model_not_found", param="model")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        started = time.monotonic()
        req: CompletionRequest = await guarded(request, CompletionRequest)
        jobs = service.completion_jobs(req)
        prompt_tokens = sum(len(ids) for ids, _, _ in jobs)
        metrics.prompt_tokens.inc(prompt_tokens)
        rid, created = new_id("cmpl"), int(time.time())
        echoes = [echo for _, params, echo in jobs for _ in range(params.n)]
        if req.stream:
            return StreamingResponse(_stream_completion(service, jobs, req, rid, created, echoes, prompt_tokens,
                                                        started), media_type="text/event-stream")
        texts, reasons, produced = await _collect(service, jobs)
        choices = [{"text": echoes[i] + texts[i], "index": i, "logprobs": None, "finish_reason": reasons[i]}
                   for i in range(len(texts))]
        metrics.latency.labels("/v1/completions").observe(time.monotonic() - started)
        return completion_body("text_completion", rid, created, service.name, choices,
                               usage(prompt_tokens, produced))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.monotonic()
        req: ChatRequest = await guarded(request, ChatRequest)
        job = service.chat_job(req)
        prompt_tokens = len(job[0])
        metrics.prompt_tokens.inc(prompt_tokens)
        rid, created = new_id("chatcmpl"), int(time.time())
        if req.stream:
            return StreamingResponse(_stream_chat(service, job, req, rid, created, prompt_tokens, started),
                                     media_type="text/event-stream")
        texts, reasons, produced = await _collect(service, [job])
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                    "finish_reason": reasons[i]} for i in range(len(texts))]
        metrics.latency.labels("/v1/chat/completions").observe(time.monotonic() - started)
        return completion_body("chat.completion", rid, created, service.name, choices,
                               usage(prompt_tokens, produced))

    return app


async def _collect(service: Service, jobs: list) -> tuple[list[str], list[str | None], int]:
    total = sum(params.n for _, params, _ in jobs)
    texts, reasons, produced = [""] * total, [None] * total, 0
    async for index, text, reason, n in service.run(jobs):
        texts[index] += text
        produced += n
        if reason is not None:
            reasons[index] = reason
    service.metrics.completion_tokens.inc(produced)
    if "error" in reasons:
        raise APIError(500, "The generation engine failed; see the server log.", type_="server_error",
                       code="engine_error")
    return texts, reasons, produced


async def _stream_completion(service: Service, jobs, req, rid, created, echoes, prompt_tokens,
                             started) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, reason: str | None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
        return _sse(completion_body("text_completion", rid, created, service.name, [choice], None))

    for i, echo in enumerate(echoes):
        if echo:
            yield chunk(i, echo, None)
    produced = 0
    async for index, text, reason, n in service.run(jobs):
        produced += n
        if text or reason:
            yield chunk(index, text, reason)
    async for tail in _stream_end(service, req, rid, created, "text_completion", prompt_tokens, produced,
                                  "/v1/completions", started):
        yield tail


async def _stream_chat(service: Service, job, req, rid, created, prompt_tokens, started) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk"

    def chunk(index: int, delta: dict, reason: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return _sse(completion_body(kind, rid, created, service.name, [choice], None))

    for i in range(job[1].n):
        yield chunk(i, {"role": "assistant", "content": ""}, None)
    produced = 0
    async for index, text, reason, n in service.run([job]):
        produced += n
        if text:
            yield chunk(index, {"content": text}, None)
        if reason:
            yield chunk(index, {}, reason)
    async for tail in _stream_end(service, req, rid, created, kind, prompt_tokens, produced,
                                  "/v1/chat/completions", started):
        yield tail


async def _stream_end(service: Service, req, rid, created, kind, prompt_tokens, produced, endpoint,
                      started) -> AsyncIterator[bytes]:
    service.metrics.completion_tokens.inc(produced)
    if req.include_usage:
        yield _sse(completion_body(kind, rid, created, service.name, [], usage(prompt_tokens, produced)))
    yield b"data: [DONE]\n\n"
    service.metrics.latency.labels(endpoint).observe(time.monotonic() - started)


def build_service(model: str | Path, config: ServeConfig, tokenizer: str | Path | None = None,
                  device: str = "auto") -> Service:
    from lmforge.serve.worker import make_backend

    if config.backend == "vllm":
        backend = make_backend("vllm", (model, tokenizer), config.slots)
        name = config.model_name or backend.loaded.name
    else:
        from lmforge.serve.loading import load_generator

        loaded = load_generator(model, tokenizer, device=device, name=config.model_name)
        backend = make_backend("lmforge", loaded, config.slots)
        name = loaded.name
    return Service(backend, config, name)


def uvicorn_server(service: Service, log_level: str = "warning") -> Any:
    import uvicorn

    cfg = service.config
    if not cfg.api_keys:
        logger.warning("no API key set: anyone who can reach %s:%d can use the model", cfg.host, cfg.port)
    return uvicorn.Server(uvicorn.Config(create_app(service), host=cfg.host, port=cfg.port, log_level=log_level,
                                         timeout_graceful_shutdown=cfg.shutdown_timeout, access_log=False))


def serve(model: str | Path, config: ServeConfig, tokenizer: str | Path | None = None, device: str = "auto") -> None:
    """Load the model and serve until SIGINT/SIGTERM, letting in-flight requests finish."""
    service = build_service(model, config, tokenizer, device)
    logger.info("serving %s on http://%s:%d/v1 (%s backend, %d slots)", service.name, config.host, config.port,
                config.backend, config.slots)
    uvicorn_server(service, log_level="info").run()
