"""Sentences as word units with protected spans, so augmenters change wording but never meaning-bearing parts.

A sentence becomes a list of `Unit`s: words (jieba words for Chinese, regex words for English),
punctuation, and atomic protected regions. Labelled entity spans (NER) and matches of the
user's `terms`/`patterns` are one unit each, so no segmenter can cut them and no operation can
insert a word inside them; after augmenting, `render` rebuilds the text and the new character
offsets of every entity, which keeps NER labels aligned.

What is protected (never replaced, deleted, moved or masked):
- entities: the record's labelled spans; without labels, a heuristic: English capitalised words
  that do not start a sentence; Chinese words that jieba's dictionary tags as places,
  organisations or names in full (ns, nt, nrt, nrfg: 北京, 京东), and words of two or more Han
  characters that jieba found outside its dictionary (its HMM proposes these: mostly names of
  people, 马悦凌). The dictionary's plain `nr` and `nz` tags are not used: they also cover
  everyday words (安静, 陈旧, 普通);
- numbers: any unit with a digit (full-width too), made only of Chinese numerals, tagged as a
  numeral or quantity by jieba's dictionary (一年, 半, 第一次), or an English number word;
- negations: not/no/never/nor/without/…, any English word ending in n't, and any Chinese word
  containing 不 没 无 非 未 别 莫 勿 否 毋 (so 不错, 没有, 无法 stay; 非常 stays too: a
  conservative rule keeps a few words that could have changed, never the other way round), and
  the `negation_scope` words after one (1 by default: "not GOOD", "没 看过"), up to a comma or
  the end of the sentence.

Random insertion never puts a word right after a protected unit, so "20岁" does not become
"20触岁" and "没看过" does not become "没自来看过".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field, field_validator

from lmforge.config import StrictModel, valid_regex
from lmforge.lang import cut, has_han, is_cjk, jieba_tokenizer, pos_tags

log = logging.getLogger(__name__)

NEGATIONS_EN = frozenset(["not", "no", "never", "nor", "none", "nobody", "nothing", "neither", "nowhere", "cannot",
                          "without", "hardly", "barely", "scarcely"])
NEGATION_CHARS_ZH = frozenset("不没无非未别莫勿否毋")
ZH_NUMERALS = frozenset("零〇一二三四五六七八九十百千万亿两")
NUMBERS_EN = frozenset([
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty", "forty",
    "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million", "billion", "trillion",
    "first", "second", "third", "half", "twice", "dozen"])
ZH_ENTITY_TAGS = frozenset(("ns", "nt", "nrt", "nrfg"))
ZH_NUMBER_TAGS = frozenset(("m", "mq"))
_EN_TOKEN = re.compile(r"(\w+(?:['’]\w+)*|[^\w\s]+)(\s*)")
_SENTENCE_END = frozenset(".!?:;。！？：；")
_CLAUSE_END = _SENTENCE_END | frozenset("，,、")
NEGATION, PROTECTED = 2, 1
_DIGIT = re.compile(r"\d")


class ProtectConfig(StrictModel):
    """What no augmentation may change; see the module docstring for each rule."""

    entities: bool = Field(True, description="labelled spans, and the capitalised-word / unknown-Chinese-word heuristic")
    numbers: bool = True
    negations: bool = True
    negation_scope: int = Field(1, ge=0, description="words after a negation also protected (its scope: 'not GOOD')")
    terms: list[str] = Field(default_factory=list, description="exact strings never changed (product names, ...)")
    patterns: list[str] = Field(default_factory=list, description="regular expressions whose matches are never changed")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        return [valid_regex(p) for p in value]


@dataclass(slots=True)
class Unit:
    """A word, punctuation mark or protected region, with the whitespace that followed it."""

    text: str
    ws: str = ""
    word: bool = False  # letters, digits or Han characters (punctuation and symbols are not words)
    protected: bool = False
    label: str | None = None  # the entity type, for a labelled span


def detect_lang(text: str, lang: str = "") -> str:
    """'zh' or 'en': a record's own `lang` when it is one of them, else 'zh' for CJK text (`lmforge.lang.is_cjk`).

    Japanese goes the Chinese way: jieba still finds its words, the English rules would find none.
    """
    base = (lang or "").split("-")[0].lower()
    if base in ("zh", "en"):
        return base
    return "zh" if is_cjk(text) else "en"


class Segmenter:
    """Cuts text into `Unit`s and marks the protected ones; one instance per process and config."""

    def __init__(self, protect: ProtectConfig | None = None, hmm: bool = True) -> None:
        self.protect = protect or ProtectConfig()
        self.hmm = hmm
        pieces = [re.escape(t) for t in sorted(self.protect.terms, key=len, reverse=True) if t]
        pieces += [f"(?:{p})" for p in self.protect.patterns]
        self._atomic = re.compile("|".join(pieces)) if pieces else None
        self._kinds: dict[str, int] = {}  # Chinese word -> NEGATION / PROTECTED / 0

    # ------------------------------------------------------------------ cutting

    def units(self, text: str, lang: str, spans: Sequence[tuple[int, int, str]] = ()) -> tuple[str, list[Unit]]:
        """(leading whitespace, units). `spans` are labelled entities as (start, end, label) offsets."""
        regions = self._regions(text, spans)
        units: list[Unit] = []
        lead = ""
        pos = 0
        for start, end, label in regions:
            lead = self._cut(text[pos:start], lang, units, lead)
            units.append(Unit(text[start:end], word=True, protected=True, label=label))
            pos = end
        lead = self._cut(text[pos:], lang, units, lead)
        self._mark(units, lang)
        return lead, units

    def _regions(self, text: str, spans: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str | None]]:
        """Labelled spans, then term/pattern matches that overlap none of them, in text order."""
        taken: list[tuple[int, int, str | None]] = sorted((int(s), int(e), str(t)) for s, e, t in spans)
        if self._atomic is not None:
            for m in self._atomic.finditer(text):
                s, e = m.span()
                if e > s and not any(s < te and ts < e for ts, te, _ in taken):
                    taken.append((s, e, None))
            taken.sort()
        return taken

    def _cut(self, gap: str, lang: str, units: list[Unit], lead: str) -> str:
        """Append the units of a stretch of plain text; whitespace goes to the unit before it."""
        if not gap:
            return lead
        if lang == "zh":
            append = units.append
            for tok in cut(gap, hmm=self.hmm):
                if not tok.isspace():
                    append(Unit(tok, "", tok[0].isalnum() or tok[-1].isalnum()))
                elif units:
                    units[-1].ws += tok
                else:
                    lead += tok
            return lead
        stripped = gap.lstrip()
        space = gap[: len(gap) - len(stripped)]
        if units:
            units[-1].ws += space
        else:
            lead += space
        for m in _EN_TOKEN.finditer(stripped):
            tok = m.group(1)
            units.append(Unit(tok, ws=m.group(2), word=tok[0].isalnum() or tok[-1].isalnum()))
        return lead

    # ------------------------------------------------------------------ protection

    def _zh_kind(self, word: str) -> int:
        """NEGATION, PROTECTED or 0 for a Chinese word: its rules need no context, so the answer is cached."""
        p = self.protect
        if p.negations and not NEGATION_CHARS_ZH.isdisjoint(word):
            return NEGATION
        tag = pos_tags().get(word)
        if p.numbers and (_DIGIT.search(word) or ZH_NUMERALS.issuperset(word) or tag in ZH_NUMBER_TAGS):
            return PROTECTED
        if p.entities and (tag in ZH_ENTITY_TAGS or (len(word) > 1 and word not in jieba_tokenizer().FREQ
                                                     and has_han(word))):
            return PROTECTED
        return 0

    def _mark(self, units: list[Unit], lang: str) -> None:
        if lang == "zh":
            self._mark_zh(units)
            return
        p = self.protect
        prev_end = True  # the first word starts a sentence
        scope = 0  # words left in the scope of the last negation
        for u in units:
            if u.protected or not u.word:
                prev_end = u.text[-1] in _SENTENCE_END if not u.protected else False
                if prev_end or u.text[-1] in "，,":
                    scope = 0  # a clause ends the scope
                continue
            t = u.text
            if p.negations and _is_negation(t):
                u.protected, scope = True, p.negation_scope
            elif scope:
                u.protected, scope = True, scope - 1
            else:
                u.protected = bool((p.numbers and (_DIGIT.search(t) or t.lower() in NUMBERS_EN))
                                   or (p.entities and not prev_end and t[0].isupper()))
            prev_end = False

    def _mark_zh(self, units: list[Unit]) -> None:
        kinds, width = self._kinds, self.protect.negation_scope
        scope = 0
        for u in units:
            if u.protected or not u.word:
                if u.text[-1] in _CLAUSE_END:
                    scope = 0
                continue
            kind = kinds.get(u.text)
            if kind is None:
                if len(kinds) > 1_000_000:  # bound the memory on endless vocabularies
                    kinds.clear()
                kind = kinds[u.text] = self._zh_kind(u.text)
            if kind == NEGATION:
                u.protected, scope = True, width
            elif scope:
                u.protected, scope = True, scope - 1
            elif kind:
                u.protected = True


def _is_negation(word: str) -> bool:
    low = word.lower()
    return low in NEGATIONS_EN or low.endswith(("n't", "n’t"))


def render(lead: str, units: Sequence[Unit], lang: str, labelled: bool | None = None
           ) -> tuple[str, list[tuple[int, int, str]]]:
    """The text of `units` and the (start, end, label) offsets of the labelled ones in it.

    English words that end up side by side with no whitespace (after a swap or an insertion)
    get a space between them; trailing whitespace is dropped. `labelled=False` promises there is no
    labelled unit (a sentence without spans), which saves looking.
    """
    if labelled is None:
        labelled = any(u.label is not None for u in units)
    if lang != "en" and not labelled:  # the common Chinese case, fast
        return (lead + "".join([u.text + u.ws for u in units])).rstrip(), []
    parts = [lead]
    size = len(lead)
    spans: list[tuple[int, int, str]] = []
    last = len(units) - 1
    for i, u in enumerate(units):
        if u.label is not None:
            spans.append((size, size + len(u.text), u.label))
        ws = u.ws
        if not ws and lang == "en" and i < last and u.text[-1].isalnum() and units[i + 1].text[0].isalnum():
            ws = " "
        parts.append(u.text)
        parts.append(ws)
        size += len(u.text) + len(ws)
    return "".join(parts).rstrip(), spans
