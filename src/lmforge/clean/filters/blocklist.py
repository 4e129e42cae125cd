"""Block lists: drop pages by where they come from (URL) or by what they say (bad words per language).

Both lists are data files shipped in `lmforge/clean/data/` (small, hand-picked samples) that a
config can extend or replace, because every corpus draws its own line. Matching follows the
reference practice: a listed domain blocks its subdomains too; URL words match whole words of
the URL (RefinedWeb / datatrove's URLFilter); bad words match whole words in languages written
with spaces and substrings in Chinese and Japanese, which have no word boundaries to respect
(C4's bad-words filter).
"""

from __future__ import annotations

import contextlib
import re
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field

from lmforge.clean.filters.common import builtin_list, read_list
from lmforge.config import StrictModel
from lmforge.lang import is_cjk
from lmforge.pipeline.stage import KEEP, Drop, Filter, Keep
from lmforge.records import Record

_URL_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


class UrlBlocklistConfig(StrictModel):
    use_builtin: bool = Field(True, description="start from the shipped lists (domains, URL words, substrings)")
    domains_file: str | None = Field(None, description="extra domains, one a line")
    words_file: str | None = Field(None, description="extra URL words, one a line")
    extra_domains: list[str] = Field(default_factory=list)
    extra_words: list[str] = Field(default_factory=list)
    extra_substrings: list[str] = Field(default_factory=list)
    missing_url: Literal["keep", "drop"] = Field("keep", description="what to do with records without a URL")


class UrlBlocklist(Filter):
    """Drops pages from listed domains (and their subdomains) or with a blocked word in the URL."""

    name = "url_blocklist"
    Config = UrlBlocklistConfig

    def __init__(self, config: StrictModel | dict | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        domains, url_words, substrings = list(cfg.extra_domains), list(cfg.extra_words), list(cfg.extra_substrings)
        if cfg.use_builtin:
            domains += builtin_list("url_blocklist/domains.txt")
            url_words += builtin_list("url_blocklist/words.txt")
            substrings += builtin_list("url_blocklist/substrings.txt")
        if cfg.domains_file:
            domains += read_list(cfg.domains_file, f"{self.name}.domains_file")
        if cfg.words_file:
            url_words += read_list(cfg.words_file, f"{self.name}.words_file")
        self._domains = frozenset(d.lower().strip(".").removeprefix("www.") for d in domains)
        self._words = frozenset(w.lower() for w in url_words)
        self._substrings = tuple(s.lower() for s in substrings)

    def decide(self, record: Record) -> Keep | Drop:
        url = record.url
        if not url:
            return Drop("url_missing") if self.config.missing_url == "drop" else KEEP
        matched = self.match(url)
        if matched is None:
            return KEEP
        record.meta.setdefault(self.name, {})["matched"] = matched
        return Drop("url_blocklist")

    def match(self, url: str) -> str | None:
        """What blocks `url` ("domain:…", "word:…" or "substring:…"), or None."""
        try:
            host = (urlsplit(url if "//" in url else "//" + url).hostname or "").rstrip(".")
        except ValueError:  # a malformed URL (bad port, bad IPv6) still has words worth checking
            host = ""
        labels = host.split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            if candidate in self._domains:
                return f"domain:{candidate}"
        lowered = url.lower()
        hit = self._words.intersection(_URL_WORD_SPLIT.split(lowered))
        if hit:
            return f"word:{min(hit)}"
        if self._substrings:
            decoded = unquote(lowered)
            for s in self._substrings:
                if s in decoded:
                    return f"substring:{s}"
        return None


# Languages written without spaces: a bad word is any substring, not a whole word.
_NO_SPACES = ("zh", "ja", "th")
_LANG_CODE = re.compile("[a-z]{2,3}")


class BadWordsConfig(StrictModel):
    use_builtin: bool = Field(True, description="start from the shipped lists (en, zh)")
    files: dict[str, str] = Field(default_factory=dict, description="language -> list file replacing the shipped one")
    extra_words: dict[str, list[str]] = Field(default_factory=dict, description="language -> more words")
    default_lang: str = Field("en", min_length=2, description="list for records without lang that are not Chinese")
    min_matches: int = Field(1, ge=1, description="drop a page with at least this many bad-word occurrences")


class BadWords(Filter):
    """Drops pages with words from the list for their language (pornography, slurs, gambling spam).

    A record's language is `lang` (its primary subtag) or, without one, Chinese when the text is
    mostly CJK, else `default_lang`. Languages without a list are kept.
    """

    name = "bad_words"
    Config = BadWordsConfig

    def __init__(self, config: StrictModel | dict | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._patterns: dict[str, re.Pattern[str] | None] = {}
        for lang in self.config.files:  # read user files now, so a bad path fails when the stage is built
            self._pattern(lang)

    def decide(self, record: Record) -> Keep | Drop:
        lang = record.lang.split("-")[0].lower() if record.lang else (
            "zh" if is_cjk(record.text) else self.config.default_lang)
        pattern = self._patterns[lang] if lang in self._patterns else self._pattern(lang)
        if pattern is None:
            return KEEP
        found = pattern.findall(record.text.lower())
        if len(found) < self.config.min_matches:
            return KEEP
        record.meta.setdefault(self.name, {})["matched"] = sorted(set(found))[:5]
        return Drop("bad_words")

    def _pattern(self, lang: str) -> re.Pattern[str] | None:
        """The compiled list of one language (None if it has no list), built on first use."""
        cfg = self.config
        words: list[str] = list(cfg.extra_words.get(lang, ()))
        if lang in cfg.files:
            words += read_list(cfg.files[lang], f"{self.name}.files.{lang}")
        elif cfg.use_builtin and _LANG_CODE.fullmatch(lang):
            with contextlib.suppress(FileNotFoundError):  # no shipped list for this language
                words += builtin_list(f"bad_words/{lang}.txt")
        pattern = None
        if words:
            alternatives = "|".join(re.escape(w) for w in sorted({w.lower() for w in words}, key=len, reverse=True))
            pattern = re.compile(alternatives if lang in _NO_SPACES else rf"(?<!\w)(?:{alternatives})(?!\w)")
        self._patterns[lang] = pattern
        return pattern
