"""PII masking of prompts and outputs with the cleaning stage's redactor (`clean.pii.redact`).

Streaming output is masked in pieces that end at a line break or the end of a sentence
(。！？!?): phone numbers, e-mails, ID and card numbers and IPs can hold spaces but not those, so
a number is never sent in halves that the redactor would each fail to recognise. A piece with no
such boundary is held back up to `hold` characters, then cut at its last whitespace.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"[\n。！？!?]")
_SPACE = re.compile(r"\s")


class Redactor:
    def __init__(self) -> None:
        from lmforge.clean.pii import PiiConfig

        self.config = PiiConfig()

    def text(self, text: str) -> str:
        from lmforge.clean.pii import redact

        return redact(text, self.config)[0]

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)


class StreamRedactor:
    def __init__(self, redactor: Redactor, hold: int = 256) -> None:
        self.redactor = redactor
        self.hold = hold
        self.pending = ""

    def feed(self, delta: str, final: bool = False) -> str:
        self.pending += delta
        if final:
            out, self.pending = self.pending, ""
            return self.redactor.text(out)
        cut = max((m.end() for m in _BOUNDARY.finditer(self.pending)), default=0)
        if cut == 0 and len(self.pending) > self.hold:
            cut = max((m.end() for m in _SPACE.finditer(self.pending)), default=len(self.pending))
        if cut == 0:
            return ""
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return self.redactor.text(out)
