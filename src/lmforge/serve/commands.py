"""The `lmforge generate` and `lmforge serve` commands as Python calls, with the command's parameters.

Nothing heavy is imported at module level: the CLI imports this only when a command runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.serve.generate import Completion
    from lmforge.serve.loading import LoadedModel
    from lmforge.serve.samples import SamplesWritten


def _load(model: Path, prompts: Sequence[str], chat: bool, tokenizer: Path | None,
          device: str, dtype: str = "auto") -> tuple[LoadedModel, list[str]]:
    from lmforge.serve.loading import load_generator
    from lmforge.tokenize.chat import ChatEncoder

    loaded = load_generator(model, tokenizer, device=device, dtype=dtype)
    # With chat each prompt is a user turn: its special token strings are text, as the server reads them.
    chat_encoder = ChatEncoder(loaded.tokenizer, loaded.chat_template, **loaded.chat_tokens) if chat else None
    texts = [chat_encoder.encode([{"role": "user", "content": p}]) if chat_encoder else p for p in prompts]
    return loaded, texts


def _params(**sampling: Any):
    from lmforge.serve.sampling import SamplingParams

    return SamplingParams(**sampling)


def generate_completions(model: Path, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.8,
                         top_k: int = 50, top_p: float = 1.0, repetition_penalty: float = 1.0, n: int = 1,
                         stop: Sequence[str] = (), seed: int = 0, chat: bool = False, tokenizer: Path | None = None,
                         device: str = "auto", dtype: str = "auto") -> list[list[Completion]]:
    """`n` completions per prompt, all prompts decoded together (continuous batching)."""
    from lmforge.serve.generate import generate_batch

    loaded, texts = _load(model, prompts, chat, tokenizer, device, dtype)
    params = _params(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, n=n, stop=list(stop), seed=seed)
    return generate_batch(loaded.model, loaded.tokenizer, texts, params, loaded.stop_ids)


def generate_samples(model: Path, out: Path, prompts_file: Path | None = None, prompts: Sequence[str] = (),
                     max_new_tokens: int = 64, temperature: float = 0.8, top_k: int = 50, top_p: float = 1.0,
                     repetition_penalty: float = 1.0, n: int = 1, stop: Sequence[str] = (), seed: int = 0,
                     chat: bool = False, tokenizer: Path | None = None, device: str = "auto",
                     dtype: str = "auto") -> SamplesWritten:
    """`n` samples per prompt (from `prompts_file`, else `prompts`) written as JSON lines to `out` (see `samples`)."""
    from lmforge.serve.loading import load_generator
    from lmforge.serve.samples import PromptRow, read_prompts, write_samples

    rows = read_prompts(prompts_file) if prompts_file is not None else \
        [PromptRow(str(i), p) for i, p in enumerate(prompts, start=1)]
    loaded = load_generator(model, tokenizer, device=device, dtype=dtype)
    params = _params(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, n=n, stop=list(stop), seed=seed)
    return write_samples(loaded, rows, params, out, chat)


def stream_completion(model: Path, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8, top_k: int = 50,
                      top_p: float = 1.0, repetition_penalty: float = 1.0, stop: Sequence[str] = (), seed: int = 0,
                      chat: bool = False, tokenizer: Path | None = None, device: str = "auto",
                      dtype: str = "auto") -> Iterator[str]:
    """One completion's text pieces as they are decoded (the model loads on the first `next`)."""
    from lmforge.serve.generate import stream

    loaded, texts = _load(model, [prompt], chat, tokenizer, device, dtype)
    params = _params(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, n=1, stop=list(stop), seed=seed)
    yield from stream(loaded.model, loaded.tokenizer, texts[0], params, loaded.stop_ids)


def serve_model(model: Path, host: str = "127.0.0.1", port: int = 8000, api_keys: Sequence[str] = (),
                name: str | None = None, slots: int = 8, rate_limit: float = 0, max_tokens: int | None = None,
                max_request_bytes: int = 1 << 20, max_choices: int = 64, redact_pii: bool = False,
                max_model_len: int | None = None,
                backend: str = "lmforge", tokenizer: Path | None = None, device: str = "auto",
                dtype: str = "auto") -> None:
    """Serve a model over the OpenAI-compatible API until SIGINT/SIGTERM; bad settings raise ConfigError."""
    from pydantic import ValidationError

    from lmforge.config import format_validation_error
    from lmforge.errors import ConfigError
    from lmforge.serve.http import serve
    from lmforge.serve.protocol import ServeConfig

    try:
        config = ServeConfig(host=host, port=port, api_keys=list(api_keys), model_name=name, backend=backend,
                             slots=slots, rate_limit=rate_limit, max_tokens_limit=max_tokens,
                             max_request_bytes=max_request_bytes, max_choices=max_choices, redact_pii=redact_pii,
                             max_model_len=max_model_len)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "serve")) from None
    serve(model, config, tokenizer, device, dtype)


__all__ = ["generate_completions", "generate_samples", "serve_model", "stream_completion"]
