"""Entity spans, tokens and BIO tags, converted into one another in one place.

A span is `(start, end, label)` in characters of a text, end exclusive. Labelled files carry
spans (Label Studio, `{start, end, label}` JSON) or tokens with BIO tags (CoNLL-style); models
train on tokens with tags, and people review spans. Every conversion goes through the few
functions here so that a span means the same thing in the loaders, the labelling tools, the
augmentation stages and the built-in tasks:

- `spans_to_tags(offsets, spans)`: BIO tags of tokens at the given character offsets. A token
  partly inside a span belongs to it. BIO cannot nest entities, so of overlapping spans the
  earliest (then the longest) is kept, the others are dropped and counted.
- `tags_to_spans(tags, offsets)`: the inverse. An I- tag that does not continue an entity of its
  type starts one, as `repair_bio` reads it; any other non-O tag starts an entity.
- `tokenize_with_offsets(text)` (BERT's basic tokenization), `locate_tokens(text, tokens)` (tokens
  found in a text left to right) and `join_tokens(tokens, sep)` (a text made of tokens) give the
  offsets both need.

Only the BIO (IOB2) scheme is produced; IOB1 input is read with `repair_bio`.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from lmforge.errors import InputError
from lmforge.lang import HAN

Span = tuple[int, int, str]
Offsets = Sequence[tuple[int, int]]


class RowError(InputError):
    """One example cannot be read; loaders add the file and line, or skip it with on_error=skip."""


# Han, plus radicals, 々〆, Hangzhou numerals, kana and bopomofo: each of these is a token of its own.
_CJK = HAN + "\u2e80-\u2fdf\u3005\u3006\u3021-\u3029\u3040-\u30ff\u3100-\u312f"
# one token per Chinese/Japanese character; runs of other letters and digits (English words, with
# an inner apostrophe); any other non-space character alone. This is BERT's basic tokenization.
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+(?:['’](?:(?![{_CJK}])\w)+)*|\S")


def tokenize_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) per token: Chinese per character, English by whitespace and punctuation."""
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def locate_tokens(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) of each token in `text`, searched left to right after the previous one.

    Works for a text's own tokens, one character each, or tokens joined with any separator.
    """
    offsets, cursor = [], 0
    for tok in tokens:
        start = text.find(tok, cursor)
        if start < 0:
            raise RowError(f"token {tok!r} is not in the text after character {cursor}: {text[:60]!r}")
        cursor = start + len(tok)
        offsets.append((start, cursor))
    return offsets


def join_tokens(tokens: Sequence[str], sep: str = " ") -> tuple[str, list[tuple[int, int]]]:
    """The text of `tokens` joined by `sep`, and each token's (start, end) in it."""
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append((pos, pos + len(tok)))
        pos += len(tok) + len(sep)
    return sep.join(tokens), offsets


def char_offsets(text: str) -> list[tuple[int, int]]:
    """One (i, i + 1) per character: the offsets of character tokens (Chinese NER)."""
    return [(i, i + 1) for i in range(len(text))]


def _checked(span: Any, text_len: int) -> Span:
    start, end, label = span
    if not (isinstance(start, int) and isinstance(end, int)):
        raise RowError(f"span offsets must be integers (got {start!r}-{end!r} for {label})")
    if not 0 <= start < end <= text_len:
        raise RowError(f"span {start}-{end} ({label}) is outside the text of {text_len} characters")
    return start, end, label


def spans_to_tags(offsets: Offsets, spans: Iterable[Span], text_len: int, *,
                  empty: str = "raise") -> tuple[list[str], int]:
    """BIO tags of the tokens at `offsets` and the number of overlapping spans dropped.

    Spans are checked to be integer offsets inside a text of `text_len` characters. A span that
    covers no token raises, or with `empty="ignore"` is left out (not counted as dropped).
    """
    ends = [e for _, e in offsets]
    tags = ["O"] * len(offsets)
    dropped = 0
    for span in sorted(spans, key=lambda s: (s[0], -s[1])):
        start, end, label = _checked(span, text_len)
        i = bisect.bisect_right(ends, start)
        inside = []
        while i < len(offsets) and offsets[i][0] < end:
            inside.append(i)
            i += 1
        if not inside:
            if empty == "ignore":
                continue
            raise RowError(f"span {start}-{end} ({label}) covers only whitespace")
        if any(tags[j] != "O" for j in inside):
            dropped += 1
            continue
        tags[inside[0]] = f"B-{label}"
        for j in inside[1:]:
            tags[j] = f"I-{label}"
    return tags, dropped


