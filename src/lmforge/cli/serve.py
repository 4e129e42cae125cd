"""Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming, /metrics).

Binds 127.0.0.1 unless --host says otherwise (a non-loopback host needs an API key). Keys come
from --api-key (repeatable) or LMFORGE_API_KEYS (comma-separated); clients send
`Authorization: Bearer <key>`. Concurrent requests are decoded together (--slots sequences at
once); Ctrl-C or SIGTERM lets in-flight requests finish before exiting.

Examples:

  lmforge serve runs/demo --api-key secret

  lmforge serve runs/ft-chat/model --port 8080 --slots 16 --rate-limit 60 --redact-pii

  curl -s localhost:8000/v1/completions -H 'Authorization: Bearer secret' \\
       -H 'Content-Type: application/json' -d '{"model": "demo", "prompt": "中国", "max_tokens": 20}'
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from lmforge.cli.console import model_path, tokenizer_path


def serve_command(
    model: Path = typer.Argument(
        ..., parser=model_path, help="Run directory, lmforge checkpoint, fine-tuned model or HF directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to bind."),
    api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable)."),
    name: str | None = typer.Option(None, help="Model id clients send (default: the model directory's name)."),
    slots: int = typer.Option(8, min=1, help="Sequences decoded together."),
    rate_limit: float = typer.Option(0, min=0, help="Requests per minute per key (0: unlimited)."),
    max_tokens: int | None = typer.Option(None, min=1, help="Cap on a request's max_tokens (default: context)."),
    max_request_bytes: int = typer.Option(1 << 20, min=1024, help="Largest request body accepted."),
    max_choices: int = typer.Option(64, min=1, help="Most completions (prompts x n) one request may ask for."),
    redact_pii: bool = typer.Option(False, "--redact-pii", help="Mask PII in prompts and outputs."),
    max_model_len: int | None = typer.Option(None, "--max-model-len", min=16,
                                             help="Tokens per sequence the KV cache holds (default: the model's context)."),
    backend: str = typer.Option("lmforge", help="lmforge, or vllm (needs vllm and a GPU)."),
    tokenizer: Path | None = typer.Option(
        None, parser=tokenizer_path, help="Tokenizer directory (default: beside the model or its run)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="float32, bfloat16, float16, or auto: float32 on a CPU, the checkpoint's dtype on a GPU."),
) -> None:
    from lmforge.serve.commands import serve_model

    # An empty --api-key (an unset variable) is kept, so that ServeConfig refuses it; the variable's list may
    # end in a comma.
    keys = list(api_key) + [k.strip() for k in os.environ.get("LMFORGE_API_KEYS", "").split(",") if k.strip()]
    serve_model(model, host, port, keys, name, slots, rate_limit, max_tokens, max_request_bytes, max_choices,
                redact_pii, max_model_len, backend, tokenizer, device, dtype)
