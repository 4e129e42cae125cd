"""Turn documents into one flat token stream and store it in a small binary format.

Training samples random windows from the stream, so it is kept as a flat array with an EOS
after every document and read back through a memory map: a multi-GB corpus costs no RAM.
The file has a 32-byte header (magic, version, bytes per token, token count) so a wrong or
truncated file is detected instead of being silently misread as tokens. An index file with
the same header holds the document boundaries as uint64 offsets, for packing documents.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmforge.errors import InputError
from lmforge.records import atomic_path
from lmforge.tokenize.fast import encode_with_tokenizers, encoder_for

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAGIC = b"LMFTOKS\0"
VERSION = 1
# magic, version, dtype code (bytes per token), token count, 8 reserved bytes
HEADER = struct.Struct("<8sIIQ8x")
assert HEADER.size == 32
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
# The index beside a token shard uses the same header with its own magic and uint64 offsets.
INDEX_MAGIC = b"LMFTIDX\0"
INDEX_DTYPE = np.dtype("<u8")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 halves the file for vocabularies up to 65535."""
    return DTYPES[2] if vocab_size <= 65535 else DTYPES[4]


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield batch


def iter_encoded(
    tok: Tokenizer, texts: Iterable[str], eos: int, batch_size: int = 1024
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per batch: the tokens with EOS after each document, and each document's length (EOS included).

    Streaming keeps memory at one batch however long `texts` is. lmforge's compiled BPE encodes
    when the tokenizer's layout allows (the same ids, see `lmforge.tokenize.fast`), otherwise
    tokenizers does. A literal "<|endoftext|>" inside scraped text stays text, not a boundary.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    dtype = token_dtype(tok.get_vocab_size())
    fast = encoder_for(tok)
    for batch in _batches(texts, batch_size):
        if fast is not None:
            ids, lengths = fast.encode(batch, eos)
            yield ids.astype(dtype, copy=False), lengths
            continue
        docs = encode_with_tokenizers(tok, batch)
        lengths = np.fromiter((len(doc) + 1 for doc in docs), dtype=np.int64, count=len(docs))
        ids = np.fromiter((i for doc in docs for i in (*doc, eos)), dtype=dtype, count=int(lengths.sum()))
        yield ids, lengths


def encode_documents(tok: Tokenizer, texts: Iterable[str], eos: int, batch_size: int = 1024) -> np.ndarray:
    """Encode `texts` into one array with EOS after each document (small corpora; see `TokenWriter`)."""
    chunks = [tokens for tokens, _ in iter_encoded(tok, texts, eos, batch_size)]
    if not chunks:
        return np.zeros(0, dtype=token_dtype(tok.get_vocab_size()))
    return np.concatenate(chunks)


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array (got shape {arr.shape})")
    code = arr.dtype.itemsize
    if arr.dtype.kind != "u" or code not in DTYPES:
        raise ValueError(f"tokens must be uint16 or uint32 (got {arr.dtype})")
    return np.ascontiguousarray(arr, dtype=DTYPES[code])


def write_token_file(path: str | Path, tokens: np.ndarray) -> None:
    """Write header + little-endian tokens to a temporary file, then rename it into place."""
    arr = _check_tokens(tokens)
    with atomic_path(path) as tmp, tmp.open("xb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, arr.dtype.itemsize, arr.size))
        arr.tofile(f)


class TokenWriter:
    """Stream token chunks into a token file; the header's count is filled in on close.

    The file appears under its name only when the block ends without error, so a killed
    process leaves a hidden temporary file, never a short token file that looks complete.
    """

    def __init__(self, path: str | Path, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPES.values():
            raise ValueError(f"tokens must be uint16 or uint32 (got {self.dtype})")
        self.count = 0

    def __enter__(self) -> TokenWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = self._tmp.open("xb")
        self._file.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, 0))
        return self

    def write(self, tokens: np.ndarray) -> None:
        arr = np.ascontiguousarray(tokens, dtype=self.dtype)
        arr.tofile(self._file)
        self.count += arr.size

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._file.seek(0)
                self._file.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
        finally:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, tb)


def _read_header(path: Path, magic_expected: bytes, what: str, codes: dict[int, np.dtype]) -> tuple[int, int]:
    """(dtype code, count) after checking magic, version and that the size matches the count."""
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    size = path.stat().st_size
    if size < HEADER.size:
        raise InputError(f"{what} file {path} is truncated: {size} bytes is shorter than the 32-byte header")
    with path.open("rb") as f:
        magic, version, code, count = HEADER.unpack(f.read(HEADER.size))
    if magic != magic_expected:
        raise InputError(f"{path} is not an lmforge {what} file (bad magic {magic!r})")
    if version != VERSION:
        raise InputError(f"{what} file {path} has version {version}; this lmforge reads version {VERSION}")
    if code not in codes:
        raise InputError(f"{what} file {path} has an unknown dtype code {code}")
    expected = HEADER.size + count * code
    if size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise InputError(f"{what} file {path} is {kind}: {size} bytes, expected {expected} for {count} entries")
    return code, count


def _map(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))


def read_token_file(path: str | Path) -> np.ndarray:
    """Memory-map a token file read-only after checking its header against its size."""
    path = Path(path)
    code, count = _read_header(path, MAGIC, "token", DTYPES)
    return _map(path, DTYPES[code], count)


def write_index_file(path: str | Path, offsets: np.ndarray) -> None:
    """Document boundaries of a token file: offsets[i] is where document i starts, offsets[-1] the end."""
    arr = np.ascontiguousarray(offsets, dtype=INDEX_DTYPE)
    if arr.ndim != 1 or arr.size == 0 or arr[0] != 0 or np.any(np.diff(arr.astype(np.int64)) <= 0):
        raise ValueError("offsets must start at 0 and strictly increase (every document holds at least its EOS)")
    with atomic_path(path) as tmp, tmp.open("xb") as f:
        f.write(HEADER.pack(INDEX_MAGIC, VERSION, INDEX_DTYPE.itemsize, arr.size))
        arr.tofile(f)


def read_index_file(path: str | Path) -> np.ndarray:
    """Memory-map an index file: documents + 1 uint64 offsets into the matching token file."""
    path = Path(path)
    _, count = _read_header(path, INDEX_MAGIC, "index", {INDEX_DTYPE.itemsize: INDEX_DTYPE})
    return _map(path, INDEX_DTYPE, count)
