"""Vectorised shingling and MinHash signatures for a batch of documents.

Python touches each document once (lowercase, length, language); everything per character,
per shingle and per permutation happens in NumPy over the whole batch, so the per-document
interpreter cost stays a few microseconds.

Shingle hashes are polynomial hashes over UTF-32 code points (or over word hashes, for word
n-grams) modulo 2**64, finished with MurmurHash3's 64-bit mixer. Prefix sums make every
window's hash O(1) without a Python loop: with P odd, P has an inverse Q modulo 2**64, so

    S[k] = sum_{j<k} c[j] * Q**j          (a cumulative sum, which wraps modulo 2**64)
    hash(c[s:e]) = (S[e] - S[s]) * P**(e-1) = sum_{j=s}^{e-1} c[j] * P**(e-1-j)

which depends only on the window's content, not on where it sits in the batch. All
constants come from the config's seed, never from Python's `hash`, so results do not depend
on PYTHONHASHSEED or on which process computed them. (Polynomial hashing modulo 2**64 has
known collisions for adversarial Thue-Morse strings; dedup input is not adversarial, and a
colliding shingle only nudges one estimate.)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from lmforge.lang import CJK_RANGES, CJK_SHARE, SAMPLE

U64 = np.uint64
_MIX1, _MIX2 = U64(0xFF51AFD7ED558CCD), U64(0xC4CEB9FE1A85EC53)
_S33 = U64(33)
_SEP = "\n"  # ends each document in a batch: not a word character, so no word spans two documents


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser: a bijection that spreads every input bit over the output."""
    x = x ^ (x >> _S33)
    x *= _MIX1
    x ^= x >> _S33
    x *= _MIX2
    x ^= x >> _S33
    return x


