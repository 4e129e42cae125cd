"""Encode documents to ids with lmforge's compiled byte-level BPE when the tokenizer allows it.

Shard encoding needs only ids, yet `tokenizers` builds token strings, offsets and masks for every
token, which costs more than the BPE itself. `_fastbpe` (C, built at install time) computes only
the ids, for the layout lmforge trains and GPT-2 uses: no normalizer, optional single-digit split,
GPT-2's regex, byte-level BPE without dropout. `encoder_for` reads the tokenizer.json and returns
None for anything else, and callers then use `tokenizers` itself, so the ids never depend on
which path ran. Tests compare both paths on every code point below 0x40000 and on the corpora.

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
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.tokenize.bpe import byte_level_chars

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

_CLASS = {"Lu": 1, "Ll": 1, "Lt": 1, "Lm": 1, "Lo": 1, "Nl": 2, "No": 2, "Nd": 3, "Zs": 4, "Zl": 4, "Zp": 4}
_SPACE_CONTROLS = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85)  # Oniguruma's \s beyond the Z categories
_DIGIT_SPLIT = {"type": "Split", "pattern": {"Regex": r"\p{Nd}"}, "behavior": "Isolated", "invert": False}
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


def _layout_problem(spec: dict[str, Any]) -> str | None:
    """Why the compiled path cannot reproduce this tokenizer's ids, or None when it can."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model is {model.get('type')}, not BPE"
    if spec.get("normalizer") is not None:
        return "it has a normalizer"
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"BPE {key} is set"
    if model.get("byte_fallback") or model.get("ignore_merges"):
        return "BPE byte_fallback or ignore_merges is set"
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 2 and steps[0] == _DIGIT_SPLIT:
        steps = steps[1:]
    last = steps[-1] if len(steps) == 1 else {}
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space") or not last.get("use_regex", True):
        return "pre-tokenizer is not [digit split,] ByteLevel(add_prefix_space=False, use_regex=True)"
    if any(not t.get("special") for t in spec.get("added_tokens", [])):
        return "it has non-special added tokens, which split the text before BPE"
    return None


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

    def __init__(self, tok: Tokenizer, encoder: Any) -> None:
        self.tok = tok
        self.encoder = encoder

    def encode(self, texts: Sequence[str], eos: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids with EOS after each document, int64 lengths including the EOS)."""
        raw, raw_lengths, skipped = self.encoder.encode_batch(texts, eos)
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


def _probe_text() -> list[str]:
    """Every 61st code point below TABLE_SIZE in short contexts, the marker letters and the usual mix."""
    chars = [chr(cp) for cp in range(0, TABLE_SIZE, 61) if not 0xD800 <= cp <= 0xDFFF] + list(_MARKERS)
    texts = ["".join(f"a{c}{c} {c}1'{c}\n{c}'s " for c in chars[i : i + 64]) for i in range(0, len(chars), 64)]
    texts.append("Hello, world! It's 2024; 你好，世界。  Tabs\tand\r\nnew lines\u3000全角 ①② ٣ 𝟘 🙂 don't")
    return texts


def _agrees(tok: Tokenizer, fast: FastEncoder) -> bool:
    texts = _probe_text()
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
    problem = _layout_problem(spec)
    tables = None if problem else _tables(spec["model"])
    if problem or tables is None:
        return None, f"tokenizers ({problem or 'a byte or merged token is missing from the vocab'})"
    pre = spec["pre_tokenizer"]
    split_digits = pre.get("type") == "Sequence" and len(pre["pretokenizers"]) == 2
    encoder = _fastbpe.Encoder(class_table(), tables[0], tables[1], split_digits)
    fast = FastEncoder(tok, encoder)
    if not _agrees(tok, fast):
        logger.warning("compiled BPE disagrees with tokenizers on the probe text; please report this with your "
                       "tokenizers version and tokenizer.json")
        return None, "tokenizers (the compiled BPE disagreed with it on the probe text)"
    return fast, "lmforge's compiled byte-level BPE (ids equal to tokenizers', checked on a probe text)"
