"""Entity-level NER scores with the chunking rules of conlleval, as seqeval applies them by default.

An entity counts as correct only if its type, first and last token all match. Taggers make
ill-formed sequences (an I- tag after O, or after a tag of another type); rather than drop
those tokens, conlleval, and seqeval in its default (non-strict) mode, read such an I- as
the start of a new entity. Scores here follow those rules exactly so that numbers compare
with published CoNLL and seqeval figures (the tests check equality with seqeval on random,
malformed sequences); they differ from seqeval's strict mode, which discards such entities.

The rules are the same for every scheme (BIO/IOB2, IOB1 and BIOES/IOBES all chunk alike under
conlleval); the scheme only decides which tag prefixes are accepted, so that tags of another
scheme, or labels without a prefix, are reported rather than silently mis-chunked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmforge.errors import ConfigError, InputError
from lmforge.evaluate.metrics import averages, prf

# scheme name -> prefixes a tag may carry ("O" stands alone)
SCHEMES = {"BIO": "BI", "IOB2": "BI", "IOB1": "BI", "BIOES": "BIES", "IOBES": "BIES"}


def _prefixes(scheme: str) -> str:
    try:
        return SCHEMES[scheme.upper()]
    except (KeyError, AttributeError):
        raise ConfigError(f"scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})") from None


def _parse(tag: Any, prefixes: str, where: str) -> tuple[str, str]:
    """('B', 'PER') from 'B-PER'; ('O', '') from 'O'; a bare prefix has the type '_' (as in seqeval)."""
    if tag == "O":
        return "O", ""
    if isinstance(tag, str) and tag and tag[0] in prefixes:
        if len(tag) == 1:
            return tag, "_"
        if tag[1] == "-":
            return tag[0], tag[2:] or "_"
    allowed = ", ".join(f"{p}-TYPE" for p in prefixes)
    raise InputError(f"tag {tag!r} at {where} is not valid here: use 'O' or {allowed} (e.g. '{prefixes[0]}-PER')")


def _chunks(tags: Sequence[Any], prefixes: str, where: str) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end) with `end` exclusive, by the conlleval rules.

    A chunk ends before this token if the previous token closed one (E, S), if a B/I run is
    followed by B, S or O, or if the type changes. A chunk starts here at B or S, at I or E
    that follows O, E or S, or at any tag whose type differs from the previous token's.
    """
    found: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    parsed = [_parse(tag, prefixes, f"{where}, position {i}") for i, tag in enumerate(tags)]
    for i, (tag, type_) in enumerate([*parsed, ("O", "")]):
        ends = (
            prev_tag in "ES"
            or (prev_tag in "BI" and tag in "BSO")
            or (prev_tag != "O" and prev_type != type_)
        )
        starts = tag in "BS" or (tag in "IE" and prev_tag in "OES") or (tag != "O" and prev_type != type_)
        if ends:
            found.append((prev_type, begin, i))
        if starts:
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def entities(tags: Sequence[str], scheme: str = "BIO") -> list[tuple[str, int, int]]:
    """The entities of one tagged sentence as (type, start, end), `end` exclusive: `tags[start:end]`.

    Note that seqeval's `get_entities` gives the last index instead (end - 1).
    """
    if not isinstance(tags, Sequence) or isinstance(tags, str) or any(isinstance(t, list | tuple) for t in tags):
        raise InputError("entities() takes the tags of one sentence, a list of strings such as ['B-PER', 'I-PER', 'O']")
    return _chunks(tags, _prefixes(scheme), "sentence 0")


def ner_report(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], scheme: str = "BIO"
) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (micro, macro, weighted, per type) and token accuracy.

    Keys: `precision`, `recall`, `f1` (micro: the usual CoNLL figure); `macro` and `weighted`
    ({precision, recall, f1}); `per_type` ({type: {precision, recall, f1, support}}, types
    sorted); `token_accuracy`; `support` (true entities) and `predicted` (predicted entities).
    Undefined ratios are 0.0 (seqeval's zero_division default), including the macro scores
    when no entity is found anywhere (where seqeval returns nan).
    """
    prefixes = _prefixes(scheme)
    if isinstance(true_tags, str) or isinstance(pred_tags, str):
        raise InputError("true_tags and pred_tags must be lists of sentences, each a list of tags")
    true_tags, pred_tags = list(true_tags), list(pred_tags)
    if not true_tags:
        raise InputError("true_tags is empty: NER scores need at least one tagged sentence")
    if len(true_tags) != len(pred_tags):
        raise InputError(f"true_tags has {len(true_tags)} sentences but pred_tags has {len(pred_tags)}")

    gold: dict[str, set] = {}
    guess: dict[str, set] = {}
    tokens = correct = 0
    for s, (truth, pred) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if isinstance(truth, str) or isinstance(pred, str):
            raise InputError(f"sentence {s} is a string; each sentence must be a list of tags")
        if len(truth) != len(pred):
            raise InputError(f"sentence {s} has {len(truth)} true tags but {len(pred)} predicted tags")
        for type_, start, end in _chunks(truth, prefixes, f"true_tags sentence {s}"):
            gold.setdefault(type_, set()).add((s, start, end))
        for type_, start, end in _chunks(pred, prefixes, f"pred_tags sentence {s}"):
            guess.setdefault(type_, set()).add((s, start, end))
        tokens += len(truth)
        correct += sum(t == p for t, p in zip(truth, pred, strict=True))
    if tokens == 0:
        raise InputError("every sentence is empty: NER scores need at least one tag")

    types = sorted(gold.keys() | guess.keys())
    counts = [
        (len(gold.get(t, set()) & guess.get(t, set())), len(guess.get(t, ())), len(gold.get(t, ()))) for t in types
    ]
    per_type = [prf(*c) for c in counts]
    supports = [c[2] for c in counts]
    micro = prf(sum(c[0] for c in counts), sum(c[1] for c in counts), sum(supports))
    avg = averages(per_type, supports, micro)
    return {
        **micro,
        "macro": avg["macro"],
        "weighted": avg["weighted"],
        "per_type": {t: {**row, "support": n} for t, row, n in zip(types, per_type, supports, strict=True)},
        "token_accuracy": correct / tokens,
        "support": sum(supports),
        "predicted": sum(c[1] for c in counts),
    }
