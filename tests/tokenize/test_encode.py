from __future__ import annotations

import pydoc_data.topics
from pathlib import Path

import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.tokenize.encode import encode_documents, read_token_file, write_token_file

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "机器学习是人工智能的一个分支。",
    "",
    "Numbers 12345 and emoji 😀 mixed with 中文.",
    "Line one\nLine two",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = list(pydoc_data.topics.topics.values())[:20] + DOCS * 10
    out = train_tokenizer(texts, TokenizerConfig(vocab_size=400), tmp_path_factory.mktemp("tok"))
    return load_tokenizer(out)


def test_encode_documents_appends_eos_after_every_document(tok):
    eos = eos_id(tok)
    arr = encode_documents(tok, DOCS, eos)
    assert arr.dtype == np.uint16
    assert arr.ndim == 1
    assert int((arr == eos).sum()) == len(DOCS)
    assert arr[-1] == eos
    expected: list[int] = []
    for doc in DOCS:
        expected += tok.encode(doc, add_special_tokens=False).ids + [eos]
    assert arr.tolist() == expected
    # decoding each EOS-separated piece gives the documents back
    pieces, start = [], 0
    for pos in np.flatnonzero(arr == eos):
        pieces.append(tok.decode(arr[start:pos].tolist()))
        start = pos + 1
    assert pieces == DOCS


def test_batch_size_does_not_change_the_result(tok):
    eos = eos_id(tok)
    big = encode_documents(tok, DOCS, eos)
    small = encode_documents(tok, iter(DOCS), eos, batch_size=2)
    assert np.array_equal(big, small)


def test_empty_input_gives_empty_uint16_array(tok):
    arr = encode_documents(tok, [], eos_id(tok))
    assert arr.dtype == np.uint16 and arr.size == 0


def test_literal_special_token_in_text_is_not_a_document_boundary(tok):
    eos = eos_id(tok)
    arr = encode_documents(tok, ["before <|endoftext|> after"], eos)
    assert int((arr == eos).sum()) == 1
    assert tok.decode(arr[:-1].tolist()) == "before <|endoftext|> after"
    assert tok.encode_special_tokens is False  # the tokenizer is left as it was


class _BigVocab:
    """Just enough of a tokenizer to exercise the dtype choice for vocabularies over 65535."""

    encode_special_tokens = False

    class _Enc:
        ids = [70000, 1]

    def get_vocab_size(self) -> int:
        return 100_000

    def encode_batch(self, batch, add_special_tokens=False):
        return [self._Enc() for _ in batch]


def test_large_vocabularies_use_uint32():
    arr = encode_documents(_BigVocab(), ["a", "b"], eos=99_999)
    assert arr.dtype == np.uint32
    assert arr.tolist() == [70000, 1, 99_999, 70000, 1, 99_999]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_token_file_round_trip(tmp_path: Path, dtype):
    tokens = np.array([0, 1, 2, 65535, 7, 42], dtype=dtype)
    if dtype == np.uint32:
        tokens[3] = 4_000_000
    path = tmp_path / "sub" / "train.tok"
    write_token_file(path, tokens)
    raw = path.read_bytes()
    assert raw[:8] == b"LMFTOKS\0"
    assert int.from_bytes(raw[8:12], "little") == 1
    assert int.from_bytes(raw[12:16], "little") == np.dtype(dtype).itemsize
    assert int.from_bytes(raw[16:24], "little") == tokens.size
    assert raw[24:32] == b"\0" * 8
    assert len(raw) == 32 + tokens.nbytes

    back = read_token_file(path)
    assert isinstance(back, np.memmap)
    assert back.dtype == dtype
    assert np.array_equal(back, tokens)
    with pytest.raises(ValueError):
        back[0] = 5  # read-only
    assert [p.name for p in path.parent.iterdir()] == ["train.tok"]  # no temp file left


def test_empty_token_file_round_trip(tmp_path):
    write_token_file(tmp_path / "e.tok", np.zeros(0, dtype=np.uint16))
    back = read_token_file(tmp_path / "e.tok")
    assert back.size == 0 and back.dtype == np.uint16


def test_write_rejects_non_token_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint16 or uint32"):
        write_token_file(tmp_path / "x.tok", np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        write_token_file(tmp_path / "x.tok", np.zeros((2, 2), dtype=np.uint16))


def test_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "not-tokens.bin"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(InputError, match="not-tokens.bin"):
        read_token_file(path)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.tok"
    write_token_file(path, np.arange(100, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError, match=r"cut\.tok.*truncated"):
        read_token_file(path)
    path.write_bytes(b"LMFTOKS\0\x01")
    with pytest.raises(InputError, match=r"cut\.tok.*truncated"):
        read_token_file(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="absent.tok"):
        read_token_file(tmp_path / "absent.tok")
