"""PII redaction: e-mail addresses, phone numbers, IP addresses, PRC ID numbers and bank cards.

Each kind is found by a regex and then validated (ID checksum and birth date, Luhn, `ipaddress`),
because web text is full of numbers that merely look like PII: dates, prices, order numbers,
ISBNs, version strings. A false positive costs real content, so when in doubt a number stays.
Matches are replaced by typed placeholders (`<PHONE>`) so a model still learns that a phone
number goes there, and counted per kind.

`redact(text, config)` is the plain function (the server reuses it); `PiiRedact` is the stage.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator

from lmforge.config import StrictModel
from lmforge.pipeline.stage import Mapper
from lmforge.records import Record

PiiKind = Literal["email", "phone", "ip", "cn_id", "bank_card", "qq"]
# Earlier kinds win overlaps: "13812345678@qq.com" is an e-mail, not a phone number, and a
# valid 18-digit ID is an ID even if it happens to pass the Luhn check too.
KINDS: tuple[str, ...] = ("email", "cn_id", "bank_card", "ip", "phone", "qq")
DEFAULT_PLACEHOLDERS = {
    "email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>", "cn_id": "<CN_ID>", "bank_card": "<BANK_CARD>",
    "qq": "<QQ>",
}

# No ASCII letter or digit directly before or after: "ID13812345678" or "v1.2.3.4" are not PII,
# while Chinese text runs straight into a number ("电话13812345678") and must still match.
_B = r"(?<![A-Za-z0-9])"
_E = r"(?![A-Za-z0-9])"
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_CN_ID = re.compile(_B + r"[1-8]\d{5}[ -]?(?:18|19|20)\d{2}[01]\d[0-3]\d[ -]?\d{3}[\dXx]" + _E)
_CARD = re.compile(_B + r"(?<!\d[ -])(?:\d{15,19}|\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{5})"
                   + r"(?![ -]?\d)" + _E)
_IPV4 = re.compile(r"(?<![A-Za-z0-9.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![0-9]|\.\d)")
_IPV6 = re.compile(r"(?<![A-Za-z0-9:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?"
                   r"(?![A-Za-z0-9:]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?:version|ver\.?|release|build|版本号?|v)\s*[:：]?\s*$", re.IGNORECASE)
# Mainland mobile 1[3-9]x xxxx xxxx, with +86 / 0086 and spaces or hyphens as people write them.
_CN_MOBILE = re.compile(r"(?<![A-Za-z0-9+])(?:\(?(?:\+|00)86\)?[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}" + _E)
# Landlines need the area code set off, "010-12345678" or "(0755) 8888 8888"; bare 11-digit
# strings starting with 0 are too often other identifiers.
_CN_LANDLINE = re.compile(_B + r"(?:\(0\d{2,3}\)\s?|0\d{2,3}-)\d{3,4}[ -]?\d{4}(?:-\d{1,4})?" + _E)
_NANP = re.compile(_B + r"(?:\(\d{3}\)\s?|\d{3}[-.])\d{3}[-.]\d{4}" + _E)
_E164 = re.compile(r"(?<![A-Za-z0-9+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,5}" + _E)
_QQ = re.compile(r"(?i)(?<![A-Za-z])qq(?:号码|号)?\s*[:：]?\s*(\d{5,11})(?!\d)")
_DIGITS = re.compile(r"\d")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


class PiiConfig(StrictModel):
    kinds: list[PiiKind] = Field(default_factory=lambda: list(KINDS), description="which kinds to redact")
    placeholders: dict[str, str] = Field(
        default_factory=dict, description="replacement per kind, e.g. {phone: '[TEL]'}; default <PHONE> etc."
    )
    landlines: bool = Field(True, description="also redact landlines (010-12345678, (415) 555-0100)")
    international: bool = Field(True, description="also redact +<country code> numbers (+44 20 7946 0958)")

    @field_validator("placeholders")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown PII kind(s) {unknown}; allowed: {list(KINDS)}")
        return value


def valid_cn_id(number: str) -> bool:
    """18-character PRC resident ID: a real birth date and the ISO 7064 MOD 11-2 check character."""
    digits = number.replace(" ", "").replace("-", "").upper()
    if len(digits) != 18 or not digits[:17].isdigit():
        return False
    try:
        born = datetime.date(int(digits[6:10]), int(digits[10:12]), int(digits[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == digits[17]


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def valid_bank_card(number: str) -> bool:
    """A payment card number: 16 or 19 digits (15 for Amex), a card network's first digit, and Luhn.

    Requiring a real network's first digit (2-6 for Mastercard, Amex, JCB, Visa, UnionPay,
    Discover; 9 for Chinese domestic cards) and rejecting runs like 0000... keeps most order and
    tracking numbers out even when they pass Luhn by chance (one in ten does). 17 and 18 digits
    are left out: such cards are rare, and 18 digits is what an ID number with a wrong check
    character looks like.
    """
    digits = re.sub(r"[ -]", "", number)
    if len(digits) == 15:
        ok_prefix = digits[:2] in ("34", "37")
    else:
        ok_prefix = len(digits) in (16, 19) and digits[0] in "234569"
    return ok_prefix and len(set(digits)) > 1 and luhn(digits)


def _ipv4_ok(text: str, m: re.Match) -> bool:
    return not _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start())


def _ipv6_ok(text: str, m: re.Match) -> bool:
    candidate = m.group()
    if sum(1 for part in re.split(r"[:.]", candidate) if part) < 3:  # "::1", "a::b": too little to be an address
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _phone_digits_ok(m: re.Match) -> bool:
    return 8 <= len(_DIGITS.findall(m.group())) <= 15


_Check = Callable[[str, re.Match], bool]


@functools.lru_cache(maxsize=16)
def _finders(kinds: frozenset[str], landlines: bool, international: bool) -> list[tuple[str, re.Pattern, _Check, int]]:
    """(kind, pattern, validator, group to replace), in priority order, for the kinds enabled."""
    table: dict[str, list[tuple[re.Pattern, _Check, int]]] = {
        "email": [(_EMAIL, lambda t, m: True, 0)],
        "cn_id": [(_CN_ID, lambda t, m: valid_cn_id(m.group()), 0)],
        "bank_card": [(_CARD, lambda t, m: valid_bank_card(m.group()), 0)],
        "ip": [(_IPV6, _ipv6_ok, 0), (_IPV4, _ipv4_ok, 0)],  # v6 first: it may end in a v4 address
        "phone": [(_CN_MOBILE, lambda t, m: True, 0)],
        "qq": [(_QQ, lambda t, m: True, 1)],
    }
    if international:  # before landlines, which would take "(415) 555-2671" out of "+1 (415) 555-2671"
        table["phone"].append((_E164, lambda t, m: _phone_digits_ok(m), 0))
    if landlines:
        table["phone"] += [(_CN_LANDLINE, lambda t, m: True, 0), (_NANP, lambda t, m: True, 0)]
    return [(kind, *finder) for kind in KINDS if kind in kinds for finder in table[kind]]


def find_pii(text: str, config: PiiConfig | None = None) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans of PII in text order."""
    config = config or PiiConfig()
    spans: list[tuple[int, int, str]] = []
    has_digit = _DIGITS.search(text) is not None
    for kind, pattern, ok, group in _finders(frozenset(config.kinds), config.landlines, config.international):
        if kind != "email" and not has_digit:
            continue
        if kind == "email" and "@" not in text:
            continue
        for m in pattern.finditer(text):
            start, end = m.span(group)
            if any(s < end and start < e for s, e, _ in spans) or not ok(text, m):
                continue
            spans.append((start, end, kind))
    return sorted(spans)


def redact(text: str, config: PiiConfig | dict | None = None) -> tuple[str, dict[str, int]]:
    """Text with PII replaced by typed placeholders, and the number of replacements per kind."""
    if not isinstance(config, PiiConfig):
        config = PiiConfig.model_validate(config or {})
    spans = find_pii(text, config)
    if not spans:
        return text, {}
    placeholders = {**DEFAULT_PLACEHOLDERS, **config.placeholders}
    out, counts, pos = [], {}, 0
    for start, end, kind in spans:
        out += [text[pos:start], placeholders[kind]]
        counts[kind] = counts.get(kind, 0) + 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts


class PiiRedact(Mapper):
    """Replaces PII with placeholders; meta["pii"] holds the count per kind when anything was found."""

    name = "pii"
    Config = PiiConfig

    def apply(self, record: Record) -> Record:
        text, counts = redact(record.text, self.config)
        if counts:
            record.text = text
            record.meta[self.name] = counts
            for kind, n in counts.items():
                self.count(kind, n)
        return record
