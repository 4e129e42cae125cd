"""Offline language identification: the writing system first, a byte n-gram classifier second.

Most of what makes language ID hard on web text is deciding among languages that share a
script. Chinese, Japanese, Korean, Thai, Greek and a dozen more are told apart by their script
alone, which is nearly exact and free; only Latin, Cyrillic, Arabic and Devanagari text goes to
py3langid (a naive Bayes model over byte n-grams, shipped inside its wheel, so nothing is
downloaded at run time). Routing Chinese around the classifier also fixes its habit of
calling Mandarin news with full-width digits "wuu" or "yue". See benchmarks/langid.py for the
comparison with lingua: about as accurate here, but 20x bigger on disk and, with all its
languages loaded, 15x slower.

Codes are ISO 639-1 where one exists ("zh", "en"), else ISO 639-3 ("ary"); "und" means too
little text to tell. Chinese is always "zh", with the script ("Hans", "Hant" or, when the text
uses only characters common to both, "Hani") in meta.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from lmforge.config import StrictModel
from lmforge.errors import ConfigError, require
from lmforge.lang import HAN, HANGUL, KANA, KANA_SHARE
from lmforge.pipeline.stage import Drop, Transform
from lmforge.records import Record

log = logging.getLogger(__name__)

UNDETERMINED = "und"

# Letters per script. Each is weighted by its UTF-8 width when scripts compete, so that a
# Chinese sentence quoting "pip install requests" is still Chinese (a Han character carries
# about as much as a short Latin word) while an English sentence quoting 中 stays English.
_SCRIPTS: dict[str, tuple[str, int]] = {
    "Latn": ("A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\uff21-\uff3a\uff41-\uff5a", 1),
    "Cyrl": ("\u0400-\u052f", 2),
    "Grek": ("\u0370-\u03ff\u1f00-\u1fff", 2),
    "Armn": ("\u0531-\u058a", 2),
    "Hebr": ("\u05d0-\u05f4", 2),
    "Arab": ("\u0620-\u064a\u066e-\u06d3\u06fa-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufefe", 2),
    "Deva": ("\u0900-\u097f", 3),
    "Beng": ("\u0980-\u09ff", 3),
    "Guru": ("\u0a00-\u0a7f", 3),
    "Gujr": ("\u0a80-\u0aff", 3),
    "Orya": ("\u0b00-\u0b7f", 3),
    "Taml": ("\u0b80-\u0bff", 3),
    "Telu": ("\u0c00-\u0c7f", 3),
    "Knda": ("\u0c80-\u0cff", 3),
    "Mlym": ("\u0d00-\u0d7f", 3),
    "Sinh": ("\u0d80-\u0dff", 3),
    "Thai": ("\u0e00-\u0e7f", 3),
    "Laoo": ("\u0e80-\u0eff", 3),
    "Tibt": ("\u0f00-\u0fff", 3),
    "Mymr": ("\u1000-\u109f", 3),
    "Geor": ("\u10a0-\u10ff", 3),
    "Ethi": ("\u1200-\u137f", 3),
    "Khmr": ("\u1780-\u17ff", 3),
    "Hang": (HANGUL, 3),
    "Kana": (KANA, 3),  # without U+30FB, the middle dot Chinese also uses (see lmforge.lang)
    "Hani": (HAN, 3),
}
_SCRIPT_RE = {name: re.compile(f"[{chars}]") for name, (chars, _) in _SCRIPTS.items()}
_WEIGHT = {name: weight for name, (_, weight) in _SCRIPTS.items()}
_ANY_LETTER = re.compile("[" + "".join(chars for chars, _ in _SCRIPTS.values()) + "]")

# Scripts that name their language outright; Han is resolved separately (zh or ja).
_SCRIPT_LANG = {
    "Grek": "el", "Armn": "hy", "Hebr": "he", "Beng": "bn", "Guru": "pa", "Gujr": "gu", "Orya": "or",
    "Taml": "ta", "Telu": "te", "Knda": "kn", "Mlym": "ml", "Sinh": "si", "Thai": "th", "Laoo": "lo",
    "Tibt": "bo", "Mymr": "my", "Geor": "ka", "Ethi": "am", "Khmr": "km", "Hang": "ko",
}
# Scripts shared by many languages: the classifier decides among the model's languages of that script.
_CYRILLIC = frozenset({"ba", "be", "bg", "kk", "ky", "mk", "mn", "ru", "sr", "tg", "tt", "uk"})
_ARABIC = frozenset({"ar", "ary", "arz", "fa", "ps", "sdh", "ug", "ur", "uzs"})
_DEVANAGARI = frozenset({"hi", "mr", "ne", "sa", "gom"})
_SHARED_SCRIPTS = {"Cyrl": _CYRILLIC, "Arab": _ARABIC, "Deva": _DEVANAGARI}
# Labels of the model that are never an answer: scripts decided above, Chinese varieties, "no language".
_NOT_LATIN = _CYRILLIC | _ARABIC | _DEVANAGARI | {"zh", "wuu", "yue", "ja", "ko", "zxx", "el", "grc", "he",
                                                  "hbo", "hy", "ka", "th", "lo", "km", "my", "si", "ta", "te",
                                                  "kn", "ml", "gu", "pa", "or", "bn", "as", "am", "dz"}
_CODE = re.compile(r"^[a-z]{2,3}$")
# The default candidates: the most used languages of web pages. Leaving out the model's rarer
# languages stops short English lines being called Frisian or Nigerian Pidgin (see the benchmark).
WEB_LANGUAGES = (
    "en", "zh", "es", "de", "ja", "fr", "ru", "pt", "it", "nl", "pl", "tr", "fa", "vi", "id", "cs", "ko",
    "uk", "hu", "ar", "sv", "ro", "el", "da", "fi", "he", "sk", "th", "bg", "no", "hi",
)


class LangIdConfig(StrictModel):
    languages: list[str] | Literal["web"] | None = Field(
        "web",
        description="candidate languages: a list (e.g. [zh, en]), 'web' (the 31 most used on web pages) or null "
        "(all 140 the model knows); fewer is more accurate on short text, but text in another language then "
        "gets the closest candidate, or 'und' when its script has none",
    )
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="below this confidence the language is 'und'")
    min_letters: int = Field(
        3, ge=1, description="fewer letters than this in a shared script (Latin, Cyrillic, ...) gives 'und'"
    )
    per_line: bool = Field(False, description="also identify each line and record language spans and shares")
    script: bool = Field(True, description="record Simplified vs Traditional Chinese (needs opencc-purepy)")
    max_chars: int = Field(5000, gt=0, description="identify the document from its first N characters")
    keep: list[str] | None = Field(
        None, description="drop records whose language is not listed, with reason lang_<code> (e.g. lang_und)"
    )

    @field_validator("languages", "keep")
    @classmethod
    def _codes(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value is None or isinstance(value, str):
            return value
        bad = [code for code in value if not _CODE.match(code)]
        if bad:
            raise ValueError(f"language codes are lowercase ISO 639 codes like 'zh' or 'en', got {bad}")
        return value


@functools.lru_cache(maxsize=1)
def _model():
    """The py3langid model, loaded once per process (~0.5 s), with calibrated probabilities."""
    langid = require("py3langid.langid", "clean")
    cls = langid.LanguageIdentifier
    load = getattr(cls, "from_model_file", None) or cls.from_pickled_model  # 0.4 renamed the loader
    return load(langid.MODEL_FILE, norm_probs=True)


def supported_languages() -> set[str]:
    """Every code this module can answer with (besides 'und')."""
    return (set(_model().labels) - {"zxx", "wuu", "yue", "grc", "hbo", "dz"}) | {"ja", "ko", "bo"}


@functools.lru_cache(maxsize=1)
def _converters():
    """OpenCC converters used one character at a time to count script-specific characters."""
    try:
        import opencc_purepy
    except ImportError:
        log.info("opencc-purepy is not installed; Chinese script (Hans/Hant) is not recorded")
        return None
    return opencc_purepy.OpenCC("t2s"), opencc_purepy.OpenCC("s2t")


def chinese_script(text: str, sample: int = 400) -> str | None:
    """'Hant' or 'Hans' by which kind of script-specific characters dominate; 'Hani' if none appear.

    Characters are converted one per line, so OpenCC's phrase tables cannot shift positions and
    each character is judged on its own.
    """
    converters = _converters()
    if converters is None:
        return None
    han = _SCRIPT_RE["Hani"].findall(text)[:sample]
    if not han:
        return None
    t2s, s2t = converters
    joined = "\n".join(han)
    traditional = sum(a != b for a, b in zip(han, t2s.convert(joined).split("\n"), strict=False))
    simplified = sum(a != b for a, b in zip(han, s2t.convert(joined).split("\n"), strict=False))
    if traditional > simplified:
        return "Hant"
    return "Hans" if simplified else "Hani"


def script_weights(text: str) -> dict[str, int]:
    """Letters per script, weighted by UTF-8 width; ASCII text skips the per-script scans."""
    if text.isascii():
        n = sum(1 for c in text if c.isalpha())
        return {"Latn": n} if n else {}
    weights = {}
    for name, pattern in _SCRIPT_RE.items():
        n = len(pattern.findall(text))
        if n:
            weights[name] = n * _WEIGHT[name]
    return weights


class LanguageIdentifier:
    """Document and line language; the stage's logic, usable on plain strings."""

    def __init__(self, config: LangIdConfig | None = None) -> None:
        self.config = config or LangIdConfig()
        self._candidates: set[str] | None = None
        languages = self.config.languages
        if languages is not None:
            languages = WEB_LANGUAGES if languages == "web" else languages
            unknown = sorted(set(languages) - supported_languages())
            if unknown:
                raise ConfigError(f"langid.languages: unknown language code(s) {unknown}")
            self._candidates = set(languages)

    def identify(self, text: str) -> tuple[str, float]:
        """(language, confidence) of one text; ('und', 0.0) when there is too little to tell."""
        text = text[: self.config.max_chars]
        weights = script_weights(text)
        if not weights:
            return UNDETERMINED, 0.0
        total = sum(weights.values())
        script = max(weights, key=weights.__getitem__)
        if script in ("Hani", "Kana"):
            cjk = weights.get("Hani", 0) + weights.get("Kana", 0)
            lang = "ja" if weights.get("Kana", 0) >= KANA_SHARE * cjk else "zh"  # lmforge.lang's rule
            return self._answer(lang, cjk / total)
        if script in _SCRIPT_LANG:
            return self._answer(_SCRIPT_LANG[script], weights[script] / total)
        if weights[script] // _WEIGHT[script] < self.config.min_letters:
            return UNDETERMINED, 0.0
        lang, prob = self._classify(text, script)
        return self._answer(lang, prob * weights[script] / total)

    def _answer(self, lang: str, score: float) -> tuple[str, float]:
        if lang == UNDETERMINED or (self._candidates is not None and lang not in self._candidates):
            return UNDETERMINED, 0.0
        if score < self.config.min_score:
            return UNDETERMINED, round(score, 4)
        return lang, round(score, 4)

    def _classify(self, text: str, script: str) -> tuple[str, float]:
        """Best language of the script among the candidates, its probability renormalised over them.

        Ranking every label and renormalising over a subset gives the same answer as a model
        restricted to that subset, without keeping one restricted model per candidate set.
        """
        allowed = _SHARED_SCRIPTS.get(script)  # None: Latin, i.e. every label not of another script
        best, best_p, mass = UNDETERMINED, 0.0, 0.0
        for lang, p in _model().rank(text):
            if allowed is not None and lang not in allowed:
                continue
            if allowed is None and lang in _NOT_LATIN:
                continue
            if self._candidates is not None and lang not in self._candidates:
                continue
            mass += p
            if p > best_p:
                best, best_p = lang, p
        return (best, best_p / mass) if mass > 0 else (UNDETERMINED, 0.0)

    def lines(self, text: str) -> tuple[dict[str, float], list[list[Any]]]:
        """Share of characters per language, and [start, end, lang] spans of consecutive lines.

        Lines too short to identify ('und') join the span before them, so a Chinese article
        with an English heading reads as two spans rather than a dozen.
        """
        chars: dict[str, int] = {}
        spans: list[list[Any]] = []
        pos = 0
        for line in text.split("\n"):
            start, end = pos, pos + len(line)
            pos = end + 1
            if not line.strip():
                continue
            lang, _ = self.identify(line)
            if lang == UNDETERMINED and spans:
                spans[-1][1] = end
                continue
            chars[lang] = chars.get(lang, 0) + len(line.strip())
            if spans and spans[-1][2] == lang:
                spans[-1][1] = end
            else:
                spans.append([start, end, lang])
        total = sum(chars.values()) or 1
        shares = {lang: round(n / total, 4) for lang, n in sorted(chars.items(), key=lambda kv: -kv[1])}
        return shares, spans

    def describe(self, text: str) -> dict[str, Any]:
        """The meta["langid"] entry: lang, score, and script / line shares where they apply."""
        lang, score = self.identify(text)
        info: dict[str, Any] = {"lang": lang, "score": score}
        if lang == "zh" and self.config.script:
            script = chinese_script(text[: self.config.max_chars])
            if script:
                info["script"] = script
        if self.config.per_line and "\n" in text.strip():
            info["lines"], info["spans"] = self.lines(text)
        return info


