"""C4's cleaning rules (Raffel et al. 2020): remove bad lines, then drop pages left with too little.

Line rules remove the line and keep the page: no terminal punctuation, fewer than three words,
a word longer than 1,000 characters, "javascript", cookie and terms-of-use notices. Page rules
drop the page: "lorem ipsum" or a curly brace in a line that survived the line rules (code and
templates), and fewer than three sentences in what is left. The order and the quirks (rules
apply to stripped lines, citation marks like "[1]" are removed first, a line ending in "..."
has no terminal punctuation) follow the reference implementation (tfds c4_utils, datatrove's
C4QualityFilter), whose `filter_no_terminal_punct` switch is kept because FineWeb turns it off.

Chinese-like documents count words per line with jieba, accept Chinese sentence-final marks
(。！？；… and closing quotes) and also remove Chinese privacy and terms-of-use notices.
"""

from __future__ import annotations

import re

from pydantic import Field

from lmforge.clean.filters.common import analyze, count_sentences
from lmforge.config import StrictModel
from lmforge.lang import words
from lmforge.pipeline.stage import KEEP, Drop, Filter, Keep
from lmforge.records import Record

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")

POLICY_PHRASES = [
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
    "隐私政策", "隐私条款", "使用条款", "服务条款", "用户协议", "使用cookie",
]


class C4Config(StrictModel):
    """C4's rules; the defaults are the published ones (`min_num_sentences` as set for lmforge: 3)."""

    filter_no_terminal_punct: bool = Field(True, description="remove lines not ending in terminal punctuation")
    terminal_punct: list[str] = Field(default_factory=lambda: [".", "?", "!", '"', "'"], min_length=1)
    terminal_punct_zh: list[str] = Field(
        default_factory=lambda: ["。", "！", "？", "；", "…", "”", "’", "」", "』"],
        description="accepted in Chinese-like documents in addition to terminal_punct",
    )
    min_words_per_line: int = Field(3, ge=0, description="remove lines with fewer words (jieba words for Chinese)")
    max_word_length: int | None = Field(1000, ge=1, description="remove lines with a longer word")
    min_num_sentences: int = Field(3, ge=0, description="drop pages with fewer sentences left (0: off)")
    remove_citations: bool = Field(True, description="remove Wikipedia citation marks such as [1] and [edit]")
    filter_lorem_ipsum: bool = Field(True, description="drop pages containing 'lorem ipsum'")
    filter_javascript: bool = Field(True, description="remove lines mentioning javascript")
    filter_curly_bracket: bool = Field(True, description="drop pages containing '{'")
    filter_policy: bool = Field(True, description="remove cookie, privacy and terms-of-use lines")
    policy_phrases: list[str] = Field(default_factory=lambda: list(POLICY_PHRASES))


class C4Filter(Filter):
    """Removes boilerplate lines (the text is rewritten) and drops pages that are not prose.

    A kept record whose lines were removed gets `meta["c4"]["lines_removed"]`.
    """

    name = "c4"
    Config = C4Config

    def __init__(self, config: StrictModel | dict | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        self._end = tuple(cfg.terminal_punct)
        self._end_zh = tuple(cfg.terminal_punct) + tuple(cfg.terminal_punct_zh)
        phrases = sorted({p.lower() for p in cfg.policy_phrases if p}, key=len, reverse=True)
        self._policy = re.compile("|".join(map(re.escape, phrases))) if phrases else None

    def decide(self, record: Record) -> Keep | Drop:
        cfg = self.config
        chinese = analyze(record).chinese
        ends = self._end_zh if chinese else self._end
        lang = record.lang or "zh"
        sentences = 0
        kept: list[str] = []
        seen = 0
        for raw in record.text.splitlines():
            line = raw.strip()
            if not line:
                continue  # blank lines carry nothing and are dropped from the rewritten text
            seen += 1
            # line rules only remove the line, so their order is free: cheap ones first (jieba is not cheap)
            counted = line.split() if not chinese else None  # words as C4 counts them, before citations go
            if cfg.remove_citations and "[" in line:
                line = _CITATION.sub("", line)
            if cfg.filter_no_terminal_punct and (not line.endswith(ends) or line.endswith("...")):
                continue
            line_words = counted if counted is not None else words(raw.strip(), lang)
            if len(line_words) < cfg.min_words_per_line:
                continue
            if (cfg.max_word_length is not None and len(raw) > cfg.max_word_length
                    and max(map(len, line_words), default=0) > cfg.max_word_length):
                continue
            lowered = line.lower()
            if cfg.filter_lorem_ipsum and "lorem ipsum" in lowered:
                return Drop("c4_lorem_ipsum")
            if cfg.filter_javascript and "javascript" in lowered:
                continue
            if cfg.filter_curly_bracket and "{" in line:
                return Drop("c4_curly_bracket")
            if cfg.filter_policy and self._policy and self._policy.search(lowered):
                continue
            if sentences < cfg.min_num_sentences:  # counting stops once there are enough
                sentences += count_sentences(line)
            kept.append(line)
        if sentences < cfg.min_num_sentences:
            return Drop("c4_too_few_sentences", sentences)
        if seen > len(kept):
            record.meta.setdefault(self.name, {})["lines_removed"] = seen - len(kept)
            self.count("lines_removed", seen - len(kept))
        text = "\n".join(kept).strip()
        if text != record.text:  # an unchanged text keeps its object, and so the next filter's cached analysis
            record.text = text
        return KEEP
