"""Hashed features of a document for the fast quality classifier: its n-grams and its shape.

One featuriser serves Chinese and English alike, so a mixed corpus needs no language switch:
- tokens: a run of letters and digits is a word (lowercased, full-width folded to ASCII, every
  digit read as 0, so years and prices generalise); a Han or kana character (`lang.CJK_RANGES`)
  is a token of its own, as is every punctuation mark or symbol (link lists and menus are made of
  `|`, `»` and `›`); a line break is a token too. Word n-grams for English and character n-grams
  for Chinese then fall out of the same "n consecutive tokens" rule.
- n-grams: 1..`ngrams` consecutive tokens, hashed (splitmix64 over FNV-1a) into 2**`bits` slots;
  each slot holds log(1 + count), and the row is L2-normalised, so a document's length does not
  decide its score.
- shape: eight binned numbers, one slot each with value 1: characters and lines (log2), mean line
  length (log2), the share of repeated lines, of lines ending a sentence, of short lines (< 30
  characters), of punctuation and of digits. N-grams alone cannot see a page whose every line
  appears twice: its normalised counts equal the original's.

Only the first `max_chars` characters are read (100,000 by default), so time and memory per
document are bounded whatever comes in. The C extension `_features` and `_py_features` compute
the same features (a test checks them slot for slot); Python is the fallback where the extension
could not be built, at about a hundredth of the speed.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import unicodedata
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

SPACE, NEWLINE, WORD, CJK, PUNCT = 0, 1, 2, 3, 4
TERMINAL_BIT = 8
N_STATS = 8
_M64 = (1 << 64) - 1
FNV_OFFSET, FNV_PRIME, GOLDEN = 1469598103934665603, 1099511628211, 0x9E3779B97F4A7C15


@functools.lru_cache(maxsize=1)
def char_table() -> bytes:
    """One class byte per code point up to the last CJK one (the C code reads any later one as a letter)."""
    from lmforge.clean.filters.common import TERMINAL, TERMINAL_ZH
    from lmforge.lang import CJK_RANGES

    size = max(hi for _, hi in CJK_RANGES) + 1
    table = bytearray(size)
    for cp in range(size):
        cat = unicodedata.category(chr(cp))
        if cat[0] in "LMN":
            table[cp] = WORD
        elif cat[0] in "PS":
            table[cp] = PUNCT
        # separators, controls (tabs, \r), unassigned: SPACE (0)
    for lo, hi in CJK_RANGES:
        table[lo: hi + 1] = bytes([CJK]) * (hi + 1 - lo)
    table[ord("\n")] = NEWLINE
    for mark in (*TERMINAL, *TERMINAL_ZH):
        if len(mark) == 1 and ord(mark) < size:
            table[ord(mark)] |= TERMINAL_BIT
    return bytes(table)


@functools.lru_cache(maxsize=1)
def _extension():
    try:
        return importlib.import_module("lmforge.quality._features")
    except ImportError:  # built without a C compiler
        log.warning("lmforge.quality._features is not built: hashed features in pure Python, ~100x slower")
        return None


def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _fold(c: int) -> int:
    if 0xFF01 <= c <= 0xFF5E:
        c -= 0xFEE0
    if 65 <= c <= 90:
        c += 32
    return 48 if 49 <= c <= 57 else c


def _bin(x: float, scale: float, top: int) -> int:
    return min(max(int(math.floor(x * scale)), 0), top)


def _py_features(text: str, bits: int, ngrams: int, max_chars: int) -> dict[int, float]:
    """The features of one document, slot -> value: the reference the C extension is checked against."""
    table, mask = char_table(), (1 << bits) - 1
    tokens: list[int] = []
    line_hashes: list[int] = []
    word, line, in_word, last_newline, last_class = FNV_OFFSET, FNV_OFFSET, False, True, SPACE
    chars = punct = digits = line_chars = lines = terminal_lines = short_lines = 0
    n = min(len(text), max_chars)
    for i in range(n + 1):
        c = ord(text[i]) if i < n else 10
        klass = table[c] if c < len(table) else WORD
        cls = klass & 7
        if cls != WORD and in_word:
            tokens.append(word)
            in_word = False
        if cls == NEWLINE:
            if line_chars:
                lines += 1
                terminal_lines += bool(last_class & TERMINAL_BIT)
                short_lines += line_chars < 30
                line_hashes.append(line)
            if not last_newline and i < n:
                tokens.append(_mix(GOLDEN ^ 10))
            last_newline, line, line_chars = True, FNV_OFFSET, 0
            continue
        if cls == SPACE:
            continue
        f = _fold(c)
        chars, line_chars, last_class, last_newline = chars + 1, line_chars + 1, klass, False
        line = ((line ^ f) * FNV_PRIME) & _M64
        punct += cls == PUNCT
        digits += f == 48
        if cls == WORD:
            if not in_word:
                word, in_word = FNV_OFFSET, True
            word = ((word ^ f) * FNV_PRIME) & _M64
        else:
            tokens.append(_mix(((FNV_OFFSET ^ f) * FNV_PRIME) & _M64))
    counts: dict[int, float] = {}
    for t in range(len(tokens)):
        h = _mix(tokens[t])
        counts[h & mask] = counts.get(h & mask, 0.0) + 1.0
        for k in range(1, ngrams):
            if t + k >= len(tokens):
                break
            h = _mix((h * GOLDEN + tokens[t + k] + k) & _M64)
            counts[h & mask] = counts.get(h & mask, 0.0) + 1.0
    feats = {slot: math.log1p(v) for slot, v in counts.items()}
    norm = math.sqrt(sum(v * v for v in feats.values())) or 1.0
    feats = {slot: v / norm for slot, v in feats.items()}
    dup = sum(a == b for a, b in zip(sorted(line_hashes), sorted(line_hashes)[1:], strict=False))
    nl, nc = lines or 1, chars or 1

    def log2_bin(x: float) -> int:
        return _bin(math.log2(x + 1.0), 1.0, 24)

    stats = [log2_bin(chars), log2_bin(lines), log2_bin(chars / nl), _bin(dup / nl, 10, 10),
             _bin(terminal_lines / nl, 10, 10), _bin(short_lines / nl, 10, 10), _bin(punct / nc, 40, 12),
             _bin(digits / nc, 40, 12)]
    for s, value in enumerate(stats):
        slot = _mix((GOLDEN * (s + 1) + value + 0x5157) & _M64) & mask
        feats[slot] = feats.get(slot, 0.0) + 1.0
    return feats


class Featurizer:
    """Documents -> hashed sparse rows, or straight to linear scores (see the module docstring)."""

    def __init__(self, bits: int = 20, ngrams: int = 2, max_chars: int = 100_000) -> None:
        if not 1 <= bits <= 30 or not 1 <= ngrams <= 5 or max_chars < 1:
            raise ValueError(f"bits 1..30, ngrams 1..5, max_chars >= 1; got {bits}, {ngrams}, {max_chars}")
        self.bits, self.ngrams, self.max_chars = bits, ngrams, max_chars

    @property
    def dim(self) -> int:
        return 1 << self.bits

    def matrix(self, texts: Sequence[str]):
        """A scipy CSR matrix (N, 2**bits) of float32: the training input."""
        from scipy.sparse import csr_matrix

        texts = list(texts)
        ext = _extension()
        if ext is not None:
            indptr, indices, values = ext.featurize(texts, char_table(), self.bits, self.ngrams, self.max_chars)
            indptr = np.frombuffer(indptr, dtype=np.int64)
            indices = np.frombuffer(indices, dtype=np.int32).copy()  # sorted in place below
            values = np.frombuffer(values, dtype=np.float32).copy()
        else:
            rows = [sorted(_py_features(t, self.bits, self.ngrams, self.max_chars).items()) for t in texts]
            indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
            indices = np.asarray([i for r in rows for i, _ in r], dtype=np.int32)
            values = np.asarray([v for r in rows for _, v in r], dtype=np.float32)
        matrix = csr_matrix((values, indices, indptr), shape=(len(texts), self.dim))
        matrix.sort_indices()  # the C rows come in first-seen order
        return matrix

    def scores(self, texts: Sequence[str], weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """weight (K, 2**bits) . features + bias, (N, K) float32, without building the rows (in C)."""
        texts = list(texts)
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        ext = _extension()
        if ext is None:
            return (self.matrix(texts) @ weight.T + bias).astype(np.float32)
        out = ext.score(texts, char_table(), self.bits, self.ngrams, self.max_chars, weight, bias)
        return np.frombuffer(out, dtype=np.float32).reshape(len(texts), len(bias))