@functools.cache
def _char_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per code point: is it a word character (regex \\w), whitespace, CJK. Built once per process (~20 ms).

    The Basic Multilingual Plane is classified by the regex engine itself; above it only the
    CJK extension ideographs count as word characters (rare scripts there are not worth 0.3 s
    of start-up in every worker).
    """
    bmp = 0x10000
    # surrogates cannot stand in a regex subject here; classify them as spaces (texts decoded with
    # surrogateescape may hold lone ones, encoded with surrogatepass below)
    every = "".join(" " if 0xD800 <= i < 0xE000 else chr(i) for i in range(bmp))
    cjk = np.zeros(0x110000, dtype=bool)
    for lo, hi in CJK_RANGES:
        cjk[lo : hi + 1] = True
    word = cjk.copy()
    word[:bmp] = np.frombuffer(re.sub(r"\W", "\0", every).encode("utf-32-le", "surrogatepass"), dtype=np.uint32) != 0
    space = np.zeros(0x110000, dtype=bool)
    space[:bmp] = np.frombuffer(re.sub(r"\S", "\0", every).encode("utf-32-le", "surrogatepass"), dtype=np.uint32) != 0
    return word, space, cjk


@functools.cache
def _powers(base: int) -> _Powers:
    """One table per base and process: every map task builds a new stage, the powers stay."""
    return _Powers(base)


class _Powers:
    """P**k and Q**k (Q = P's inverse modulo 2**64) for k < length, grown by doubling on demand."""

    def __init__(self, base: int) -> None:
        self.base = base | 1
        self.inverse = pow(self.base, -1, 1 << 64)
        self.up = np.ones(1, dtype=U64)
        self.down = np.ones(1, dtype=U64)

    def ensure(self, n: int) -> None:
        if len(self.up) >= n:
            return
        size = max(n, 2 * len(self.up))
        for attr, b in (("up", self.base), ("down", self.inverse)):
            arr = np.full(size, U64(b), dtype=U64)
            arr[0] = 1
            setattr(self, attr, np.cumprod(arr, dtype=U64))


def _prefix(values: np.ndarray, powers: _Powers) -> np.ndarray:
    """S with S[0] = 0 and S[k] = sum_{j<k} values[j] * Q**j (mod 2**64)."""
    powers.ensure(len(values) + 1)
    out = np.zeros(len(values) + 1, dtype=U64)
    np.cumsum(values * powers.down[: len(values)], dtype=U64, out=out[1:])
    return out


def _span_hashes(prefix: np.ndarray, powers: _Powers, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return fmix64((prefix[ends] - prefix[starts]) * powers.up[ends - 1])


def _windows(seg_starts: np.ndarray, seg_lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end and segment of every n-wide window; a non-empty segment shorter than n is one window."""
    count = np.where(seg_lens >= n, seg_lens - n + 1, np.minimum(seg_lens, 1))
    width = np.minimum(seg_lens, n)
    seg = np.repeat(np.arange(len(seg_lens)), count)
    first = np.cumsum(count) - count
    starts = seg_starts[seg] + (np.arange(len(seg)) - first[seg])
    return starts, starts + width[seg], seg


@dataclass
class Shingler:
    """Turns a batch of texts into one flat array of shingle hashes plus each one's document."""

    word_ngram: int
    char_ngram: int
    seed: int

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0x5EED])
        bases = rng.integers(1 << 32, 1 << 63, size=2, dtype=np.int64)
        self._chars = _powers(int(bases[0]))
        self._words = _powers(int(bases[1]))

    def shingles(self, texts: list[str], mode: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashes (uint64), their document index, and whether each document used character shingles.

        `mode` per document: 1 character n-grams, 0 word n-grams, -1 decide by the share of CJK
        characters in the first 2,000 (`lmforge.lang.is_cjk`'s rule, vectorized). Each
        document's hashes are contiguous (character documents first), which is all
        `MinHasher.signatures` needs.
        """
        char_mode = mode == 1
        undecided = np.flatnonzero(mode < 0)
        if len(undecided):
            char_mode[undecided] = cjk_share([texts[i][:SAMPLE] for i in undecided]) > CJK_SHARE
        hashes, docs = [], []
        for use_chars in (True, False):
            which = np.flatnonzero(char_mode == use_chars)
            if len(which):
                part = [texts[i] for i in which]
                h, seg = self._char_shingles(part) if use_chars else self._word_shingles(part)
                hashes.append(h)
                docs.append(which[seg])
        if not hashes:
            return np.zeros(0, U64), np.zeros(0, np.int64), char_mode
        return np.concatenate(hashes), np.concatenate(docs), char_mode

    def _char_shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Character n-grams of the text without whitespace."""
        compact = ["".join(t.split()) for t in texts]
        lens = np.fromiter((len(t) for t in compact), dtype=np.int64, count=len(compact))
        cps = np.frombuffer("".join(compact).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        starts, ends, seg = _windows(np.cumsum(lens) - lens, lens, self.char_ngram)
        prefix = _prefix(cps.astype(U64) + U64(1), self._chars)
        return _span_hashes(prefix, self._chars, starts, ends), seg

    def _word_shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Word n-grams, a word being a maximal run of regex word characters (as `\\w+`)."""
        word_t, _, _ = _char_tables()
        lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        text_starts = np.cumsum(lens + 1) - lens - 1  # each text is followed by one separator
        cps = np.frombuffer((_SEP.join(texts) + _SEP).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        edges = np.diff(word_t[cps].view(np.int8), prepend=np.int8(0))
        w_starts = np.flatnonzero(edges == 1)
        w_ends = np.flatnonzero(edges == -1)  # the trailing separator closes the last word
        if len(w_starts) == 0:
            return np.zeros(0, U64), np.zeros(0, np.int64)
        prefix = _prefix(cps.astype(U64) + U64(1), self._chars)
        word_hashes = _span_hashes(prefix, self._chars, w_starts, w_ends)
        counts = np.bincount(np.searchsorted(text_starts, w_starts, side="right") - 1, minlength=len(texts))
        starts, ends, seg = _windows(np.cumsum(counts) - counts, counts, self.word_ngram)
        wprefix = _prefix(word_hashes, self._words)
        return _span_hashes(wprefix, self._words, starts, ends), seg


def cjk_share(texts: list[str]) -> np.ndarray:
    """Per text: CJK characters over non-space characters (0 for texts with none)."""
    _, space_t, cjk_t = _char_tables()
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    doc_of = np.repeat(np.arange(len(texts)), lens)
    solid = np.bincount(doc_of, weights=~space_t[cps], minlength=len(texts))
    cjk = np.bincount(doc_of, weights=cjk_t[cps], minlength=len(texts))
    return cjk / np.maximum(solid, 1)


class MinHasher:
    """num_perm affine permutations x -> a*x + b (mod 2**32, a odd: a bijection) of 32-bit shingle hashes.

    32-bit arithmetic halves the memory traffic of 64-bit, and a bijection cannot add
    collisions of its own; the minimum is taken per document with `np.minimum.reduceat`.
    """

    CHUNK = 8192  # shingles per step: CHUNK x num_perm uint32 = 4 MiB at 128 permutations

    def __init__(self, num_perm: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xA11CE])
        self.num_perm = num_perm
        self.a = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)

    def signatures(self, hashes: np.ndarray, docs: np.ndarray, n_docs: int) -> np.ndarray:
        """(n_docs, num_perm) uint32 minima; documents without shingles keep the all-ones sentinel."""
        sig = np.full((n_docs, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        x = (hashes >> U64(32)).astype(np.uint32)
        permuted = np.empty((self.num_perm, self.CHUNK), dtype=np.uint32)
        for lo in range(0, len(x), self.CHUNK):
            part, part_docs = x[lo : lo + self.CHUNK], docs[lo : lo + self.CHUNK]
            # permutations along rows, shingles along columns: each document's minimum is then a
            # reduction over a contiguous run, which NumPy vectorises (about 8x faster than axis 0)
            out = permuted[:, : len(part)]
            np.multiply(self.a[:, None], part[None, :], out=out)
            out += self.b[:, None]
            cut = np.flatnonzero(np.diff(part_docs, prepend=-1))
            mins = np.minimum.reduceat(out, cut, axis=1)
            rows = part_docs[cut]
            sig[rows] = np.minimum(sig[rows], mins.T)
        return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """(n_docs, bands) uint64: each band's `rows` values folded through fmix64 (collisions ~2**-64)."""
    rng = np.random.default_rng([seed, 0xBA2D])
    start = rng.integers(0, 1 << 63, size=bands, dtype=np.int64).astype(U64)
    out = np.empty((sig.shape[0], bands), dtype=U64)
    for j in range(bands):
        h = np.full(sig.shape[0], start[j], dtype=U64)
        for i in range(j * rows, (j + 1) * rows):
            h = fmix64(h ^ sig[:, i].astype(U64))
        out[:, j] = h
    return out
