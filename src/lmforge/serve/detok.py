"""Turning a growing list of token ids into text deltas that are safe to send.

Byte-level tokens can split a character (a Chinese character is three UTF-8 bytes, often
spread over two tokens), and a stop string can arrive in pieces. A delta is therefore held back
while the text ends in an incomplete character or in the beginning of a stop string, so a
streaming client never sees a replacement character or half of a stop word.
"""

from __future__ import annotations

from typing import Any

_INCOMPLETE = "\ufffd"


class IncrementalText:
    def __init__(self, tokenizer: Any | None, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.text = ""

    def add(self, token: int) -> tuple[str, bool]:
        """Append a token; return (new safe text, whether a stop string was reached)."""
        self.ids.append(token)
        if self.tokenizer is None:  # token-level use: no text to watch
            return "", False
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.stop:
            # A stop string may straddle the previous delta, so search from before it.
            window = max(0, self.sent - max(len(s) for s in self.stop))
            hits = [i for i in (self.text.find(s, window) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self._emit(len(self.text)), True
        safe = len(self.text)
        while safe > self.sent and self.text[safe - 1] == _INCOMPLETE:
            safe -= 1
        safe -= self._stop_prefix(self.text[:safe])
        return self._emit(max(safe, self.sent)), False

    def flush(self) -> str:
        """Everything not yet sent (at the end, an incomplete character stays as U+FFFD)."""
        return self._emit(len(self.text))

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _emit(self, upto: int) -> str:
        delta = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return delta
