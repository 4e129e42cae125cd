"""What the quality filters share: one analysis per document, a fast English tokenizer, word lists.

Gopher repetition, Gopher quality, C4 and FineWeb look at the same lines and words, and
tokenizing is what costs. `analyze(record)` builds each view of a text lazily and keeps the last
document's analysis, so consecutive filters in a chain (which see the very same `str` object)
tokenize it once.

English tokens follow spaCy's English tokenizer rules closely (the tokenizer behind datatrove's
Gopher filters, i.e. the published numbers): punctuation marks are tokens of their own, clitics
('s, n't, 'll) split off, URLs, abbreviations ("U.S.", "Prof.") and numbers ("1,000", "3.5") stay
whole. It matters because Gopher's ratios count punctuation tokens as words: on the
article-extraction pages the share of words with a letter agrees with spaCy's to within 0.002
on average, at a fifteenth of the cost. Chinese-like text is cut by jieba (`lmforge.lang.words`),
which yields words without punctuation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.lang import is_cjk, words
from lmforge.records import Record

# Marks that make a token a "symbol" rather than a word (Gopher counts words with anything else).
PUNCTUATION = frozenset(
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    "¡¿«»‹›„“”‘’‚´¨·•…‰′″—–‐‑‒―"
    "、。，；：？！（）【】《》〈〉「」『』〔〕［］｛｝～＋＝＿＊＆＃＠％＄￥．｡｢｣・━►∶"
    + "".join(map(chr, (*range(0, 32), *range(127, 160))))
)

# Line-final marks that end a sentence, in the scripts a web crawl mostly meets (FineWeb's set).
TERMINAL = (
    ".", "!", "?", "。", "！", "？", "．", "｡", "︒", "﹒", "﹗", "﹖", "‼", "⁇", "⁈", "⁉", "؟", "۔", "؞",
    "।", "॥", "։", "።", "፧", "፨", "၊", "။", "។", "៕", "᠃", "᠉", "܀", "܁", "܂", "꓿", "꘎", "꛳", "꛷",
)
# Chinese additionally ends sentences with ；and …… and often closes a quote after the mark.
TERMINAL_ZH = ("；", "…", "”", "」", "』", "’")

_ABBREVIATIONS = (
    "Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Rep|Sen|Gov|Gen|Col|Lt|Sgt|Capt|Rev|Mt|Ft|Inc|Ltd|Co|Corp|vs|etc|No"
    "|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
    "|Ala|Ariz|Ark|Calif|Colo|Conn|Del|Fla|Ga|Ill|Ind|Kan|Ky|La|Md|Mass|Mich|Minn|Miss|Mo|Mont|Neb|Nev"
    "|Okla|Ore|Pa|Tenn|Va|Wash|Wis|Wyo|[A-Za-z]"
)
_CLITIC = r"(?:[sSmMdD]|re|RE|ll|LL|ve|VE)\b"
# Alternatives are tried in order; the word rule last among word-like ones so the special cases win.
_EN_TOKEN = re.compile(
    rf"""
      [Cc]an(?=not\b)                                               # can|not
    | \w+(?=[\s;!?)\]"”]|,\s|$)                                     # fast path: a plain word
    | (?:https?://|www\.|\w+(?:\.\w+)+/)\S*?(?=[.,;:!?)\]"'”’]*(?:\s|$))  # URLs stay whole
    | \w+?(?=n['’]t\b) | (?<=\w)n['’]t\b                                # do|n't
    | (?<=\w)['’]{_CLITIC}                                           # 's 're 'll 've 'm 'd
    | (?:[A-Za-z]\.){{2,}}                                           # U.S. a.m. e.g.
    | (?:{_ABBREVIATIONS})\.(?=\s)                                    # Prof. Oct. Ill. d.
    | \):(?=\s|$)                                                    # spaCy's "):" emoticon
    | \|(?:[-:]+\|)+                                                 # |---|---| table rules
    | [@+]?\w+(?:(?:[.,&@]|['’](?!{_CLITIC})|[:/](?=\d)|(?<=\d)[/:–])\w+)*  # words and numbers
    | \.{{2,}} | …+ | -{{2,}}
    | [^\w\s]
    """,
    re.VERBOSE,
)
# Over tokens joined by newlines: tokens without a letter, and tokens made only of punctuation.
_NO_LETTER_TOKEN = re.compile(r"^(?:[\d_]|[^\w\n])+$", re.MULTILINE)
_SYMBOL_TOKEN = re.compile(
    "^[" + "".join(re.escape(c) for c in sorted(PUNCTUATION - {"\n"})) + "]+$", re.MULTILINE
)


def en_tokens(text: str) -> list[str]:
    """English words and punctuation marks as spaCy would cut them (see the module docstring)."""
    return _EN_TOKEN.findall(text)


def count_without_letter(joined: str) -> int:
    """Tokens with no letter at all (numbers, punctuation) in `"\\n".join(tokens)`, counted by one regex pass."""
    return len(_NO_LETTER_TOKEN.findall(joined))


def symbol_tokens(joined: str) -> list[str]:
    """Tokens made only of punctuation in `"\\n".join(tokens)` (Gopher does not count them as words)."""
    return _SYMBOL_TOKEN.findall(joined)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeats, characters in repeats) where the first occurrence of each item is not a repeat."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


class Doc:
    """Views of one text, each computed on first use; `tokens` are jieba words for Chinese-like text."""

    __slots__ = ("text", "lang", "chinese", "_tokens")

    def __init__(self, text: str, lang: str = "") -> None:
        self.text = text
        self.lang = lang
        self.chinese = is_cjk(text, lang)
        self._tokens: list[str] | None = None

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:
            self._tokens = words(self.text, self.lang or "zh") if self.chinese else en_tokens(self.text)
        return self._tokens


_last: Doc | None = None


def analyze(record: Record) -> Doc:
    """The analysis of `record.text`, reused while the next filter sees the same text object."""
    global _last
    doc = _last
    if doc is None or doc.text is not record.text or doc.lang != record.lang:
        doc = _last = Doc(record.text, record.lang)
    return doc


# Sentence ends as spaCy's sentencizer finds them: a run of end marks before more text, with
# quotes, brackets or an ellipsis between; "3.5", "e.g." and "U.S." are no ends (the mark is inside
# a token).
_SENTENCE_END = re.compile(
    r"""(?:[。！？]+|(?<=[^\W\d_]|[\d)"'”’])(?<!\.\w)[.!?]+(?=["'”’)\]]*\s))"""
    r"""[\s"'”’)\]」』…]*["“‘(\[«]*(?=\w)"""
)


# "Prof. Smith", "Co. executive": the period belongs to an abbreviation (spaCy keeps it in the token).
_ABBREVIATION_END = re.compile(rf"""(?<![\w.])(?:{_ABBREVIATIONS})\.(?=\s+["“‘(\[«]*\w)""")


def count_sentences(line: str) -> int:
    """Sentences in one non-empty line (at least one)."""
    ends = len(_SENTENCE_END.findall(line))
    if ends and "." in line:
        ends -= len(_ABBREVIATION_END.findall(line))
    return 1 + max(0, ends)


# --------------------------------------------------------------------------- word lists


@functools.lru_cache(maxsize=32)
def builtin_list(name: str) -> tuple[str, ...]:
    """A list shipped in `lmforge/clean/data/` (one entry a line; lines starting with '#' are comments)."""
    ref = resources.files("lmforge.clean").joinpath("data", *name.split("/"))
    return _parse(ref.read_text(encoding="utf-8").splitlines())


def read_list(path: str | Path, field: str) -> tuple[str, ...]:
    """A user's list file; a missing or unreadable file is a config error naming `field`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{field}: cannot read list file {str(path)!r}: {exc}") from None
    return _parse(text.splitlines())


def _parse(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(e for e in (line.strip() for line in lines) if e and not e.startswith("#"))
