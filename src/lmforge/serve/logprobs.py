"""OpenAI's two logprobs shapes, built from the engine's `TokenLogprob` records.

/v1/completions (the legacy shape evaluation harnesses read): `{tokens, token_logprobs,
top_logprobs, text_offset}`, where `top_logprobs` maps token text to log-probability and also
holds the chosen token, and `text_offset` is each token's character offset in the choice's text
(the echoed prompt included). Chat: `{"content": [{token, logprob, bytes, top_logprobs}]}`.

A byte-level token can be part of a character; OpenAI shows such a token as `bytes:\\xe4\\xb8`
and gives its raw `bytes` in chat, and so does this module. A probability too small for a float
is reported as -9999.0, as OpenAI does (JSON has no -Infinity).
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from lmforge.serve.engine import TokenLogprob

FLOOR = -9999.0
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


def _finite(lp: float) -> float:
    return lp if lp > FLOOR else FLOOR  # also NaN


class TokenText:
    """Each token's bytes and how OpenAI spells it, for byte-level and SentencePiece tokenizers."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import ByteLevel

        from lmforge.tokenize.bpe import byte_level_chars

        self.tokenizer = tokenizer
        self.byte_level = isinstance(tokenizer.decoder, ByteLevel)
        self._byte_of = {c: b for b, c in enumerate(byte_level_chars())}
        self._added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._bytes: dict[int, bytes] = {}

    def bytes(self, token: int) -> bytes:
        if token not in self._bytes:
            self._bytes[token] = self._lookup(token)
        return self._bytes[token]

    def _lookup(self, token: int) -> bytes:
        if token in self._added:
            return self._added[token].encode()
        piece = self.tokenizer.id_to_token(token)
        if piece is None:
            return b""
        if self.byte_level and all(c in self._byte_of for c in piece):
            return bytes(self._byte_of[c] for c in piece)
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode()  # SentencePiece's word-start mark is a space

    def text(self, token: int) -> str:
        raw = self.bytes(token)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class CompletionLogprobs:
    """The legacy shape for one choice, built chunk by chunk (streaming) or at once."""

    def __init__(self, text: TokenText, top: int) -> None:
        self.text = text
        self.top = top
        self._chars = 0  # characters of the choice's text before the next token
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, tokens: list[int], entries: list[TokenLogprob | None]) -> dict[str, list]:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in zip(tokens, entries, strict=True):
            out["tokens"].append(self.text.text(token))
            out["text_offset"].append(self._chars)
            self._chars += len(self._utf8.decode(self.text.bytes(token)))
            if entry is None:  # the prompt's first token: nothing predicts it
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(_finite(entry.logprob))
            top = {self.text.text(t): _finite(lp) for t, lp in entry.top[: self.top]}
            top.setdefault(self.text.text(entry.token), _finite(entry.logprob))  # OpenAI: the chosen one too
            out["top_logprobs"].append(top)
        return out


def merge_completion_logprobs(parts: list[dict[str, list]]) -> dict[str, list]:
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for part in parts:
        for key, values in part.items():
            merged[key] += values
    return merged


def chat_logprobs(text: TokenText, entries: list[TokenLogprob], top: int) -> list[dict[str, Any]]:
    """The entries of `choices[].logprobs.content` for these tokens."""

    def one(token: int, lp: float) -> dict[str, Any]:
        return {"token": text.text(token), "logprob": _finite(lp), "bytes": list(text.bytes(token))}

    return [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top[:top]]} for e in entries]
