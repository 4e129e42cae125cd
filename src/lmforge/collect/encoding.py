"""Decoding bytes of unknown encoding, tuned for Chinese: UTF-8 (with or without BOM), GBK/GB18030, Big5.

General-purpose detectors (chardet, charset-normalizer) guess poorly on short Chinese text:
GB and Big5 byte ranges overlap, so both decode without error and the guess falls to
statistics that need kilobytes of text. The national standards carry the statistics we need:
GB2312's level-1 block is the 3,755 most common Simplified characters, and Big5's first block
the 5,401 most common Traditional ones. The right codec turns Chinese bytes into characters that
are common in one of those sets; the wrong one produces rare characters, private-use code
points or symbols. We decode with each candidate and keep the one whose Han characters are most
often common ones.
"""

from __future__ import annotations

import codecs
import functools
import unicodedata

from lmforge.lang import HAN_RE, HANGUL_RE, KANA_RE

SAMPLE_BYTES = 64 * 1024
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Declared names that are subsets of a codec that decodes strictly more: decode with the superset.
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030", "euc-cn": "gb18030",
    "big5": "big5hkscs", "big5-hkscs": "big5hkscs", "cp950": "big5hkscs", "x-x-big5": "big5hkscs",
    "ascii": "utf-8", "us-ascii": "utf-8", "iso-8859-1": "cp1252", "latin-1": "cp1252", "latin1": "cp1252",
}
_CJK_CANDIDATES = ("gb18030", "big5hkscs")
_WESTERN_FALLBACK = "cp1252"


def canonical(name: str | None) -> str | None:
    """Normalize a declared charset label to the Python codec we decode it with (None if unknown)."""
    if not name:
        return None
    label = name.strip().strip("'\"").lower()
    label = _SUPERSETS.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


@functools.lru_cache(maxsize=65536)
def _han_weight(ch: str) -> float:
    """1 for a common Simplified or Traditional character, 0.5 for a less common one, 0 otherwise."""
    try:
        gb = ch.encode("gb2312")
        if 0xB0 <= gb[0] <= 0xD7:
            return 1.0  # GB2312 level 1
        if 0xD8 <= gb[0] <= 0xF7:
            return 0.5  # GB2312 level 2
    except UnicodeEncodeError:
        pass
    try:
        b5 = ch.encode("big5")
        code = (b5[0] << 8) | b5[1]
        if 0xA440 <= code <= 0xC67E:
            return 1.0  # Big5 common characters
        if 0xC940 <= code <= 0xF9D5:
            return 0.5  # Big5 less common characters
    except UnicodeEncodeError:
        pass
    return 0.0


def plausibility(text: str) -> float:
    """How much `text` looks like real Chinese (or plain text): 0..1, higher is better."""
    if not text:
        return 0.0
    han = weight = bad = 0.0
    for ch in text:
        if HAN_RE.match(ch):
            han += 1
            weight += _han_weight(ch)
        elif KANA_RE.match(ch):
            han += 1  # kana: what Big5 lead bytes 0xA4/0xA5 become when misread as GB2312
        elif ch < " " and ch not in "\t\n\r\f":
            bad += 1
        else:
            cat = unicodedata.category(ch)
            if cat in ("Co", "Cn", "Cs") or HANGUL_RE.match(ch):  # private use, unassigned, Hangul
                bad += 1
    n = len(text)
    han_score = weight / han if han else 1.0
    return max(0.0, han_score - 2.0 * bad / n)


def _strict(data: bytes, codec: str, final: bool = True) -> str | None:
    """Strict decode; with final=False a multi-byte character cut at the end of a sample is allowed."""
    try:
        return codecs.getincrementaldecoder(codec)("strict").decode(data, final=final)
    except (UnicodeDecodeError, LookupError):
        return None


def detect_encoding(data: bytes, declared: str | None = None) -> str | None:
    """The codec to decode `data` with, or None when nothing decodes it plausibly.

    A declared charset (HTTP header, <meta>) wins when it decodes cleanly, except that a
    declared single-byte Western charset on bytes that are valid UTF-8 or plausible Chinese
    is a common server misconfiguration and is overridden.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    sample = data[:SAMPLE_BYTES]
    final = len(data) <= SAMPLE_BYTES
    declared_codec = canonical(declared)
    if declared_codec and declared_codec not in ("cp1252", "utf-8"):
        text = _strict(sample, declared_codec, final)
        if text is not None and plausibility(text) >= 0.5:
            return declared_codec
    if _strict(sample, "utf-8", final) is not None:
        return "utf-8"
    best, best_score = None, 0.0
    for codec in _CJK_CANDIDATES:
        text = _strict(sample, codec, final)
        if text is not None:
            score = plausibility(text)
            if score > best_score:
                best, best_score = codec, score
    if best is not None and best_score >= 0.6:
        return best
    # Mostly-ASCII text with a few high bytes is Western (Latin-1/cp1252); anything else is
    # an encoding we do not handle, and mojibake is worse than a quarantine record.
    western = _strict(sample, _WESTERN_FALLBACK, final)
    if western is not None and (declared_codec == "cp1252" or sum(c.isascii() for c in western) >= 0.7 * len(western)):
        return _WESTERN_FALLBACK
    return None


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str, str] | None:
    """(text, codec) for `data`, or None if it is binary or undecodable (the caller quarantines it)."""
    if looks_binary(data):
        return None
    codec = detect_encoding(data, declared)
    if codec is None:
        return None
    try:
        return data.decode(codec), codec
    except UnicodeDecodeError:
        # The sample decoded but a later byte did not: keep the text, mark the damage.
        return data.decode(codec, errors="replace"), codec


def looks_binary(data: bytes, nul_ok: bool = False) -> bool:
    """NUL bytes (outside UTF-16/32 BOM'd text) or a high share of control bytes mean not text.

    With `nul_ok`, NUL bytes only count as control bytes: a table with one damaged row is still
    a table, and the reader drops that row alone.
    """
    sample = data[:8192]
    if not sample or any(sample.startswith(bom) for bom, _ in _BOMS):
        return False
    if b"\x00" in sample and not nul_ok:
        return True
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(sample) > 0.05
