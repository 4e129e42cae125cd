"""Encode documents to ids with lmforge's compiled byte-level BPE when the tokenizer allows it.

Shard encoding needs only ids, yet `tokenizers` builds token strings, offsets and masks for every
token, which costs more than the BPE itself. `_fastbpe` (C, built at install time) computes only
the ids, for two layouts of byte-level BPE without dropout: the one lmforge trains and GPT-2 uses
(no normalizer, optional single-digit split, GPT-2's regex), and the one of Llama 3 and Qwen2,
2.5 and 3 (a Split pre-tokenizer with their regex, then ByteLevel without its own regex; Qwen adds
NFC, Llama 3 `ignore_merges`). `encoder_for` reads the tokenizer.json and returns None for
anything else, and callers then use `tokenizers` itself, so the ids never depend on which path
ran. Tests compare both paths on every code point below 0x40000 and on the corpora.

What tokenizers does before its pre-tokenizer is done here in Python: the text is cut at
non-special added tokens (Qwen's `<tool_call>`; special ones are read as text, see
`encode_with_tokenizers`) and each piece between them is put in NFC. Python's NFC is used only
for text without the characters on which it and tokenizers' (older) Unicode tables disagree;
those are found once, by running both on every code point (`nfc_differences`).

The character classes (letter, number, digit, space) must be Oniguruma's, the regex engine inside
`tokenizers`. Python's `unicodedata` gives them in milliseconds, but only equal ones when both
follow the same Unicode version; `class_table` checks letters added in recent versions on both
sides and, when they disagree, reads every class from Oniguruma itself (a few tenths of a
second). A probe text is then encoded both ways and the encoder is refused if any id differs.

`LMFORGE_FAST_BPE=0` turns the compiled path off (to compare, or to rule it out).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.tokenize.bpe import byte_level_chars

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

_CLASS = {"Lu": 1, "Ll": 1, "Lt": 1, "Lm": 1, "Lo": 1, "Nl": 2, "No": 2, "Nd": 3, "Zs": 4, "Zl": 4, "Zp": 4}
_SPACE_CONTROLS = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85)  # Oniguruma's \s beyond the Z categories
_DIGIT_SPLIT = {"type": "Split", "pattern": {"Regex": r"\p{Nd}"}, "behavior": "Isolated", "invert": False}
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2, 2.5 and 3: one number per match
_SPLIT_REGEXES = {LLAMA3_REGEX: 3, QWEN2_REGEX: 1}  # the Split regexes C reproduces: most numbers in one match
# Letters added in Unicode 13.0, 14.0, 15.0 (two), 15.1, 16.0 (two) and 17.0: whoever knows the
# same ones follows the same Unicode version.
_MARKERS = "\U00030000\u0870\U0001e030\U00031350\U0002ebf0\u1c89\U000105c0\U000323b0"
TABLE_SIZE = 0x40000  # nothing above is a letter, number or space in Unicode up to 17.0
_CACHE: OrderedDict[tuple, tuple[Tokenizer, Any]] = OrderedDict()


def enabled() -> bool:
    return os.environ.get("LMFORGE_FAST_BPE", "1") != "0"


@functools.lru_cache(maxsize=1)
def class_table() -> bytes:
    """One byte per code point below TABLE_SIZE: other 0, letter 1, number 2, decimal digit 3, space 4."""
    if same_unicode_version():
        return unicodedata_table()
    logger.info("Unicode %s here knows other letters than tokenizers' regex engine; reading its classes",
                unicodedata.unidata_version)
    return onig_table()


def same_unicode_version() -> bool:
    """Whether unicodedata and Oniguruma know the same marker letters (so follow one Unicode version)."""
    ours = {c for c in _MARKERS if unicodedata.category(c).startswith("L")}
    return ours == {text for text, _ in _onig_split(r"\p{L}", _MARKERS)}


def unicodedata_table() -> bytes:
    category = unicodedata.category
    table = bytearray(_CLASS.get(category(chr(cp)), 0) for cp in range(TABLE_SIZE))
    for cp in _SPACE_CONTROLS:
        table[cp] = 4
    return bytes(table)


def onig_table() -> bytes:
    """The classes as Oniguruma sees them: every code point run through its \\p{L}, \\p{N}, \\p{Nd}, \\s."""
    text = "".join(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "\x00" for cp in range(TABLE_SIZE))
    table = bytearray(TABLE_SIZE)
    for pattern, cls in ((r"\p{L}+", 1), (r"\p{N}+", 2), (r"\p{Nd}+", 3), (r"\s+", 4)):
        for _, (start, end) in _onig_split(pattern, text):
            table[start:end] = bytes([cls]) * (end - start)
    return bytes(table)


def _onig_split(pattern: str, text: str) -> list[tuple[str, tuple[int, int]]]:
    """The runs of `text` that `pattern` matches, with character offsets, by tokenizers' own regex."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True).pre_tokenize_str(text)


