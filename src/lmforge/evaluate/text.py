"""Generated-text metrics for Chinese and English: BLEU, chrF, ROUGE, exact match and QA token F1.

BLEU and chrF come from sacrebleu, the reference implementation, so scores (0-100, as
published) are comparable across papers; this module only picks the tokenizer: "zh" for
Chinese, which splits Han characters apart, and "13a" otherwise.

ROUGE is computed here because rouge-score, the usual package, keeps only [a-z0-9] and so
gives 0.0 to every Chinese pair. The arithmetic is rouge-score's (per-pair F-measures, then
their mean; ROUGE-L from the longest common subsequence), and on English text the numbers
are identical; Chinese text is split into characters, or into jieba words on request.

Exact match and token F1 follow the SQuAD script for English (lowercase, drop ASCII
punctuation and articles) and the CMRC convention for Chinese (also drop spaces and any
punctuation, full-width included; F1 over characters).

All functions take `references` as one string per prediction or a list of strings per
prediction (several references); a prediction is scored against its best reference.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.errors import ConfigError, InputError, require
from lmforge.lang import HAN_RE, cut, has_han, is_cjk

log = logging.getLogger(__name__)

_WORD_RE = re.compile(r"[^\W_]+")  # runs of letters and digits in any script; "_" separates, as in rouge-score
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)


# --------------------------------------------------------------------------- inputs and language


def _pairs(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """Predictions and, for each, a non-empty list of references; one clear error for any mismatch."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise InputError("predictions and references must be lists of strings, not a single string")
    preds, refs = list(predictions), list(references)
    if not preds:
        raise InputError("predictions is empty: text metrics need at least one prediction")
    if len(preds) != len(refs):
        raise InputError(f"there are {len(preds)} predictions but {len(refs)} references; give one entry per prediction")
    multi: list[list[str]] = []
    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        if not isinstance(pred, str):
            raise InputError(f"prediction {i} is {type(pred).__name__}, not a string")
        group = [ref] if isinstance(ref, str) else list(ref) if isinstance(ref, Sequence) else None
        if not group or not all(isinstance(r, str) for r in group):
            raise InputError(f"references[{i}] must be a string or a non-empty list of strings (got {ref!r:.60})")
        multi.append(group)
    return preds, multi


def detect_lang(texts: Sequence[str]) -> str:
    """'zh' if any text is Chinese or Japanese by `lmforge.lang.is_cjk`, else 'en'.

    One Chinese text is enough on purpose: sacrebleu's "zh" tokenizer treats English almost
    exactly like "13a", whereas "13a" leaves a Chinese sentence as one word and scores it
    near 0, so a bilingual test set is scored as Chinese. A Chinese name inside an English
    sentence does not make it Chinese.
    """
    return "zh" if any(is_cjk(t) for t in texts) else "en"


def _lang(lang: str, refs: list[list[str]]) -> str:
    if lang == "auto":
        return detect_lang([r for group in refs for r in group])
    if lang not in ("en", "zh"):
        raise ConfigError(f"lang must be one of 'auto', 'en', 'zh' (got {lang!r})")
    return lang