def labelled_lines(per_language: int = 500, docs: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """(line, lang) pairs from the built-in corpora, the sample that accuracy is reported on.

    Chinese lines are sentences of People's Daily and the reviews, English ones of the Python
    docs and docstrings, half from each corpus. Lines a human would not label with the corpus
    language are left out: Chinese-corpus lines without a Chinese character (English reviews,
    rows of numbers) and English lines with Chinese characters or fewer than 3 letters.
    """
    import random

    from lmforge.collect.builtin import corpus_records
    from lmforge.lang import sentences

    rng = random.Random(seed)
    han = _SCRIPT_RE["Hani"]
    corpora = {"zh": ("peoples_daily", "reviews"), "en": ("python_docs", "python_docstrings")}
    sample: list[tuple[str, str]] = []
    for lang, names in corpora.items():
        for i, name in enumerate(names):
            lines = [s for r in corpus_records(name, docs) for s in sentences(r.text)]
            if lang == "zh":
                lines = [s for s in lines if han.search(s)]
            else:
                lines = [s for s in lines if not han.search(s) and sum(c.isalpha() for c in s) >= 3]
            want = per_language // 2 + (per_language % 2 if i == 0 else 0)
            sample += [(s, lang) for s in rng.sample(lines, min(want, len(lines)))]
    return sample


class LangId(Transform):
    """Sets record.lang and meta["langid"]; with `keep`, drops other languages as lang_<code>."""

    name = "langid"
    Config = LangIdConfig

    def __init__(self, config: LangIdConfig | dict | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.identifier = LanguageIdentifier(self.config)
        self._keep = set(self.config.keep) if self.config.keep is not None else None

    def apply(self, record: Record) -> Record | Drop:
        info = self.identifier.describe(record.text)
        record.lang = info["lang"]
        record.meta[self.name] = info
        if self._keep is None or record.lang in self._keep:
            return record
        return Drop(f"lang_{record.lang}")
