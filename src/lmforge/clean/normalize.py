"""Text normalization for both languages, and removal of boilerplate lines by per-language patterns.

`Normalize` repairs what collection breaks (mojibake, stray controls and zero-width characters,
mixed line endings) and folds width variants with NFKC while keeping Chinese full-width
punctuation, which NFKC would turn into ASCII. The classical-NLP options (lower-casing,
stop-word removal, Traditional to Simplified) change the text a language model should learn
from, so they are off by default.

`BoilerplateLines` drops whole lines such as cookie banners, "share this" rows and footer menus,
matched by the pattern lists in `data/boilerplate_<lang>.txt`.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from importlib import resources
from typing import Any, Literal

from pydantic import Field, field_validator

from lmforge.config import StrictModel, valid_regex
from lmforge.errors import ConfigError, require
from lmforge.lang import HAN, cut, is_cjk
from lmforge.pipeline.stage import Mapper
from lmforge.records import Record

log = logging.getLogger(__name__)

# Full-width punctuation is the norm in Chinese text; NFKC would turn "，" into "," and the
# ellipsis "……" into "......". Full-width digits, Latin letters and the symbols that go with
# numbers (９．８％, ＋, －, ／) are still folded to ASCII, as in "GDP增长9.8%".
_CJK_PUNCT = "！＂＇（），：；？［］｛｝～…‥"
_CJK_PUNCT_SPLIT = re.compile(f"([{re.escape(_CJK_PUNCT)}]+)")
# Every way a line can end, mapped to "\n" before controls are removed (which would glue lines).
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# C0/C1 controls except tab and newline; soft hyphen; zero-width space, word joiner and BOM;
# bidi marks and embeddings; invisible math operators; interlinear annotation marks.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufff9-\ufffb]"
)
# ZWJ and ZWNJ shape Persian, Indic and emoji sequences; after ASCII or CJK (or at the start)
# they are only noise. The negated class in a negative lookbehind reads "preceded by one of these".
_JOINERS = re.compile("(?<![^\x00-\x7f\u2e80-\u9fff\uac00-\ud7af\uff00-\uffef])[\u200c\u200d]")
_CR = re.compile("\r\n?")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")
# ASCII punctuation touching a Chinese character, for cjk_punctuation="fullwidth". A period only
# counts when it ends a clause (end, space or Han after it), so "3.5" and "中国.com" stay.
_HALF_PUNCT = re.compile(f"(?<=[{HAN}])[,!?:;]|[,!?:;](?=[{HAN}])|(?<=[{HAN}])\\.(?=$|\\s|[{HAN}])")
_FULL = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；", ".": "。"}
_WORD = re.compile(r"\w+(?:['’]\w+)*")


class NormalizeConfig(StrictModel):
    form: Literal["NFKC", "NFC", "none"] = "NFKC"
    cjk_punctuation: Literal["keep", "normalize", "fullwidth"] = Field(
        "keep",
        description="keep full-width Chinese punctuation (，。！) when applying NFKC; 'normalize' folds it to "
        "ASCII; 'fullwidth' also turns ASCII , . ! ? : ; touching Chinese characters into full-width",
    )
    collapse_whitespace: bool = True
    remove_invisible: bool = True
    fix_mojibake: bool = Field(True, description="repair text decoded with the wrong codec (ftfy), e.g. 'Ã©' -> 'é'")
    line_breaks: bool = Field(True, description="turn \\r\\n, \\r, form feed, NEL, U+2028/2029 into \\n")
    chinese: Literal["keep", "simplified", "traditional"] = Field(
        "keep", description="convert Chinese script with OpenCC (t2s / s2t); needs opencc-purepy"
    )
    lowercase: bool = Field(False, description="lower-case everything (classical NLP; off for LM data)")
    remove_stopwords: bool = Field(False, description="drop function words (classical NLP; off for LM data)")
    extra_stopwords: list[str] = Field(default_factory=list, description="more words to drop with remove_stopwords")


@functools.lru_cache(maxsize=1)
def _ftfy():
    """ftfy's fixer with the steps that overlap ours turned off.

    Width, ligatures and normalization are NFKC's job here (ftfy's width fix would fold Chinese
    punctuation), curly quotes are real punctuation in both languages, and HTML entities are
    StripHtml's. What is left is what only ftfy can do: undo wrong-codec decoding.
    """
    ftfy = require("ftfy", "clean")
    config = ftfy.TextFixerConfig(
        unescape_html=False, uncurl_quotes=False, fix_character_width=False, fix_latin_ligatures=False,
        fix_line_breaks=False, remove_control_chars=False, normalization=None, explain=False,
    )
    return functools.partial(ftfy.fix_text, config=config)


@functools.lru_cache(maxsize=2)
def opencc_converter(direction: str):
    """An OpenCC converter ('t2s' or 's2t'), built once per process.

    opencc-purepy is used rather than the `opencc` C++ binding: it needs no compiler, loads in
    ~40 ms and converts ~5 million characters per second, which is far from the bottleneck.
    """
    return require("opencc_purepy", "clean").OpenCC(direction)


@functools.cache
def data_lines(name: str) -> tuple[str, ...]:
    """Non-empty, non-comment lines of a file in lmforge/clean/data/."""
    text = resources.files("lmforge.clean").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#"))


@functools.lru_cache(maxsize=1)
def default_stopwords() -> frozenset[str]:
    return frozenset(data_lines("stopwords_en.txt") + data_lines("stopwords_zh.txt"))


class Normalize(Mapper):
    """Unicode and whitespace normalization that keeps Chinese punctuation intact."""

    name = "normalize"
    Config = NormalizeConfig

    def __init__(self, config: NormalizeConfig | dict | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        if cfg.chinese != "keep":
            opencc_converter("t2s" if cfg.chinese == "simplified" else "s2t")  # fail now if it is missing
        self._stopwords = default_stopwords() | {w.lower() for w in cfg.extra_stopwords}

    def apply(self, record: Record) -> Record:
        record.text = self.normalize(record.text, record.lang or None)
        return record

    def normalize(self, text: str, lang: str | None = None) -> str:
        """Normalize one text; `lang` only guides word segmentation for stop-word removal."""
        cfg = self.config
        ascii_only = text.isascii()
        # Mojibake first: its characters include C1 controls that the next steps would delete.
        if cfg.fix_mojibake and not ascii_only:
            text = _ftfy()(text)
        if cfg.line_breaks:
            text = _LINE_BREAKS.sub("\n", text)
        if cfg.remove_invisible:
            text = _INVISIBLE.sub("", text)
            if not ascii_only:
                text = _JOINERS.sub("", text)
        if cfg.form != "none" and not ascii_only:
            text = self._unicode(text, cfg.form)
        if not ascii_only:
            text = self._chinese(text)
        if cfg.lowercase:
            text = text.lower()
        if cfg.remove_stopwords:
            text = self._drop_stopwords(text, lang)
        if cfg.collapse_whitespace:
            text = _CR.sub("\n", text)
            text = _SPACES.sub(" ", text)
            text = "\n".join(line.strip() for line in text.split("\n"))
            text = _BLANK_LINES.sub("\n\n", text).strip()
        return text

    def _unicode(self, text: str, form: str) -> str:
        if form == "NFKC" and self.config.cjk_punctuation != "normalize":
            parts = _CJK_PUNCT_SPLIT.split(text)
            # odd indices are the protected punctuation runs captured by the split
            return "".join(p if i % 2 else unicodedata.normalize(form, p) for i, p in enumerate(parts))
        return unicodedata.normalize(form, text)

    def _chinese(self, text: str) -> str:
        cfg = self.config
        if cfg.chinese != "keep":
            text = opencc_converter("t2s" if cfg.chinese == "simplified" else "s2t").convert(text)
        if cfg.cjk_punctuation == "fullwidth":
            text = _HALF_PUNCT.sub(lambda m: _FULL[m.group()], text)
        return text

    def _drop_stopwords(self, text: str, lang: str | None) -> str:
        """Remove stop words but keep everything else (punctuation, numbers, line breaks) in place.

        Chinese has no spaces to find words by, so Chinese-like text is cut by jieba; its tokens
        include the English words and the punctuation, so mixed text loses both languages' stop words.
        """
        stop = self._stopwords
        if is_cjk(text, lang):
            return "".join(t for t in cut(text) if t.lower() not in stop)
        return _WORD.sub(lambda m: "" if m.group().lower() in stop else m.group(), text)


# --------------------------------------------------------------------------- boilerplate lines


class BoilerplateLinesConfig(StrictModel):
    languages: list[str] = Field(
        default_factory=lambda: ["en", "zh"],
        description="pattern lists to use (data/boilerplate_<lang>.txt); web pages mix languages, so both",
    )
    extra_patterns: list[str] = Field(
        default_factory=list, description="more regexes, each matched against a whole line (kind 'custom')"
    )
    max_line_chars: int = Field(300, gt=0, description="longer lines are content and never removed")

    @field_validator("extra_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return [valid_regex(p) for p in patterns]


def boilerplate_patterns(lang: str) -> list[tuple[str, str]]:
    """(kind, regex) pairs of one language's list."""
    pairs = []
    for line in data_lines(f"boilerplate_{lang}.txt"):
        kind, sep, pattern = line.partition(": ")
        if not sep:
            raise ValueError(f"boilerplate_{lang}.txt: expected 'kind: regex', got {line!r}")
        pairs.append((kind.strip(), pattern))
    return pairs


