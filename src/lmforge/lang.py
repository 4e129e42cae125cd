"""Language basics for Chinese and English text: scripts, the one "is it Chinese?" rule, jieba, sentences.

Every stage that treats Chinese differently (cleaning, dedup, augmentation, metrics, MLM
masking, tokenizer reports) asks here, so a document is Chinese to all of them or to none.

The rule (`cjk_lang`): a `lang` hint wins when there is one; otherwise the first 2,000
characters decide. A text is CJK when Han and kana characters are more than 0.3 of its
non-space characters (counting characters, so punctuation and digits dilute it but spaces do
not), and Japanese rather than Chinese when kana are at least a tenth of those CJK
characters (Japanese prose is about half kana; Chinese has none). `is_cjk` (Chinese or
Japanese: no spaces between words, so words come from jieba and n-grams from characters) is
what segmenting callers use; `is_chinese` excludes Japanese.

jieba costs about a second to load, so it loads lazily, once per process; a forked child
reuses the parent's dictionary but gets fresh locks, since a lock held by another thread at
fork time would never be released in the child.

Sentences end at 。！？ (and a closing quote or bracket after them), at ! ? … before a space,
a line end or a CJK character, at a line break, and at a period before a space, except inside
numbers ("3.14", "1,000.5", "v2.0"), after abbreviations ("U.S.", "e.g.", "Dr.") and before a
lowercase word.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any, NamedTuple

from lmforge.errors import require

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- character classes

# Code-point ranges, inclusive. Han: 〇, CJK Extension A, the URO, compatibility ideographs,
# Extensions B-G. Kana: hiragana, katakana without U+30FB (the middle dot Chinese also uses
# between foreign names), phonetic extensions, half-width katakana. Hangul: jamo, compatibility
# jamo, syllables.
HAN_RANGES = ((0x3007, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
KANA_RANGES = ((0x3040, 0x309F), (0x30A0, 0x30FA), (0x30FC, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9D))
HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
CJK_RANGES = HAN_RANGES + KANA_RANGES  # the scripts written without spaces between words


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    """The inside of a regex character class ("a-z" style) for code-point ranges."""
    return "".join(chr(lo) if lo == hi else f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges)


# Strings to put inside [...] when a pattern elsewhere needs one of these classes.
HAN = _class(HAN_RANGES)
KANA = _class(KANA_RANGES)
HANGUL = _class(HANGUL_RANGES)
CJK = HAN + KANA

HAN_RE = re.compile(f"[{HAN}]")
KANA_RE = re.compile(f"[{KANA}]")
HANGUL_RE = re.compile(f"[{HANGUL}]")
CJK_RE = re.compile(f"[{CJK}]")
_SPACE_RE = re.compile(r"\s")

SAMPLE = 2000  # characters of a text that decide its language
CJK_SHARE = 0.3  # a text is CJK above this share of CJK characters among its non-space ones
KANA_SHARE = 0.1  # ... and Japanese at or above this share of kana among its CJK characters
ZH_CODES = frozenset(("zh", "yue", "wuu"))


class ScriptCounts(NamedTuple):
    """Characters of a text by script; counts of two texts add up to those of their concatenation."""

    han: int
    kana: int
    hangul: int
    nonspace: int

    def __add__(self, other: object) -> ScriptCounts:  # type: ignore[override]
        if not isinstance(other, ScriptCounts):
            return NotImplemented
        return ScriptCounts(*(a + b for a, b in zip(self, other, strict=True)))

    @property
    def cjk(self) -> int:
        return self.han + self.kana

    @property
    def cjk_share(self) -> float:
        return self.cjk / self.nonspace if self.nonspace else 0.0


def script_counts(text: str) -> ScriptCounts:
    """Han, kana, hangul and non-space characters of all of `text` (regex counting: fast on long text)."""
    return ScriptCounts(
        han=len(HAN_RE.findall(text)),
        kana=len(KANA_RE.findall(text)),
        hangul=len(HANGUL_RE.findall(text)),
        nonspace=len(text) - len(_SPACE_RE.findall(text)),
    )


def cjk_share(text: str) -> float:
    """Han and kana characters over non-space characters (0 for a text of spaces only)."""
    return script_counts(text).cjk_share


def has_han(text: str) -> bool:
    return HAN_RE.search(text) is not None


# --------------------------------------------------------------------------- the rule


def _base(lang: str) -> str:
    return lang.replace("_", "-").split("-")[0].lower()


def cjk_lang(text: str, lang: str | None = None) -> str | None:
    """'zh', 'ja' or None: the one rule (see the module docstring); a non-empty `lang` decides alone."""
    if lang:
        base = _base(lang)
        return "zh" if base in ZH_CODES else "ja" if base == "ja" else None
    sample = text[:SAMPLE]
    nonspace = len(sample) - len(_SPACE_RE.findall(sample))
    cjk = len(CJK_RE.findall(sample))  # one pass for the common, non-CJK case: this runs per document
    if not nonspace or cjk / nonspace <= CJK_SHARE:
        return None
    return "ja" if len(KANA_RE.findall(sample)) >= KANA_SHARE * cjk else "zh"


def is_cjk(text: str, lang: str | None = None) -> bool:
    """Chinese or Japanese: words come from jieba, n-grams from characters."""
    return cjk_lang(text, lang) is not None


def is_chinese(text: str, lang: str | None = None) -> bool:
    return cjk_lang(text, lang) == "zh"


# --------------------------------------------------------------------------- jieba

_jieba_lock = threading.Lock()
_jieba_pid: int | None = None
jieba_loads = 0  # dictionaries this process loaded itself (a forked child inherits its parent's)


def _after_fork() -> None:
    """Fresh locks in a forked child: one another thread held at fork time would never be released."""
    global _jieba_lock
    _jieba_lock = threading.Lock()
    jieba = sys.modules.get("jieba")
    if jieba is not None:
        jieba.dt.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def jieba_tokenizer() -> Any:
    """jieba's default tokenizer (`jieba.dt`) with its dictionary loaded, quietly, once per process."""
    global _jieba_pid, jieba_loads
    jieba = require("jieba", "clean")
    pid = os.getpid()
    if _jieba_pid != pid:
        with _jieba_lock:
            if _jieba_pid != pid:
                jieba.setLogLevel(logging.WARNING)
                if not jieba.dt.initialized:
                    jieba.dt.initialize()
                    jieba_loads += 1
                _jieba_pid = pid
    return jieba.dt