def _ref_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot; None where a prediction has fewer references."""
    width = max(len(group) for group in refs)
    return [[group[k] if k < len(group) else None for group in refs] for k in range(width)]


# --------------------------------------------------------------------------- BLEU and chrF


def bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    lang: str = "auto",
    lowercase: bool = False,
) -> dict[str, Any]:
    """Corpus BLEU (0-100) via sacrebleu, tokenized with "zh" for Chinese and "13a" otherwise.

    Returns `bleu`, the four n-gram `precisions`, `brevity_penalty`, `pred_len`, `ref_len`,
    the `tokenize` used and sacrebleu's `signature` (quote it with the score).
    """
    preds, refs = _pairs(predictions, references)
    tokenize = "zh" if _lang(lang, refs) == "zh" else "13a"
    log.debug("BLEU with sacrebleu tokenize=%s", tokenize)
    scorer = require("sacrebleu", "eval").BLEU(tokenize=tokenize, lowercase=lowercase)
    result = scorer.corpus_score(preds, _ref_streams(refs))
    return {
        "bleu": float(result.score),
        "precisions": [float(p) for p in result.precisions],
        "brevity_penalty": float(result.bp),
        "pred_len": int(result.sys_len),
        "ref_len": int(result.ref_len),
        "tokenize": tokenize,
        "signature": str(scorer.get_signature()),
    }


def chrf(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    word_order: int = 0,
    lowercase: bool = False,
) -> dict[str, Any]:
    """Corpus chrF (0-100) via sacrebleu; `word_order=2` gives chrF++.

    chrF compares character n-grams with spaces removed, so it needs no tokenizer and treats
    Chinese and English alike (chrF++'s word n-grams do split on spaces, though).
    """
    preds, refs = _pairs(predictions, references)
    if word_order not in (0, 1, 2):
        raise ConfigError(f"word_order must be 0 (chrF), 1 or 2 (chrF++) (got {word_order!r})")
    scorer = require("sacrebleu", "eval").CHRF(word_order=word_order, lowercase=lowercase)
    result = scorer.corpus_score(preds, _ref_streams(refs))
    return {"chrf": float(result.score), "word_order": word_order, "signature": str(scorer.get_signature())}


# --------------------------------------------------------------------------- ROUGE


def words(text: str) -> list[str]:
    """Lowercased runs of letters and digits; on ASCII text exactly rouge-score's tokens (no stemming).

    Unlike rouge-score it keeps non-ASCII letters ("café"), and a run of Han characters is one
    token, which suits Chinese that is already segmented with spaces.
    """
    return _WORD_RE.findall(text.lower())


def chars(text: str) -> list[str]:
    """Each Han character is a token; other letters and digits form lowercased words, as in `words`."""
    return _WORD_RE.findall(HAN_RE.sub(r" \g<0> ", text.lower()))


def jieba_words(text: str) -> list[str]:
    """jieba's words, lowercased, without spaces and punctuation (segments are cut further into `words`)."""
    return [w for segment in cut(text) for w in words(segment)]


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"word": words, "char": chars, "jieba": jieba_words}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _fmeasure(overlap: int, pred_len: int, ref_len: int) -> float:
    """rouge-score's F: P and R first (empty sides count as length 1), then their harmonic mean."""
    precision, recall = overlap / max(pred_len, 1), overlap / max(ref_len, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    p, r = _ngrams(pred, n), _ngrams(ref, n)
    return _fmeasure(sum((p & r).values()), sum(p.values()), sum(r.values()))


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence, bit-parallel (Crochemore et al., 2001).

    The textbook table costs len(a) * len(b) Python steps, which for two 1,000-character
    Chinese summaries is most of a second; here each token of `a` costs a few operations on
    one len(b)-bit integer. Bit j of `v` is 0 where the LCS length grows at column j of the
    table's current row, so the length is the number of zero bits.
    """
    if not a or not b:
        return 0
    where: dict[Any, int] = {}
    for j, token in enumerate(b):
        where[token] = where.get(token, 0) | (1 << j)
    full = (1 << len(b)) - 1
    v = full
    for token in a:
        u = v & where.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def _rouge_l(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return 0.0
    return _fmeasure(lcs_length(pred, ref), len(pred), len(ref))


def rouge(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], tokenizer: str = "auto"
) -> dict[str, float]:
    """Mean per-pair ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1).

    `tokenizer`: "char" (Han characters, other words), "jieba" (Chinese words), "word"
    (letters-and-digits runs), or "auto": "char" if any text has a Han character, else "word"
    (the two agree on text without Han). With several references each score takes the best.
    """
    preds, refs = _pairs(predictions, references)
    if tokenizer == "auto":
        han = any(has_han(t) for t in preds) or any(has_han(r) for g in refs for r in g)
        tokenizer = "char" if han else "word"
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer must be one of 'auto', 'char', 'jieba', 'word' (got {tokenizer!r})")
    tokenize = TOKENIZERS[tokenizer]
    totals = [0.0, 0.0, 0.0]
    for pred, group in zip(preds, refs, strict=True):
        p = tokenize(pred)
        best = [0.0, 0.0, 0.0]
        for ref in group:
            r = tokenize(ref)
            scores = (_rouge_n(p, r, 1), _rouge_n(p, r, 2), _rouge_l(p, r))
            best = [max(b, s) for b, s in zip(best, scores, strict=True)]
        totals = [t + b for t, b in zip(totals, best, strict=True)]
    n = len(preds)
    return {"rouge1": totals[0] / n, "rouge2": totals[1] / n, "rougeL": totals[2] / n}


# --------------------------------------------------------------------------- exact match and QA F1


def _is_zh(*texts: str) -> bool:
    """The answer-normalization rule: a single Han character on either side makes a pair Chinese."""
    return any(has_han(t) for t in texts)


def normalize_answer(text: str, zh: bool | None = None) -> str:
    """SQuAD normalization for English; for Chinese (`zh`, default: text has Han) CMRC-style.

    Chinese: NFKC (full-width letters and symbols to ASCII), lowercase, then drop whitespace
    and every punctuation mark, Chinese or ASCII. English: lowercase, drop ASCII punctuation,
    drop the articles a/an/the, collapse whitespace.
    """
    if zh is None:
        zh = _is_zh(text)
    if zh:
        text = unicodedata.normalize("NFKC", text).lower()
        return "".join(
            ch for ch in text
            if not (ch.isspace() or ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P"))
        )
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def exact_match(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], normalize: bool = True
) -> float:
    """Share (0-1) of predictions equal to one of their references, after `normalize_answer` if asked.

    A pair is normalized the Chinese way if either side has a Han character.
    """
    preds, refs = _pairs(predictions, references)
    hits = 0
    for pred, group in zip(preds, refs, strict=True):
        for ref in group:
            if normalize:
                zh = _is_zh(pred, ref)
                same = normalize_answer(pred, zh) == normalize_answer(ref, zh)
            else:
                same = pred == ref
            if same:
                hits += 1
                break
    return hits / len(preds)


def _answer_tokens(text: str, zh: bool) -> list[str]:
    normalized = normalize_answer(text, zh)
    return chars(normalized) if zh else normalized.split()


def _token_f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)  # SQuAD v2: two empty answers agree
    same = sum((Counter(pred) & Counter(ref)).values())
    return _fmeasure(same, len(pred), len(ref))


def qa_f1(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean (0-1) of SQuAD's token-overlap F1 against the best reference; Chinese pairs use characters."""
    preds, refs = _pairs(predictions, references)
    total = 0.0
    for pred, group in zip(preds, refs, strict=True):
        best = 0.0
        for ref in group:
            zh = _is_zh(pred, ref)
            best = max(best, _token_f1(_answer_tokens(pred, zh), _answer_tokens(ref, zh)))
        total += best
    return total / len(preds)
