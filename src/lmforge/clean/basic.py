"""Basic cleaning stages: Unicode normalization, HTML tag stripping, length limits.

These are deliberately simple and fast; main-content extraction, language ID and the
quality filters are separate stages.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Literal

from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.pipeline.stage import KEEP, Drop, Filter, Keep, Mapper
from lmforge.records import Record

# Full-width punctuation is the norm in Chinese text; NFKC would turn "，" into ",".
# Full-width digits and Latin letters (０-９, Ａ-Ｚ, ａ-ｚ) are still folded to ASCII.
_CJK_PUNCT = (
    "".join(chr(c) for c in range(0xFF01, 0xFF10))
    + "".join(chr(c) for c in range(0xFF1A, 0xFF21))
    + "".join(chr(c) for c in range(0xFF3B, 0xFF41))
    + "".join(chr(c) for c in range(0xFF5B, 0xFF5F))
)
_CJK_PUNCT_SPLIT = re.compile(f"([{re.escape(_CJK_PUNCT)}]+)")
# C0/C1 controls except tab/newline, plus zero-width and BOM characters.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


class NormalizeConfig(StrictModel):
    form: Literal["NFKC", "NFC", "none"] = "NFKC"
    cjk_punctuation: Literal["keep", "normalize"] = Field(
        "keep", description="keep full-width Chinese punctuation (，。！) when applying NFKC"
    )
    collapse_whitespace: bool = True
    remove_invisible: bool = True


class Normalize(Mapper):
    """Unicode normalization and whitespace cleanup that keeps Chinese punctuation intact."""

    name = "normalize"
    Config = NormalizeConfig

    def apply(self, record: Record) -> Record:
        record.text = self.normalize(record.text)
        return record

    def normalize(self, text: str) -> str:
        cfg = self.config
        if cfg.remove_invisible:
            text = _INVISIBLE.sub("", text)
        if cfg.form != "none" and not text.isascii():
            text = self._unicode(text, cfg.form)
        if cfg.collapse_whitespace:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            text = _SPACES.sub(" ", text)
            text = "\n".join(line.strip() for line in text.split("\n"))
            text = _BLANK_LINES.sub("\n\n", text).strip()
        return text

    def _unicode(self, text: str, form: str) -> str:
        if form == "NFKC" and self.config.cjk_punctuation == "keep":
            parts = _CJK_PUNCT_SPLIT.split(text)
            # odd indices are the protected punctuation runs captured by the split
            return "".join(p if i % 2 else unicodedata.normalize(form, p) for i, p in enumerate(parts))
        return unicodedata.normalize(form, text)


_SCRIPT_STYLE = re.compile(r"<(script|style|noscript)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BLOCK_TAG = re.compile(r"</?(p|div|br|li|ul|ol|h[1-6]|tr|table|section|article|blockquote|pre)\b[^>]*>", re.I)
_TAG = re.compile(r"</?[A-Za-z!?][^<>]{0,2000}>")


class StripHtmlConfig(StrictModel):
    only_if_html: bool = Field(True, description="leave text without any '<tag>' untouched")


class StripHtml(Mapper):
    """Removes markup, scripts and comments and unescapes entities, keeping block breaks as newlines."""

    name = "strip_html"
    Config = StripHtmlConfig

    def apply(self, record: Record) -> Record:
        text = record.text
        if "<" in text or not self.config.only_if_html:
            text = _SCRIPT_STYLE.sub(" ", text)
            text = _COMMENT.sub(" ", text)
            text = _BLOCK_TAG.sub("\n", text)
            text = _TAG.sub("", text)
        if "&" in text:
            text = html.unescape(text)
        record.text = text
        return record


class LengthFilterConfig(StrictModel):
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(1_000_000, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LengthFilterConfig:
        if self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars})")
        return self


class LengthFilter(Filter):
    """Drops documents that are empty, too short to teach anything, or pathologically long."""

    name = "length_filter"
    Config = LengthFilterConfig

    def decide(self, record: Record) -> Keep | Drop:
        n = len(record.text.strip())
        if n == 0:
            return Drop("empty")
        if n < self.config.min_chars:
            return Drop("too_short")
        if n > self.config.max_chars:
            return Drop("too_long")
        return KEEP