def cut(text: str, hmm: bool = True) -> list[str]:
    """jieba's segmentation of `text`, spaces and punctuation included; `hmm` finds words outside the dictionary."""
    return jieba_tokenizer().lcut(text, HMM=hmm)


def word_spans(text: str, hmm: bool = True) -> list[tuple[str, int, int]]:
    """(word, start, end) for each jieba word of `text`, covering every character."""
    return list(jieba_tokenizer().tokenize(text, HMM=hmm))


_pos_tags: dict[str, str] | None = None


def pos_tags() -> dict[str, str]:
    """word -> part-of-speech tag from jieba's dictionary (a lookup: jieba's slow POS tagger never runs)."""
    global _pos_tags
    if _pos_tags is None:
        jieba_tokenizer()
        import jieba.posseg

        _pos_tags = jieba.posseg.dt.word_tag_tab
    return _pos_tags


_WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*")


def words(text: str, lang: str | None = None) -> list[str]:
    """Words without punctuation or spaces: jieba's for CJK text (`is_cjk`), regex words otherwise."""
    if is_cjk(text, lang):
        return [w for w in cut(text) if _WORD_RE.fullmatch(w)]
    return _WORD_RE.findall(text)


# --------------------------------------------------------------------------- sentences

_CLOSERS = "\"'”’」』）)\\]】》〉"
# A run of end marks with the closing quotes and brackets after it, or a line break.
_END_RE = re.compile(rf"([。！？｡]+[。！？｡!?…]*|[!?…]+|\.+)([{_CLOSERS}]*)|\n")
_FULL_STOPS = frozenset("。！？｡")
_ABBREVIATIONS = frozenset((
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "no", "nos", "fig", "figs", "al", "approx",
    "inc", "ltd", "co", "corp", "dept", "est", "govt", "gen", "gov", "sen", "rep", "col", "lt", "sgt", "capt",
    "rev", "mt", "ft", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
))
_INITIALS_RE = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # "e.g", "U.S", "J"
_NEXT_RE = re.compile(r"\s*(\S)")


def _ends_sentence(text: str, m: re.Match[str]) -> bool:
    marks = m.group(1)
    if marks is None:  # a line break
        return True
    if not _FULL_STOPS.isdisjoint(marks):
        return True
    end = m.end()
    nxt = text[end] if end < len(text) else ""
    if nxt and not nxt.isspace() and not CJK_RE.match(nxt):
        return False  # "3.14", "os.path", "Yahoo!News"
    if marks != ".":
        return True
    lo = max(0, m.start() - 20)  # abbreviations are short; a bound keeps long unspaced text linear
    space = max(text.rfind(c, lo, m.start()) for c in " \t\n")
    token = text[space + 1 if space >= 0 else lo : m.start()].lstrip("\"'“‘([")
    if token.lower() in _ABBREVIATIONS or _INITIALS_RE.fullmatch(token):
        return False
    after = _NEXT_RE.match(text, end)
    return not (after and after.group(1).islower())


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end in `text` (the last sentence may run on without one)."""
    return [m.end() for m in _END_RE.finditer(text) if _ends_sentence(text, m)]


def sentences(text: str) -> list[str]:
    """Chinese and English sentences, stripped; joined they hold every non-space character of `text`."""
    out, pos = [], 0
    for end in [*sentence_ends(text), len(text)]:
        piece = text[pos:end].strip()
        if piece:
            out.append(piece)
        pos = end
    return out
