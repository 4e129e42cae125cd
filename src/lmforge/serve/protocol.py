"""The server's settings and the OpenAI request bodies it accepts, as typed models.

Request models ignore fields they do not know (OpenAI clients send many optional ones), but
every field they do know is checked, so a wrong type is a 422 that names the field.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmforge.config import StrictModel
from lmforge.errors import ConfigError


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"  # loopback unless asked: a model server should not be public by accident
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list)  # empty: no key needed (refused off loopback)
    model_name: str | None = None  # the id clients send as `model`; default: the model directory's name
    backend: Literal["lmforge", "vllm"] = "lmforge"
    slots: int = Field(8, ge=1, le=1024)  # sequences decoded together (continuous batching)
    rate_limit: float = Field(0, ge=0)  # requests per minute per API key; 0 is unlimited
    max_request_bytes: int = Field(1 << 20, ge=1024)  # larger bodies get 413
    max_tokens_limit: int | None = Field(None, ge=1)  # a cap on max_tokens (default: the context length)
    max_n: int = Field(8, ge=1)
    redact_pii: bool = False  # mask PII in prompts and outputs with the cleaning stage's redactor
    shutdown_timeout: float = Field(30.0, gt=0)  # seconds in-flight requests get to finish on SIGTERM

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> ServeConfig:
        if self.api_keys or self.host in ("localhost",):
            return self
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"host {self.host!r} is not loopback: give an API key (--api-key) to serve beyond "
                              "this machine")
        return self


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # not OpenAI's, but vLLM's and widely sent
    repetition_penalty: float = Field(1.0, gt=0)
    ignore_eos: bool = False  # vLLM's: generate max_tokens whatever the model says (benchmarks)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else list(v)
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        if not p:
            raise ValueError("prompt must not be empty")
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
