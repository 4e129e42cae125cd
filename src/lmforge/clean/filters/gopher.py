"""Gopher's heuristic filters (Rae et al. 2021, table A1): repetition and quality.

The semantics follow the reference implementation the published numbers come from
(datatrove's GopherRepetitionFilter and GopherQualityFilter): fractions are of the whole text's
characters, the first copy of a line or n-gram is not a duplicate, duplicate n-grams are
counted greedily without overlap, and "words" for the quality ratios include punctuation tokens.

Chinese-like documents are measured in jieba words (punctuation excluded) and use Chinese stop
words; n-grams are jieba-word n-grams, so a repeated 5-gram is a repeated phrase of about eight
characters, and every fraction is still of characters, which keeps the English thresholds
meaningful. Mean word length has its own `*_zh` bounds (jieba words average under two characters).
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import compress
from typing import Annotated

from pydantic import Field, model_validator

from lmforge.clean.filters.common import (
    analyze,
    builtin_list,
    count_without_letter,
    duplicates,
    symbol_tokens,
)
from lmforge.config import StrictModel
from lmforge.pipeline.stage import KEEP, Drop, Filter, Keep
from lmforge.records import Record

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NgramSize = Annotated[int, Field(ge=1, le=50)]

_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")


class GopherRepetitionConfig(StrictModel):
    """Thresholds from Gopher's table A1; `None` switches a check off."""

    dup_line_frac: Fraction | None = Field(0.30, description="max share of lines that repeat an earlier line")
    dup_para_frac: Fraction | None = Field(0.30, description="max share of paragraphs that repeat one")
    dup_line_char_frac: Fraction | None = Field(0.20, description="max share of characters in repeated lines")
    dup_para_char_frac: Fraction | None = Field(0.20, description="max share of characters in repeated paragraphs")
    top_ngram_char_frac: dict[NgramSize, Fraction] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> max share of characters covered by the most frequent n-gram (replaces the whole table)",
    )
    dup_ngram_char_frac: dict[NgramSize, Fraction] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max share of characters in repeated n-grams (replaces the whole table)",
    )