class BoilerplateLines(Mapper):
    """Removes lines that are page furniture rather than content; counts removals by kind in meta.

    All patterns are joined into one regex so that the common case, a line that matches none,
    costs a single match; only a matching line is checked pattern by pattern to name its kind.
    """

    name = "boilerplate_lines"
    Config = BoilerplateLinesConfig

    def __init__(self, config: BoilerplateLinesConfig | dict | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        pairs: list[tuple[str, str]] = []
        for lang in self.config.languages:
            try:
                pairs += boilerplate_patterns(lang)
            except FileNotFoundError:
                raise ConfigError(f"boilerplate_lines.languages: no pattern list for {lang!r}") from None
        pairs += [("custom", p) for p in self.config.extra_patterns]
        flags = re.IGNORECASE
        self._kinds = [(kind, re.compile(f"(?:{p})", flags)) for kind, p in pairs]
        self._any = re.compile("|".join(f"(?:{p})" for _, p in pairs), flags) if pairs else None

    def apply(self, record: Record) -> Record:
        text, kinds = self.clean(record.text)
        if kinds:
            record.text = text
            record.meta[self.name] = {"removed": sum(kinds.values()), "kinds": kinds}
            for kind, n in kinds.items():
                self.count(kind, n)
        return record

    def clean(self, text: str) -> tuple[str, dict[str, int]]:
        """The text without boilerplate lines, and how many lines of each kind were removed."""
        kinds: dict[str, int] = {}
        if self._any is None:
            return text, kinds
        kept = []
        for line in text.split("\n"):
            kind = self.kind(line)
            if kind is None:
                kept.append(line)
            else:
                kinds[kind] = kinds.get(kind, 0) + 1
        return ("\n".join(kept) if kinds else text), kinds

    def kind(self, line: str) -> str | None:
        """The kind of boilerplate this line is, or None for content."""
        stripped = line.strip()
        if not stripped or len(stripped) > self.config.max_line_chars or not self._any.fullmatch(stripped):
            return None
        return next((kind for kind, pattern in self._kinds if pattern.fullmatch(stripped)), "custom")
