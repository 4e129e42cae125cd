"""Basic cleaning stages: HTML tag stripping, length limits (and Normalize, re-exported).

These are deliberately simple and fast; main-content extraction, language ID and the
quality filters are separate stages. Normalize lives in `lmforge.clean.normalize`; it is
re-exported here because recipes and code written before the move import it from this module.
"""

from __future__ import annotations

import html
import re

from pydantic import Field, model_validator

from lmforge.clean.normalize import Normalize, NormalizeConfig
from lmforge.config import StrictModel
from lmforge.pipeline.stage import KEEP, Drop, Filter, Keep, Mapper
from lmforge.records import Record

__all__ = ["LengthFilter", "LengthFilterConfig", "Normalize", "NormalizeConfig", "StripHtml", "StripHtmlConfig"]

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
