"""Language-aware text units shared by the cleaning stages: words, sentences, CJK detection.

Chinese has no spaces, so "words" there come from jieba (loaded once per process, lazily);
other languages split on Unicode word boundaries. Filters that count words, stop words or
n-grams all go through `words()` so English and Chinese are measured the same way.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Sentence-final punctuation in both languages (ASCII, full-width and CJK forms).
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "…", "」", "』", "；", ";", "．", "｡")
_CJK_RANGES = (
    ("\u4e00", "\u9fff"), ("\u3400", "\u4dbf"), ("\uf900", "\ufaff"),
    ("\u3040", "\u30ff"),  # kana: treated like CJK for segmentation and character n-grams
)
_WORD = re.compile(r"\w+(?:['’\-]\w+)*", re.UNICODE)
_SENTENCE = re.compile(r"[^。！？!?.…]+(?:[。！？!?…]+|\.(?=\s|$)|$)")


def is_cjk(ch: str) -> bool:
    return any(lo <= ch <= hi for lo, hi in _CJK_RANGES) or "\U00020000" <= ch <= "\U0003134f"


def cjk_ratio(text: str) -> float:
    """Share of non-space characters that are CJK; decides how a text is segmented."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if is_cjk(c)) / len(chars)


def is_chinese_like(text: str, lang: str | None = None) -> bool:
    if lang:
        return lang.split("-")[0].lower() in ("zh", "ja", "yue", "wuu")
    return cjk_ratio(text[:2000]) > 0.3


@functools.lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def words(text: str, lang: str | None = None) -> list[str]:
    """Word tokens without punctuation or spaces: jieba for Chinese-like text, regex otherwise."""
    if is_chinese_like(text, lang):
        return [w for w in _jieba().lcut(text) if _WORD.fullmatch(w)]
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Sentences split on terminal punctuation of both languages (a good-enough count for filters)."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def char_ngrams(text: str, n: int) -> Iterator[str]:
    compact = "".join(text.split())
    return (compact[i : i + n] for i in range(len(compact) - n + 1))