def spans_to_bio(text: str, spans: Iterable[Span]) -> tuple[list[str], list[str], int]:
    """Tokens (`tokenize_with_offsets`), their BIO tags and the number of overlapping spans dropped."""
    toks = tokenize_with_offsets(text)
    tags, dropped = spans_to_tags([(s, e) for _, s, e in toks], spans, len(text))
    return [t for t, _, _ in toks], tags, dropped


def tags_to_spans(tags: Sequence[str], offsets: Offsets) -> list[Span]:
    """Character spans (start, end, type) of tagged tokens at `offsets`."""
    if len(tags) != len(offsets):
        raise RowError(f"{len(offsets)} tokens but {len(tags)} tags")
    spans: list[list[Any]] = []
    prev = "O"
    for tag, (start, end) in zip(tags, offsets, strict=True):
        kind = tag[2:] if tag != "O" else ""
        if kind and tag.startswith("I-") and prev[2:] == kind and spans:
            spans[-1][1] = end
        elif kind:
            spans.append([start, end, kind])
        prev = tag
    return [(s, e, k) for s, e, k in spans]


def bio_to_spans(text: str, tokens: Sequence[str], tags: Sequence[str]) -> list[Span]:
    """Character spans of BIO-tagged tokens, the tokens found in `text` left to right."""
    if len(tokens) != len(tags):
        raise RowError(f"{len(tokens)} tokens but {len(tags)} tags")
    return tags_to_spans(tags, locate_tokens(text, tokens))


def repair_bio(tags: Sequence[str]) -> list[str]:
    """BIO (IOB2) tags from BIO or IOB1: an I-X that does not continue an X entity starts one (B-X)."""
    out: list[str] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            out.append(tag)
            continue
        if not (isinstance(tag, str) and len(tag) > 2 and tag[:2] in ("B-", "I-")):
            raise RowError(f"tag {tag!r} at token {i} is not O, B-TYPE or I-TYPE")
        prev = out[-1] if out else "O"
        out.append(f"B-{tag[2:]}" if tag[0] == "I" and prev[2:] != tag[2:] else tag)
    return out


def entity_types(tags: Iterable[str]) -> list[str]:
    """The sorted entity types of BIO tags."""
    return sorted({t[2:] for t in tags if t != "O"})


def bio_labels(types: Iterable[str]) -> list[str]:
    """The tag list of a model's output layer: "O", then B- and I- of each type in the order given."""
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


# --------------------------------------------------------------------------- spans as written in files


def read_spans(value: Any) -> list[Span]:
    """Spans from a file's field: {start, end, label} objects (or labels: [...] as Label Studio),
    [start, end, label] lists, or a JSON string of either. Offsets are checked by `spans_to_tags`.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(f"spans must be a JSON list of {{start, end, label}} (got {value[:40]!r})") from None
    if not isinstance(value, list):
        raise RowError(f"spans must be a list of {{start, end, label}} (got {type(value).__name__})")
    out = []
    for s in value:
        if isinstance(s, dict):
            label = s.get("label") or (s.get("labels") or [None])[0]
            out.append((s.get("start"), s.get("end"), label))
        elif isinstance(s, list | tuple) and len(s) == 3:
            out.append(tuple(s))
        else:
            raise RowError(f"span {s!r} is not {{start, end, label}} or [start, end, label]")
        if not isinstance(out[-1][2], str) or not out[-1][2]:
            raise RowError(f"span {s!r} has no label")
    return out  # type: ignore[return-value]


def valid_spans(value: Any, text_len: int) -> list[Span] | None:
    """Sorted spans when `value` is a list of valid, non-overlapping spans over `text_len` characters, else None."""
    if isinstance(value, str):
        return None
    try:
        spans = sorted(_checked(s, text_len) for s in read_spans(value))
    except RowError:
        return None
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
        return None  # overlapping spans: no BIO labelling can hold them
    return spans


def format_spans(spans: Iterable[Span], like: Sequence[Any]) -> list:
    """Spans in the style a record had them: {start, end, label} objects or [start, end, label] lists."""
    if like and isinstance(like[0], dict):
        return [{"start": s, "end": e, "label": t} for s, e, t in spans]
    return [[s, e, t] for s, e, t in spans]