class GopherRepetition(Filter):
    """Drops documents that repeat themselves: boilerplate-heavy pages, spam, generated lists."""

    name = "gopher_repetition"
    Config = GopherRepetitionConfig

    def __init__(self, config: StrictModel | dict | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._top = sorted(self.config.top_ngram_char_frac.items())
        self._dup = sorted(self.config.dup_ngram_char_frac.items())

    def decide(self, record: Record) -> Keep | Drop:
        cfg = self.config
        text = record.text
        if not text:
            return Drop("gopher_rep_empty")
        size = len(text)

        paragraphs = _PARAGRAPH_BREAK.split(text.strip())
        repeats, chars = duplicates(paragraphs)
        if cfg.dup_para_frac is not None and repeats / len(paragraphs) > cfg.dup_para_frac:
            return Drop("gopher_rep_dup_para_frac", repeats / len(paragraphs))
        if cfg.dup_para_char_frac is not None and chars / size > cfg.dup_para_char_frac:
            return Drop("gopher_rep_dup_para_char_frac", chars / size)

        lines = _LINE_BREAKS.split(text)
        repeats, chars = duplicates(lines)
        if cfg.dup_line_frac is not None and repeats / len(lines) > cfg.dup_line_frac:
            return Drop("gopher_rep_dup_line_frac", repeats / len(lines))
        if cfg.dup_line_char_frac is not None and chars / size > cfg.dup_line_char_frac:
            return Drop("gopher_rep_dup_line_char_frac", chars / size)

        if not (self._top or self._dup):
            return KEEP
        index = NgramIndex(analyze(record).tokens)
        for n, limit in self._top:
            share = index.top_chars(n) / size
            if share > limit:
                return Drop(f"gopher_rep_top_{n}_gram", share)
        for n, limit in self._dup:
            share = index.repeated_chars(n) / size
            if share > limit:
                return Drop(f"gopher_rep_dup_{n}_gram", share)
        return KEEP


class NgramIndex:
    """The repeated n-grams of a token list, for growing n, each size derived from the one below.

    An n-gram can only occur twice where its first n-1 tokens do too, so the positions of
    repeated (n+1)-grams are found among those of repeated n-grams. Only the smallest size looks
    at every position; on ordinary text the larger ones look at a few dozen.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        # n -> (candidate positions in order, their n-grams, counts over those candidates)
        self._levels: dict[int, tuple[list[int], list[tuple[str, ...]], Counter]] = {}

    def _level(self, n: int) -> tuple[list[int], list[tuple[str, ...]], Counter]:
        level = self._levels.get(n)
        if level is not None:
            return level
        tokens = self.tokens
        below = max((m for m in self._levels if m < n), default=0)
        if below == 0:
            grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))  # shifted copies end early
            positions: list[int] = list(range(len(grams)))
        else:
            last = len(tokens) - n
            positions = [i for i in self._repeated_positions(below) if i <= last]
            grams = [tuple(tokens[i : i + n]) for i in positions]
        level = self._levels[n] = (positions, grams, Counter(grams))
        return level

    def _repeated_positions(self, n: int) -> list[int]:
        positions, grams, counts = self._level(n)
        return list(compress(positions, map((1).__lt__, map(counts.__getitem__, grams))))

    def top_chars(self, n: int) -> int:
        """Characters (tokens joined by spaces) times occurrences of the most frequent n-gram, ties to the first."""
        if len(self.tokens) < n:
            return 0
        _, _, counts = self._level(n)
        if counts:
            gram, count = counts.most_common(1)[0]
            if count > 1:
                return (sum(map(len, gram)) + n - 1) * count
        # every n-gram is unique: the first one in the text wins the tie
        return sum(map(len, self.tokens[:n])) + n - 1

    def repeated_chars(self, n: int) -> int:
        """Characters (tokens joined without spaces) in n-grams that repeat an earlier one.

        Scanning left to right, a repeated n-gram is counted and the scan jumps past it, so
        overlapping repeats are not counted twice. N-grams that occur once are never a repeat
        and never move the scan, so only the positions of repeated n-grams are visited.
        """
        if len(self.tokens) < n:
            return 0
        positions, grams, counts = self._level(n)
        seen: set[tuple[str, ...]] = set()
        repeated = 0
        resume = 0  # positions before this are inside the last counted repeat
        for i, gram in zip(positions, grams, strict=True):
            if i < resume or counts[gram] == 1:
                continue
            if gram in seen:
                repeated += sum(map(len, gram))
                resume = i + n
            else:
                seen.add(gram)
        return repeated


class GopherQualityConfig(StrictModel):
    """Thresholds from Gopher's quality rules; `None` switches a check off."""

    min_doc_words: int | None = Field(50, ge=0, description="fewest words (punctuation tokens not counted)")
    max_doc_words: int | None = Field(100_000, ge=1, description="most words")
    min_avg_word_length: float | None = Field(3.0, ge=0, description="shortest mean word length (characters)")
    max_avg_word_length: float | None = Field(10.0, ge=0, description="longest mean word length")
    min_avg_word_length_zh: float | None = Field(1.2, ge=0, description="shortest mean jieba word length")
    max_avg_word_length_zh: float | None = Field(4.0, ge=0, description="longest mean jieba word length")
    max_symbol_word_ratio: float | None = Field(0.1, ge=0, description="most '#' or ellipses per word")
    max_bullet_lines_ratio: Fraction | None = Field(0.9, description="max share of lines starting with a bullet")
    max_ellipsis_lines_ratio: Fraction | None = Field(0.3, description="max share of lines ending with an ellipsis")
    min_alpha_words_ratio: Fraction | None = Field(0.8, description="min share of words with a letter")
    min_stop_words: int | None = Field(2, ge=0, description="fewest distinct stop words")
    stop_words: list[str] | None = Field(None, description="English stop words; default Gopher's eight")
    stop_words_zh: list[str] | None = Field(None, description="Chinese stop words; default the shipped list")
    bullets: list[str] = Field(default_factory=lambda: ["•", "-", "●", "▪", "◦"], min_length=1,
                               description="line starts that make a bullet line (Gopher's • and -, plus CJK-web ones)")

    @model_validator(mode="after")
    def _ordered(self) -> GopherQualityConfig:
        for low, high in (("min_doc_words", "max_doc_words"), ("min_avg_word_length", "max_avg_word_length"),
                          ("min_avg_word_length_zh", "max_avg_word_length_zh")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) must be <= {high} ({hi})")
        return self


class GopherQuality(Filter):
    """Drops documents that do not read like prose: too short or long, odd words, lists, no stop words."""

    name = "gopher_quality"
    Config = GopherQualityConfig

    def __init__(self, config: StrictModel | dict | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        self._stop = frozenset(cfg.stop_words if cfg.stop_words is not None else builtin_list("stop_words/en.txt"))
        self._stop_zh = frozenset(
            cfg.stop_words_zh if cfg.stop_words_zh is not None else builtin_list("stop_words/zh.txt")
        )
        self._bullets = tuple(cfg.bullets)

    def decide(self, record: Record) -> Keep | Drop:
        cfg = self.config
        doc = analyze(record)
        text, tokens = doc.text, doc.tokens
        n_tokens = len(tokens)
        joined = "\n".join(tokens)  # lets regexes classify every token in one pass
        symbols = [] if doc.chinese else symbol_tokens(joined)  # jieba words hold no punctuation
        n_words = n_tokens - len(symbols)

        if cfg.min_doc_words is not None and n_words < cfg.min_doc_words:
            return Drop("gopher_short_doc", n_words)
        if cfg.max_doc_words is not None and n_words > cfg.max_doc_words:
            return Drop("gopher_long_doc", n_words)
        if n_words == 0:  # only reachable with min_doc_words switched off
            return Drop("gopher_short_doc")

        mean = (len(joined) - (n_tokens - 1) - sum(map(len, symbols))) / n_words
        low, high = ((cfg.min_avg_word_length_zh, cfg.max_avg_word_length_zh) if doc.chinese
                     else (cfg.min_avg_word_length, cfg.max_avg_word_length))
        if low is not None and mean < low:
            return Drop("gopher_below_avg_word_length", mean)
        if high is not None and mean > high:
            return Drop("gopher_above_avg_word_length", mean)

        if cfg.max_symbol_word_ratio is not None:
            ratio = text.count("#") / n_tokens
            if ratio > cfg.max_symbol_word_ratio:
                return Drop("gopher_too_many_hashes", ratio)
            ellipses = text.count("...") + text.count("…")
            if doc.chinese:
                ellipses -= text.count("……")  # one Chinese ellipsis is two "…" characters
            ratio = ellipses / n_tokens
            if ratio > cfg.max_symbol_word_ratio:
                return Drop("gopher_too_many_ellipsis", ratio)

        lines = text.splitlines()
        if lines and cfg.max_bullet_lines_ratio is not None:
            ratio = sum(1 for s in lines if s.lstrip().startswith(self._bullets)) / len(lines)
            if ratio > cfg.max_bullet_lines_ratio:
                return Drop("gopher_too_many_bullets", ratio)
        if lines and cfg.max_ellipsis_lines_ratio is not None:
            ratio = sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines)
            if ratio > cfg.max_ellipsis_lines_ratio:
                return Drop("gopher_too_many_end_ellipsis", ratio)

        if cfg.min_alpha_words_ratio is not None:
            ratio = 1 - count_without_letter(joined) / n_tokens
            if ratio < cfg.min_alpha_words_ratio:
                return Drop("gopher_below_alpha_threshold", ratio)

        if cfg.min_stop_words is not None:
            found = len((self._stop_zh if doc.chinese else self._stop).intersection(tokens))
            if found < cfg.min_stop_words:
                return Drop("gopher_few_stop_words", found)
        return KEEP
