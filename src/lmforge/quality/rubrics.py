"""Prompt templates for rating documents, and reading the score back out of a model's answer.

Two rubrics ship with lmforge (`data/edu_en.txt`, `data/edu_zh.txt`): an additive 0-5 scale of
educational value, in the spirit of FineWeb-Edu but worded for this project, the Chinese one
written in Chinese rather than translated, so that a Chinese page is judged by Chinese examples.
A custom template is any UTF-8 file with a `{text}` placeholder.

Models answer loosely ("Score: **3**", "分数：３", "评分：3 分", "总分为三分", a lone "4"), so the
parser looks for the last labelled score first and falls back to a final line that is only a
number; anything else, or a number outside the scale, is unparsable and the caller quarantines
it with the raw answer rather than guessing.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.lang import is_chinese
from lmforge.records import Record

BUILTIN = ("edu_en", "edu_zh")
AUTO = "auto"
PLACEHOLDER = "{text}"
MAX_TEMPLATE_CHARS = 100_000


@dataclass(frozen=True)
class Template:
    name: str  # edu_en, edu_zh, or the custom file's name
    text: str

    def render(self, document: str) -> str:
        """The prompt: the document in place of `{text}` (no str.format, so braces in a rubric are safe)."""
        return self.text.replace(PLACEHOLDER, document)


def builtin_template(name: str) -> Template:
    text = resources.files("lmforge.quality").joinpath("data", f"{name}.txt").read_text(encoding="utf-8")
    return Template(name, text)


def load_template(spec: str, base_dir: Path = Path(".")) -> Template:
    """A built-in rubric by name, or a custom template file (relative paths from `base_dir`)."""
    if spec in BUILTIN:
        return builtin_template(spec)
    path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
    if not path.is_file():
        raise ConfigError(f"template: {spec!r} is neither a built-in rubric ({', '.join(BUILTIN)}, {AUTO}) "
                          "nor an existing template file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"template: {path} is not UTF-8 text") from None
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ConfigError(f"template: {path} has {len(text):,} characters; at most {MAX_TEMPLATE_CHARS:,} are allowed")
    if PLACEHOLDER not in text:
        raise ConfigError(f"template: {path} has no {PLACEHOLDER} placeholder where the document goes")
    return Template(path.name, text)


class TemplateChooser:
    """Which template rates a record: one fixed template, or with `auto` the Chinese rubric for Chinese."""

    def __init__(self, spec: str, base_dir: Path = Path(".")) -> None:
        self.auto = spec == AUTO
        if self.auto:
            self.en, self.zh = builtin_template("edu_en"), builtin_template("edu_zh")
        else:
            self.fixed = load_template(spec, base_dir)

    def __call__(self, record: Record) -> Template:
        if not self.auto:
            return self.fixed
        return self.zh if is_chinese(record.text, record.lang or None) else self.en


# --------------------------------------------------------------------------- parsing

_NUMERALS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
             "九": 9, "十": 10}
_NUMBER = r"(\d+(?:\.\d+)?|[零〇一二两三四五六七八九十])"
# "Score: 3", "score = 3", "**Score:** 3", "分数：3", "评分为 3 分", "总分是三分", "Rating: 3/5"
_LABELLED = re.compile(
    r"(?:\b(?:score|rating)|分数|评分|得分|总分|打分)\s*\**\s*(?:[:=]|是|为|：)?\s*\**\s*" + _NUMBER + r"\s*\**\s*(?:/\s*\d+)?",
    re.IGNORECASE)
# a final line that is only a number: "3", "3.", "**4**", "3 分", "3/5"
_BARE = re.compile(r"^\W*" + _NUMBER + r"\s*(?:分|points?|/\s*\d+)?\W*$", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    score: int | None
    problem: str | None = None  # no_score, not_integer, out_of_range

    @property
    def ok(self) -> bool:
        return self.score is not None


def _number(token: str) -> float:
    return float(_NUMERALS[token]) if token in _NUMERALS else float(token)


def parse_score(answer: str, low: int = 0, high: int = 5) -> Parsed:
    """The score an answer gives, or why none could be read (see the module docstring)."""
    text = unicodedata.normalize("NFKC", answer or "").rstrip()  # full-width digits and colons become ASCII
    labelled = list(_LABELLED.finditer(text))
    line_start = text.rfind("\n") + 1
    bare = _BARE.match(text[line_start:].strip())
    # whichever comes last: "score 2 fits ... \n4" is a 4, "4 sources ... Score: 2" a 2
    if bare is not None and (not labelled or labelled[-1].end() <= line_start):
        token = bare.group(1)
    elif labelled:
        token = labelled[-1].group(1)
    else:
        return Parsed(None, "no_score")
    value = _number(token)
    if value != int(value):
        return Parsed(None, "not_integer")
    if not low <= value <= high:
        return Parsed(None, "out_of_range")
    return Parsed(int(value))
