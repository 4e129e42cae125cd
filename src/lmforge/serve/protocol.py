"""The server's settings and the OpenAI request bodies it accepts, as typed models.

Request models ignore fields they do not know (OpenAI clients send many optional ones), but
every field they do know is checked, so a wrong type is a 422 that names the field. Fields that
OpenAI defines and this server does not implement are read too (`unsupported()`), so that a
request which asks for them (`tools`, `response_format`, `best_of`, ...) gets a 400 naming the
field instead of an answer that silently ignored it; their neutral values (`tools: []`,
`frequency_penalty: 0`) pass.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lmforge.config import StrictModel
from lmforge.errors import ConfigError

MIN_PUBLIC_KEY_CHARS = 16
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limits: `logprobs` of /v1/completions, `top_logprobs` of chat
MAX_CHAT_TOP_LOGPROBS = 20


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"  # loopback unless asked: a model server should not be public by accident
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list)  # empty: no key needed (refused off loopback)
    model_name: str | None = None  # the id clients send as `model`; default: the model directory's name
    backend: Literal["lmforge", "vllm"] = "lmforge"
    slots: int = Field(8, ge=1, le=1024)  # sequences decoded together (continuous batching)
    # Tokens per sequence the KV cache holds (prompt + completion); default: the model's whole context,
    # which for a 32k-context model is GBs per slot on a CPU.
    max_model_len: int | None = Field(None, ge=16)
    rate_limit: float = Field(0, ge=0)  # requests per minute per API key; 0 is unlimited
    max_request_bytes: int = Field(1 << 20, ge=1024)  # larger bodies get 413
    max_tokens_limit: int | None = Field(None, ge=1)  # a cap on max_tokens (default: the context length)
    max_n: int = Field(8, ge=1)
    # Prompts x n in one request: each is a prefill and a slot, so a list of 20000 prompts is
    # refused before it is tokenized instead of stalling every other client.
    max_choices: int = Field(64, ge=1)
    redact_pii: bool = False  # mask PII in prompts and outputs with the cleaning stage's redactor
    shutdown_timeout: float = Field(30.0, gt=0)  # seconds in-flight requests get to finish on SIGTERM

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, keys: list[str]) -> list[str]:
        # `--api-key "$UNSET_VAR"` gives "", and a key "" would let in every request without a header.
        for key in keys:
            if not key.strip() or key != key.strip():
                raise ConfigError(f"api_keys: {key[:20]!r} is empty or has surrounding whitespace; a key must be "
                                  "non-blank text (is the variable that should hold it set?)")
        return keys

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> ServeConfig:
        if not self.api_keys and not self.loopback:
            raise ConfigError(f"host {self.host!r} is not loopback: give an API key (--api-key) to serve beyond "
                              "this machine")
        return self

    def exposure_warnings(self) -> list[str]:
        """What an operator should hear at start-up about who can use the model."""
        if not self.api_keys:
            return [f"no API key set: anyone who can reach {self.host}:{self.port} can use the model"]
        if not self.loopback and any(len(k) < MIN_PUBLIC_KEY_CHARS for k in self.api_keys):
            return [f"an API key shorter than {MIN_PUBLIC_KEY_CHARS} characters guards {self.host}:{self.port}, "
                    "which is reachable beyond this machine; use a long random key (openssl rand -hex 24)"]
        return []


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(0, ge=0)  # not OpenAI's, but vLLM's and widely sent
    repetition_penalty: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
    ignore_eos: bool = False  # vLLM's: generate max_tokens whatever the model says (benchmarks)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> -100..100, checked against the vocabulary
    # OpenAI's, not implemented: accepted only at their neutral value.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else list(v)
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError(f"stop must be up to 4 non-empty strings (got {len(stops)})")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field this server would have to ignore to answer, else None."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0):
                return name, f"{name} is not supported by this server (use repetition_penalty)"
        return None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)  # alternatives per token
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported by this server"
        if self.best_of not in (None, self.n):
            return "best_of", f"best_of is not supported by this server (got {self.best_of}; use n)"
        return super().unsupported()

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


# OpenAI chat fields this server does not implement, and the values that ask for nothing.
_CHAT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,), "verbosity": (None,),
    "store": (None, False),
}


class ChatRequest(_Request):
    model_config = ConfigDict(extra="allow")  # the unimplemented fields above are read from the extras

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        extra = self.model_extra or {}
        for name, neutral in _CHAT_NEUTRAL.items():
            if name in extra and not any(extra[name] == v for v in neutral):
                return name, f"{name} is not supported by this server"
        return super().unsupported()

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
