"""FineWeb's own quality rules (Penedo et al. 2024), added on top of C4 and Gopher for web text.

They catch what those miss after extraction: pages that are mostly short navigation lines,
pages whose lines rarely end a sentence, pages that repeat lines, and lists (many newlines per
word). Semantics follow the reference implementation (datatrove's FineWebQualityFilter): lines
are the non-blank ones, duplicated-line characters are measured against the text without
newlines, and words for the newline ratio are tokens including punctuation.

Chinese-like documents accept Chinese sentence-final marks, call a line short by its own length
(`short_line_length_zh`: ten Chinese characters say about what thirty English ones do) and
count jieba words.
"""

from __future__ import annotations

from pydantic import Field

from lmforge.clean.filters.common import TERMINAL, TERMINAL_ZH, analyze, duplicates
from lmforge.config import StrictModel
from lmforge.pipeline.stage import KEEP, Drop, Filter, Keep
from lmforge.records import Record


class FineWebConfig(StrictModel):
    """FineWeb's thresholds."""

    line_punct_thr: float = Field(0.12, ge=0, le=1, description="min share of lines ending in terminal punctuation")
    line_punct_exclude_zero: bool = Field(False, description="keep pages where no line ends in punctuation")
    stop_chars: list[str] | None = Field(None, description="terminal punctuation; default the built-in set")
    stop_chars_zh: list[str] = Field(default_factory=lambda: list(TERMINAL_ZH),
                                     description="also accepted in Chinese-like documents")
    short_line_thr: float = Field(0.67, ge=0, le=1, description="max share of short lines")
    short_line_length: int = Field(30, ge=0, description="a line this long or shorter is short (characters)")
    short_line_length_zh: int = Field(10, ge=0, description="the same for Chinese-like documents")
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1, description="max share of characters in repeated lines")
    new_line_ratio: float = Field(0.3, ge=0, description="max newlines per word")


class FineWebFilter(Filter):
    """Drops pages that are navigation, lists or repeated lines rather than prose."""

    name = "fineweb"
    Config = FineWebConfig

    def __init__(self, config: StrictModel | dict | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        self._stops = tuple(cfg.stop_chars) if cfg.stop_chars is not None else TERMINAL
        self._stops_zh = self._stops + tuple(cfg.stop_chars_zh)

    def decide(self, record: Record) -> Keep | Drop:
        cfg = self.config
        text = record.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return Drop("fineweb_empty")
        doc = analyze(record)
        n = len(lines)

        stops = self._stops_zh if doc.chinese else self._stops
        ratio = sum(1 for line in lines if line.endswith(stops)) / n
        if ratio < cfg.line_punct_thr and not (ratio == 0 and cfg.line_punct_exclude_zero):
            return Drop("fineweb_line_punct_ratio", ratio)

        short = cfg.short_line_length_zh if doc.chinese else cfg.short_line_length
        ratio = sum(1 for line in lines if len(line) <= short) / n
        if ratio > cfg.short_line_thr:
            return Drop("fineweb_short_line_ratio", ratio)

        ratio = duplicates(lines)[1] / max(1, len(text) - text.count("\n"))
        if ratio > cfg.char_duplicates_ratio:
            return Drop("fineweb_char_dup_ratio", ratio)

        n_words = len(doc.tokens)
        ratio = text.count("\n") / n_words if n_words else float("inf")
        if ratio > cfg.new_line_ratio:
            return Drop("fineweb_list_ratio", ratio)
        return KEEP
