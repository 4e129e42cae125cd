"""Sentence and word boundaries beside a WordPiece token stream, for BERT's pairs and whole-word masking.

BERT pretraining pairs sentences and masks whole words, so its token shards keep, beside each
token, one byte of flags (`shard-XXXXX.wrd`, no header: one byte per token of the `.tok` file):

- `WORD`: the token starts a word. A `##` continuation piece does not; in Chinese or Japanese
  text (where every Han character is its own WordPiece token) only the first character of a
  jieba word does, so 人民 is masked as one word, not as an easy-to-guess half.
- `SENTENCE`: the token starts a sentence (its first token is also a word start).
- `CJK`: the token belongs to a Chinese or Japanese document; `whole_word: auto` masks whole
  words only there and single tokens elsewhere.

Each document is encoded sentence by sentence and ends with the EOS token, like a GPT shard,
so the same document index (`.idx`) finds documents in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmforge.errors import InputError
from lmforge.lang import is_cjk, sentences, word_spans
from lmforge.records import atomic_path

if TYPE_CHECKING:
    from tokenizers import Tokenizer

WORD, SENTENCE, CJK = 1, 2, 4
FLAGS_DTYPE = np.dtype("u1")


def is_wordpiece(tok: Tokenizer) -> bool:
    """True for tokenizers trained with kind: wordpiece (the ones BERT pretraining reads)."""
    return type(tok.model).__name__ == "WordPiece"


def _encode_sentences(tok: Tokenizer, texts: list[str]) -> list:
    """tokenizers' encodings with offsets; special-token text inside a document stays text."""
    from lmforge.tokenize.fast import clean_text

    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        try:
            return tok.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            return tok.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
    finally:
        tok.encode_special_tokens = previous


def _word_starts(sentence: str, tokens: list[str], offsets: list[tuple[int, int]], cjk: bool) -> np.ndarray:
    """Whether each token of one sentence starts a word: no `##` piece, and a new jieba word in CJK."""
    starts = np.fromiter((not t.startswith("##") for t in tokens), dtype=bool, count=len(tokens))
    if cjk and len(tokens) > 1:
        word_of = np.zeros(len(sentence), dtype=np.int64)  # (characters,) index of the jieba word
        for k, (_, start, end) in enumerate(word_spans(sentence)):
            word_of[start:end] = k
        first_char = np.minimum([s for s, _ in offsets], len(sentence) - 1)  # (tokens,)
        word = word_of[first_char]
        starts[1:] &= word[1:] != word[:-1]
    starts[0] = True
    return starts


def iter_encoded_words(
    tok: Tokenizer, texts: Iterable[str], eos: int, dtype: np.dtype, batch_size: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch of documents: tokens (EOS after each), each document's length, and the tokens' flags.

    Memory stays at one batch however long `texts` is. A document without any text is its EOS alone.
    """
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield _encode_batch(tok, batch, eos, dtype)
            batch = []
    if batch:
        yield _encode_batch(tok, batch, eos, dtype)


def _encode_batch(tok: Tokenizer, docs: list[str], eos: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    split = [sentences(text) for text in docs]
    encodings = iter(_encode_sentences(tok, [s for doc in split for s in doc]))
    ids: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    lengths = np.zeros(len(docs), dtype=np.int64)
    for d, (text, sents) in enumerate(zip(docs, split, strict=True)):
        cjk = CJK if is_cjk(text) else 0
        for sent in sents:
            enc = next(encodings)
            if not enc.ids:
                continue
            starts = _word_starts(sent, enc.tokens, enc.offsets, bool(cjk))
            f = np.where(starts, WORD, 0).astype(FLAGS_DTYPE) | cjk
            f[0] |= SENTENCE
            ids.append(np.asarray(enc.ids, dtype=dtype))
            flags.append(f)
            lengths[d] += len(enc.ids)
        ids.append(np.array([eos], dtype=dtype))
        flags.append(np.zeros(1, dtype=FLAGS_DTYPE))
        lengths[d] += 1
    return np.concatenate(ids), lengths, np.concatenate(flags)


def words_path(directory: Path, shard_id: str) -> Path:
    return directory / f"shard-{shard_id}.wrd"


class FlagsWriter:
    """Stream flag chunks into a `.wrd` file that appears under its name only when whole."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0

    def __enter__(self) -> FlagsWriter:
        self._atomic = atomic_path(self.path)
        self._file = self._atomic.__enter__().open("xb")
        return self

    def write(self, flags: np.ndarray) -> None:
        np.ascontiguousarray(flags, dtype=FLAGS_DTYPE).tofile(self._file)
        self.count += len(flags)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        finally:
            self._atomic.__exit__(exc_type, exc, tb)


def read_flags(path: str | Path, tokens: int) -> np.ndarray:
    """Memory-map a `.wrd` file read-only after checking it has one byte per token."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: these token shards were not encoded with a WordPiece tokenizer")
    size = path.stat().st_size
    if size != tokens * FLAGS_DTYPE.itemsize:
        raise InputError(f"{path} has {size} bytes for {tokens} tokens; re-encode the shard")
    if size == 0:
        return np.zeros(0, dtype=FLAGS_DTYPE)
    return np.memmap(path, dtype=FLAGS_DTYPE, mode="r", shape=(tokens,))