@dataclass(frozen=True)
class Layout:
    """How the compiled path reproduces a tokenizer: which regex, and what comes before and around it."""

    pattern: str  # "gpt2" or "llama3" (Llama 3's and Qwen2's regex, told apart by max_digits)
    max_digits: int = 0  # numbers in one match of the llama3 regex: 3 (Llama 3) or 1 (Qwen2)
    split_digits: bool = False  # every \p{Nd} split off before GPT-2's regex (lmforge's layout)
    nfc: bool = False
    ignore_merges: bool = False


def _layout(spec: dict[str, Any]) -> Layout | str:
    """The layout of this tokenizer.json, or why the compiled path cannot reproduce its ids."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model is {model.get('type')}, not BPE"
    normalizer = spec.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        return f"it has a normalizer other than NFC ({normalizer.get('type')})"
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback"):
        if model.get(key):
            return f"BPE {key} is set"
    pre = _pre_tokenizer(spec.get("pre_tokenizer") or {})
    if isinstance(pre, str):
        return pre
    for token in spec.get("added_tokens", []):
        if not token.get("special") and any(token.get(k) for k in ("normalized", "lstrip", "rstrip", "single_word")):
            return (f"the non-special added token {token.get('content')!r} sets normalized, lstrip, rstrip or "
                    "single_word, which change where it splits the text")
    return Layout(*pre, nfc=normalizer is not None, ignore_merges=bool(model.get("ignore_merges")))


def _pre_tokenizer(pre: dict[str, Any]) -> tuple[str, int, bool] | str:
    """(pattern, max_digits, split_digits) for a pre-tokenizer C reproduces, or why it cannot."""
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    split_digits = len(steps) == 2 and steps[0] == _DIGIT_SPLIT
    if split_digits:
        steps = steps[1:]
    last = steps[-1] if steps else {}
    if len(steps) == 1 and last.get("type") == "ByteLevel" and last.get("use_regex", True):
        if last.get("add_prefix_space"):
            return "pre-tokenizer is ByteLevel with add_prefix_space (C reproduces add_prefix_space=False)"
        return "gpt2", 0, split_digits
    if len(steps) != 2 or split_digits or steps[0].get("type") != "Split":
        return ("pre-tokenizer is neither [digit split,] ByteLevel(add_prefix_space=False, use_regex=True) nor "
                "Split(Llama 3's or Qwen2's regex) + ByteLevel(add_prefix_space=False, use_regex=False)")
    split = steps[0]
    regex = (split.get("pattern") or {}).get("Regex")
    if regex not in _SPLIT_REGEXES:
        return f"its Split pre-tokenizer's pattern is not Llama 3's or Qwen2's regex: {split.get('pattern')}"
    if split.get("behavior") != "Isolated" or split.get("invert"):
        return f"its Split pre-tokenizer has behavior {split.get('behavior')}, invert {split.get('invert')} " \
               "(C reproduces Isolated, invert false)"
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space") or last.get("use_regex", True):
        return "its Split pre-tokenizer is not followed by ByteLevel(add_prefix_space=False, use_regex=False)"
    return "llama3", _SPLIT_REGEXES[regex], False


def _tables(model: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """(256 byte ids, merge triples) as uint32 bytes, or None if a byte or merged token is missing."""
    vocab: dict[str, int] = model["vocab"]
    try:
        byte_ids = np.array([vocab[c] for c in byte_level_chars()], dtype=np.uint32)
        triples = np.empty((len(model["merges"]), 3), dtype=np.uint32)
        for rank, merge in enumerate(model["merges"]):
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            triples[rank] = (vocab[left], vocab[right], vocab[left + right])
    except (KeyError, ValueError):
        return None
    return byte_ids.tobytes(), triples.tobytes()


def _words(vocab: dict[str, int]) -> dict[str, bytes]:
    """The vocabulary as bytes, for `ignore_merges`: C looks a whole match up in it before merging.

    Entries not spelled in the byte-level alphabet can never be a match's spelling and are left out.
    """
    byte_of = {c: b for b, c in enumerate(byte_level_chars())}
    blob = bytearray()
    ends, ids = [], []
    for token, token_id in vocab.items():
        if all(c in byte_of for c in token):
            blob += bytes(byte_of[c] for c in token)
            ends.append(len(blob))
            ids.append(token_id)
    return {"words": bytes(blob), "word_ends": np.array(ends, dtype=np.uint32).tobytes(),
            "word_ids": np.array(ids, dtype=np.uint32).tobytes()}


@functools.lru_cache(maxsize=1)
def nfc_differences() -> frozenset[str]:
    """The characters whose NFC differs between unicodedata and tokenizers (and their decompositions' parts).

    Each Unicode version adds characters that decompose, compose or reorder (a combining class),
    and tokenizers' NFC follows an older version than recent Pythons. Every code point is run
    through both, alone (its decomposition), between `a` and U+0334 and after U+0345 (the lowest
    and highest combining classes, so any class unknown to one side reorders differently). A text
    without these characters gets the same NFC from both.
    """
    from tokenizers import normalizers

    nfc, nfd = normalizers.NFC(), normalizers.NFD()
    points = [c for c in range(TABLE_SIZE) if not 0xD800 <= c <= 0xDFFF and c != 0x0A] + [*range(0xE0000, 0xE1000)]
    found: set[str] = set()
    for i in range(0, len(points), 0x8000):
        chars = [chr(c) for c in points[i : i + 0x8000]]
        single = "\n".join(chars)
        for mine, theirs in ((unicodedata.normalize("NFD", single), nfd.normalize_str(single)),
                             (unicodedata.normalize("NFC", single), nfc.normalize_str(single))):
            for c, a, b in zip(chars, mine.split("\n"), theirs.split("\n"), strict=True):
                if a != b:
                    found.update(c, a, b)
        probes = "\n".join(f"a{c}\u0334\n\u0345{c}" for c in chars)
        mine, theirs = unicodedata.normalize("NFC", probes).split("\n"), nfc.normalize_str(probes).split("\n")
        found.update(chars[k // 2] for k, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def _nfc_by_tokenizers() -> bytes | None:
    """A bitset of the code points whose text only tokenizers' own NFC normalizes as tokenizers does."""
    differ = nfc_differences()
    if not differ:
        return None
    logger.info("NFC from Unicode %s here differs from tokenizers' on %d characters; text holding them is "
                "normalized by tokenizers", unicodedata.unidata_version, len(differ))
    bits = np.zeros(0x110000 // 8, dtype=np.uint8)
    for c in map(ord, differ):
        bits[c >> 3] |= 1 << (c & 7)
    return bits.tobytes()


def nfc(text: str) -> str:
    """`text` in NFC exactly as tokenizers' NFC normalizer gives it (needs the compiled module)."""
    if text.isascii():
        return text
    bits = _nfc_by_tokenizers()
    if bits is not None and importlib.import_module("lmforge.tokenize._fastbpe").any_flagged(text, bits):
        from tokenizers import normalizers

        try:
            return normalizers.NFC().normalize_str(text)
        except UnicodeEncodeError:  # a lone surrogate: C hands the document back to tokenizers anyway
            return text
    return unicodedata.normalize("NFC", text)


class Prepare:
    """What tokenizers does to a text before its pre-tokenizer: non-special added tokens cut out as
    ids (leftmost-longest, as its Aho-Corasick matcher), NFC on each piece between them.

    Special tokens stay text (`encode_with_tokenizers` sets `encode_special_tokens`), but are
    matched all the same, since one of them can hide a shorter added token it overlaps.
    """

    def __init__(self, added_tokens: list[dict[str, Any]], nfc_pieces: bool) -> None:
        raw = [t for t in added_tokens if t.get("content") and not t.get("normalized")]
        specials = {t["content"] for t in raw if t.get("special")}
        self.ids = {t["content"]: t["id"] for t in raw if t["content"] not in specials}
        contents = sorted({t["content"] for t in raw}, key=len, reverse=True)  # the longest first wins
        self.split = re.compile("|".join(map(re.escape, contents))) if self.ids else None
        self.normalize: Callable[[str], str] = nfc if nfc_pieces else str

    def __call__(self, text: str) -> str | tuple[str | int, ...]:
        if self.split is None:
            return self.normalize(text)
        pieces: list[str | int] = []
        start = 0
        for match in self.split.finditer(text):
            token_id = self.ids.get(match.group())
            if token_id is None:
                continue  # a special token's text, read as text
            if match.start() > start:
                pieces.append(self.normalize(text[start : match.start()]))
            pieces.append(token_id)
            start = match.end()
        if not pieces:
            return self.normalize(text)
        if start < len(text):
            pieces.append(self.normalize(text[start:]))
        return tuple(pieces)


def clean_text(text: str) -> str:
    """Make `text` valid Unicode: surrogate pairs are joined, lone surrogates become U+FFFD.

    Python strings may hold surrogates (from `surrogateescape` decoding or JSON `\\ud800`), which
    the Rust tokenizer refuses with a TypeError; one bad document must not stop an encode.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encode_with_tokenizers(tok: Tokenizer, batch: list[str]) -> list[list[int]]:
    """tokenizers' own ids for each text, no special tokens added, special-token text kept as text."""
    # encode_batch_fast (tokenizers >= 0.20.2) skips computing offsets nobody here reads.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        try:
            encodings = encode(batch, add_special_tokens=False)
        except TypeError:
            encodings = encode([clean_text(t) for t in batch], add_special_tokens=False)
    finally:
        tok.encode_special_tokens = previous
    return [e.ids for e in encodings]


class FastEncoder:
    """Ids for a batch of documents, each followed by EOS; documents C leaves out go through `tok`."""

    def __init__(self, tok: Tokenizer, encoder: Any, prepare: Prepare | None = None) -> None:
        self.tok = tok
        self.encoder = encoder
        self.prepare = prepare

    def encode(self, texts: Sequence[str], eos: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids with EOS after each document, int64 lengths including the EOS)."""
        docs = texts if self.prepare is None else [self.prepare(t) for t in texts]
        raw, raw_lengths, skipped = self.encoder.encode_batch(docs, eos)
        ids = np.frombuffer(raw, dtype=np.uint32)
        lengths = np.frombuffer(raw_lengths, dtype=np.int64)
        if not skipped:
            return ids, lengths
        redo = encode_with_tokenizers(self.tok, [texts[i] for i in skipped])
        pieces = np.split(ids, np.cumsum(lengths)[:-1])
        for i, doc in zip(skipped, redo, strict=True):
            pieces[i] = np.asarray([*doc, eos], dtype=np.uint32)
        lengths = np.fromiter((p.size for p in pieces), dtype=np.int64, count=len(pieces))
        return np.concatenate(pieces), lengths


def _probe_text(added: Sequence[str] = ()) -> list[str]:
    """Every 61st code point below TABLE_SIZE in short contexts, the marker letters, the usual mix and
    each added token's text between others."""
    chars = [chr(cp) for cp in range(0, TABLE_SIZE, 61) if not 0xD800 <= cp <= 0xDFFF] + list(_MARKERS)
    texts = ["".join(f"a{c}{c} {c}1'{c}\n{c}'s " for c in chars[i : i + 64]) for i in range(0, len(chars), 64)]
    texts.append("Hello, world! It's 2024; 你好，世界。  Tabs\tand\r\nnew lines\u3000全角 ①② ٣ 𝟘 🙂 don't")
    texts.append("IT'S WE'LL 'Re 'VE ſ'ſ x'ſ 1234567 12 \r\n\r\n  \n\tword  \u3000字 e\u0301 \u1100\u1161\u11a8 "
                 "A\u030a\u0323 ,\n!!\r\n? ")
    texts.append(" x ".join(added) + "".join(added) + " ".join(t[:-1] for t in added))
    return texts


def _agrees(tok: Tokenizer, fast: FastEncoder) -> bool:
    texts = _probe_text([t.content for t in tok.get_added_tokens_decoder().values()])
    ids, _ = fast.encode(texts, 0)
    expected = [i for doc in encode_with_tokenizers(tok, texts) for i in [*doc, 0]]
    return ids.tolist() == expected


def encoder_for(tok: Tokenizer) -> FastEncoder | None:
    """The compiled encoder for `tok`, or None (the caller then uses tokenizers itself)."""
    return status(tok)[0]


def status(tok: Tokenizer) -> tuple[FastEncoder | None, str]:
    """(the compiled encoder or None, which encoder shard encoding uses and why), built once per tokenizer."""
    if not enabled():
        return None, "tokenizers (LMFORGE_FAST_BPE=0)"
    # A tokenizer given another normalizer, pre-tokenizer or added tokens gets a new check.
    key = (id(tok), repr(getattr(tok, "normalizer", None)), repr(getattr(tok, "pre_tokenizer", None)),
           tok.get_vocab_size(with_added_tokens=True) if hasattr(tok, "to_str") else 0)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key][1]
    result = _build(tok)
    _CACHE[key] = (tok, result)  # holding `tok` keeps its id from being reused by another object
    if len(_CACHE) > 4:
        _CACHE.popitem(last=False)
    if result[0] is None:
        logger.info("encoding with %s", result[1])
    return result


def _build(tok: Tokenizer) -> tuple[FastEncoder | None, str]:
    try:
        _fastbpe = importlib.import_module("lmforge.tokenize._fastbpe")
    except ImportError:
        return None, "tokenizers (lmforge's compiled BPE was not built: no C compiler at install time?)"
    if not hasattr(tok, "to_str"):
        return None, "the tokenizer object given (not a tokenizers.Tokenizer)"
    spec = json.loads(tok.to_str())
    layout = _layout(spec)
    tables = None if isinstance(layout, str) else _tables(spec["model"])
    if isinstance(layout, str) or tables is None:
        why = layout if isinstance(layout, str) else "a byte or merged token is missing from the vocab"
        return None, f"tokenizers ({why})"
    words = _words(spec["model"]["vocab"]) if layout.ignore_merges else {}
    encoder = _fastbpe.Encoder(class_table(), tables[0], tables[1], layout.split_digits, pattern=layout.pattern,
                               max_digits=layout.max_digits, **words)
    prepare = Prepare(spec.get("added_tokens", []), layout.nfc)
    fast = FastEncoder(tok, encoder, prepare if layout.nfc or prepare.split is not None else None)
    if not _agrees(tok, fast):
        logger.warning("compiled BPE disagrees with tokenizers on the probe text; please report this with your "
                       "tokenizers version and tokenizer.json")
        return None, "tokenizers (the compiled BPE disagreed with it on the probe text)"
    return fast, "lmforge's compiled byte-level BPE (ids equal to tokenizers', checked on a probe text)"
