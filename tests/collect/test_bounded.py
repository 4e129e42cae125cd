"""The bounded readers every collector goes through: lines, text decoding, HTTP body decoding, path walking."""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.collect.bounded import (
    BadEncoding,
    BoundedDecoder,
    LongLine,
    TooLarge,
    UnsupportedEncoding,
    iter_chunks,
    iter_lines,
    text_lines,
)
from lmforge.collect.paths import expand_paths
from lmforge.errors import ConfigError


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def split_keepends(data: bytes) -> list[bytes]:
    out, start = [], 0
    while (nl := data.find(b"\n", start)) >= 0:
        out.append(data[start:nl + 1])
        start = nl + 1
    return out + ([data[start:]] if start < len(data) else [])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       st.booleans(), st.lists(st.integers(0, 200), max_size=8), st.integers(1, 10))
def test_lines_are_the_split_lines_whatever_the_chunking(pieces, trailing, cuts, limit):
    data = b"\n".join(pieces) + (b"\n" if trailing else b"")
    expected = [line if len(line) <= limit else ("long", len(line)) for line in split_keepends(data)]
    got = [line if isinstance(line, bytes) else ("long", line.size) for line in iter_lines(chunked(data, cuts), limit)]
    assert got == expected


def test_a_long_line_keeps_its_head_and_size():
    data = [b"ok\n", b"y" * 5000, b"y" * 5000 + b"\nnext\n"]
    out = list(iter_lines(data, 100))
    assert out[0] == b"ok\n" and out[2] == b"next\n"
    assert isinstance(out[1], LongLine) and out[1].size == 10_001 and out[1].head == b"y" * 1024


def test_iter_chunks_stops_past_the_cap(tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(b"z" * 3_000_000))
    assert sum(len(c) for c in iter_chunks(path, 3_000_000)) == 3_000_000
    with pytest.raises(TooLarge):
        for _ in iter_chunks(path, 2_999_999):
            pass


@pytest.mark.parametrize(("codec", "text"), [
    ("utf-16", "第一行\n第二行\r\nthird"),
    ("utf-8-sig", "\ufeffnot a second BOM\nline two"),
    ("gb18030", "简体中文的第一行。\n第二行也是中文，足够长才能判断编码。\n"),
])
def test_text_lines_decode_any_codec_line_by_line(codec, text):
    data = text.encode(codec) if codec != "utf-8-sig" else b"\xef\xbb\xbf" + text.encode()
    stream = text_lines(iter(chunked(data, [3, 17, 40])), 1000)
    assert stream.codec == (codec if codec != "utf-16" else "utf-16")
    assert "".join(line for _, line in stream.lines) == text


def test_text_lines_say_why_not_text():
    assert text_lines(iter([b"\x00\x01\x02" * 100]), 100) == "binary_file"
    assert text_lines(iter([b"a,b\n1,\x00\n" + b"x,y\n" * 100]), 100, nul_ok=True).codec == "utf-8"


# --------------------------------------------------------------------------- HTTP bodies


def _decode_all(decoder: BoundedDecoder, body: bytes, step: int = 4096) -> bytes:
    out = bytearray()
    for i in range(0, len(body), step):
        out += decoder.feed(body[i:i + step])
        if decoder.exceeded:
            break
    return bytes(out)


def _deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", lambda d: _deflate(d, zlib.MAX_WBITS)),
    ("deflate", lambda d: _deflate(d, -zlib.MAX_WBITS)),  # servers that send raw deflate
    ("br", lambda d: pytest.importorskip("brotli").compress(d, quality=1)),
    ("", lambda d: d),
    ("identity", lambda d: d),
])
def test_decoder_decodes_and_caps_every_coding(encoding, encode):
    page = "<p>正文 text</p>".encode() * 1000
    assert _decode_all(BoundedDecoder(encoding, 10 ** 9), encode(page)) == page
    bomb = encode(bytes(20_000_000))
    decoder = BoundedDecoder(encoding, 1_000_000)
    out = _decode_all(decoder, bomb)
    assert decoder.exceeded and len(out) == decoder.total == 1_000_001


def test_decoder_gzip_members_padding_and_errors():
    two = gzip.compress(b"one ") + gzip.compress(b"two")
    assert _decode_all(BoundedDecoder("gzip", 100), two, step=7) == b"one two"
    assert _decode_all(BoundedDecoder("gzip", 100), gzip.compress(b"x") + b"\0\0\0") == b"x"
    with pytest.raises(BadEncoding):
        BoundedDecoder("gzip", 100).feed(b"this is not gzip at all")
    with pytest.raises(UnsupportedEncoding, match="zstd"):
        BoundedDecoder("zstd", 100)
    with pytest.raises(UnsupportedEncoding, match="more than one"):
        BoundedDecoder("gzip, br", 100)


# --------------------------------------------------------------------------- paths


@pytest.fixture
def tree(tmp_path):
    for rel in ["a.txt", "b.jsonl", ".hidden.txt", "x/c.txt", "x/.h/d.txt", "x/y/e.txt", "x/y/f.md", "z/g.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    return tmp_path


@pytest.mark.parametrize("pattern", ["**/*.txt", "**", "x/**/*.txt", "*/**/e.txt", "**/y/*", "x/**", "**/.h/*.txt",
                                     "[xz]/**/*.txt", "**/*", "x/y/**/*.md", "**/nothing"])
def test_the_walk_matches_what_glob_matches(tree, pattern):
    expected = sorted(Path(p) for p in glob.glob(str(tree / pattern), recursive=True) if os.path.isfile(p))
    if not expected:
        with pytest.raises(ConfigError, match="no file matches"):
            list(expand_paths([pattern], tree, "paths", directories=False))
        return
    ((_, listing),) = expand_paths([pattern], tree, "paths", directories=False)
    assert listing.files == expected
