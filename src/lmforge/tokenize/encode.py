"""Turn documents into one flat token stream and store it in a small binary format.

Training samples random windows from the stream, so it is kept as a flat array with an EOS
after every document and read back through a memory map: a multi-GB corpus costs no RAM.
The file has a 32-byte header so a wrong or truncated file is detected instead of being
silently misread as tokens.
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

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAGIC = b"LMFTOKS\0"
VERSION = 1
# magic, version, dtype code (bytes per token), token count, 8 reserved bytes
HEADER = struct.Struct("<8sIIQ8x")
assert HEADER.size == 32
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 halves the file for vocabularies up to 65535."""
    return DTYPES[2] if vocab_size <= 65535 else DTYPES[4]


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield batch


def encode_documents(tok: Tokenizer, texts: Iterable[str], eos: int, batch_size: int = 1024) -> np.ndarray:
    """Encode `texts` in batches (the Rust side parallelises each batch) with EOS after each document."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    dtype = token_dtype(tok.get_vocab_size())
    chunks: list[np.ndarray] = []
    # A literal "<|endoftext|>" inside scraped text must stay text, not become a document boundary.
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        for batch in _batches(texts, batch_size):
            ids: list[int] = []
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids.extend(enc.ids)
                ids.append(eos)
            chunks.append(np.asarray(ids, dtype=dtype))
    finally:
        tok.encode_special_tokens = previous
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(chunks)


def write_token_file(path: str | Path, tokens: np.ndarray) -> None:
    """Write header + little-endian tokens to a temporary file, then rename it into place."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array (got shape {arr.shape})")
    code = arr.dtype.itemsize
    if arr.dtype.kind != "u" or code not in DTYPES:
        raise ValueError(f"tokens must be uint16 or uint32 (got {arr.dtype})")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[code])

    with atomic_path(path) as tmp, tmp.open("xb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, code, arr.size))
        arr.tofile(f)


def read_token_file(path: str | Path) -> np.ndarray:
    """Memory-map a token file read-only after checking its header against its size."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"token file {path} does not exist")
    size = path.stat().st_size
    if size < HEADER.size:
        raise InputError(f"token file {path} is truncated: {size} bytes is shorter than the 32-byte header")
    with path.open("rb") as f:
        magic, version, code, count = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise InputError(f"{path} is not an lmforge token file (bad magic {magic!r})")
    if version != VERSION:
        raise InputError(f"token file {path} has version {version}; this lmforge reads version {VERSION}")
    if code not in DTYPES:
        raise InputError(f"token file {path} has an unknown dtype code {code}")
    expected = HEADER.size + count * code
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise InputError(f"token file {path} is {what}: {size} bytes, expected {expected} for {count} tokens")
    if count == 0:
        empty = np.zeros(0, dtype=DTYPES[code])
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=DTYPES[code], mode="r", offset=HEADER.size, shape=(count,))
