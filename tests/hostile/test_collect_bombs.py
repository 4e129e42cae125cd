"""Decompression bombs against every collector that decompresses: files, WARC members, HTTP bodies.

Each attack runs in a child process under a hard address-space limit; the safe outcome is the bomb
quarantined with a reason, the good records around it kept, and peak memory far below the bomb's size.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import sys
import zlib
from pathlib import Path

import pytest
from hostile_limits import run_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))
import crawl_site as cs  # noqa: E402

GB = 1 << 30
MB = 1 << 20
PEAK_MB = 300
SPACE_MB = 6000
_BLOCK = 16 * MB


def gzip_bomb(size: int, fill: bytes = b"\0", prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """One gzip member holding prefix + `size` bytes of `fill` + suffix, built in well under a second.

    A 16 MB block is compressed once after a full flush (so it refers to nothing before it) and its
    deflate output repeated; the CRC and length trailer are computed over the whole content.
    """
    block = (fill * (_BLOCK // len(fill) + 1))[:_BLOCK]
    n = size // _BLOCK
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(suffix) + comp.flush()
    crc = zlib.crc32(prefix)
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(suffix, crc)
    total = len(prefix) + n * _BLOCK + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + head + unit * n + tail + struct.pack("<II", crc, total & 0xFFFFFFFF)


def test_the_bomb_builder_makes_valid_gzip():
    data = gzip_bomb(3 * _BLOCK, b"ab", b"<", b">")
    assert len(data) < 200_000
    out = gzip.decompress(data)
    assert len(out) == 3 * _BLOCK + 2 and out[:3] == b"<ab" and out[-2:] == b"b>"


def run_child(code: str, timeout: float = 90) -> tuple[object, float]:
    """Run `code` (which prints one JSON line) under the limits; returns (that JSON, the child's peak RSS MB)."""
    out, peak, _ = run_json(code, timeout=timeout, address_space_mb=SPACE_MB)
    return out, peak


def collect_in_child(tmp_path: Path, **config) -> tuple[list[list], float]:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from lmforge.collect.files import FilesConfig, iter_files\n"
        f"config = FilesConfig(**json.loads({json.dumps(json.dumps(config))}))\n"
        f"recs = iter_files(config, Path({str(tmp_path)!r}))\n"
        "print(json.dumps([[Path(r.url).name, r.drop_reason, r.text[:20]] for r in recs]))\n"
    )
    return run_child(code)


def good_files(d: Path) -> None:
    (d / "a-good.jsonl").write_text('{"text": "first good"}\n{"text": "second good"}\n', encoding="utf-8")
    (d / "z-good.txt").write_text("a good text file", encoding="utf-8")


def assert_good_kept(records: list[list]) -> None:
    kept = sorted((name, text) for name, reason, text in records if reason is None and "good" in name)
    assert kept == [("a-good.jsonl", "first good"), ("a-good.jsonl", "second good"), ("z-good.txt", "a good text file")]


LINE = b"x" * (64 * 1024 - 1) + b"\n"


@pytest.mark.parametrize(("name", "fill", "config", "reason"), [
    ("bomb.jsonl.gz", b"\0", {"max_file_bytes": 100_000_000}, "too_large_decompressed"),
    ("bomb.jsonl.gz", b"\0", {}, "line_too_long"),  # default caps: one 1 GB "line", never held
    ("bomb.txt.gz", b"a", {"max_file_bytes": 100_000_000}, "too_large_decompressed"),
    ("bomb.txt.gz", b"\0", {}, "binary_file"),  # seen in the first kilobytes, the rest never read
    ("bomb.txt.gz", LINE, {"text_split": "line", "max_file_bytes": 100_000_000}, "too_large_decompressed"),
])
def test_a_gzip_bomb_file_is_quarantined_in_bounded_memory(tmp_path, name, fill, config, reason):
    d = tmp_path / "in"
    d.mkdir()
    good_files(d)
    (d / name).write_bytes(gzip_bomb(GB, fill))
    records, peak = collect_in_child(tmp_path, paths=["in"], **config)
    assert_good_kept(records)
    assert [(n, r) for n, r, _ in records if n == name and r is not None] == [(name, reason)]
    lines_kept = sum(1 for n, r, _ in records if n == name and r is None)  # lines read before the cap stay
    assert 1000 < lines_kept <= 100_000_000 // len(LINE) if fill == LINE else lines_kept == 0
    assert peak <= PEAK_MB


def _multi_stream(compress, piece: bytes, copies: int) -> bytes:
    """Concatenated streams: every bz2/xz reader must decompress all of them, one after the other."""
    return compress(piece) * copies


def test_bz2_and_xz_files_are_read_and_capped(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    good_files(d)
    (d / "more.jsonl.bz2").write_bytes(bz2.compress(b'{"text": "from bz2"}\n'))
    (d / "more.txt.xz").write_bytes(lzma.compress("from xz 中文".encode()))
    (d / "bomb.txt.bz2").write_bytes(_multi_stream(bz2.compress, b"b" * (8 * MB), 50))  # 400 MB
    (d / "bomb.jsonl.xz").write_bytes(_multi_stream(lambda b: lzma.compress(b, preset=0), b"x" * (8 * MB), 50))
    records, peak = collect_in_child(tmp_path, paths=["in"], max_file_bytes=50_000_000)
    by_name = {}
    for name, reason, text in records:
        by_name.setdefault(name, []).append((reason, text))
    assert by_name["more.jsonl.bz2"] == [(None, "from bz2")]
    assert by_name["more.txt.xz"] == [(None, "from xz 中文")]
    assert by_name["bomb.txt.bz2"] == [("too_large_decompressed", "")]
    assert by_name["bomb.jsonl.xz"] == [("too_large_decompressed", "")]
    assert peak <= PEAK_MB


def test_parquet_larger_than_the_cap_once_decompressed_is_quarantined(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in"
    d.mkdir()
    good_files(d)
    texts = ["p" * MB] * 200  # 200 MB of text in a file of a few kB
    pq.write_table(pa.table({"text": texts}), d / "bomb.parquet", compression="zstd", use_dictionary=False)
    pq.write_table(pa.table({"text": ["parquet ok"]}), d / "ok.parquet")
    assert (d / "bomb.parquet").stat().st_size < 1 * MB
    records, peak = collect_in_child(tmp_path, paths=["in"], max_file_bytes=50_000_000)
    assert [r for n, r, _ in records if n == "bomb.parquet"] == ["too_large_decompressed"]
    assert [(r, t) for _, r, t in records if "parquet" in t] == [(None, "parquet ok")]
    assert peak <= PEAK_MB


# --------------------------------------------------------------------------- WARC


def _warc_bomb_member(url: str, size: int) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    warc = (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: " + url.encode()
            + b"\r\nWARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000001>"
            + b"\r\nContent-Type: application/http; msgtype=response\r\nContent-Length: "
            + str(len(http) + size).encode() + b"\r\n\r\n")
    return gzip_bomb(size, b"<p>a</p>", warc + http, b"\r\n\r\n")


@pytest.mark.parametrize("last", [False, True])  # the last member is also inflated to check the file ends whole
def test_a_warc_member_bomb_is_quarantined_not_read(tmp_path, last, make_warc):
    path = tmp_path / "bomb.warc.gz"
    html = "text/html; charset=utf-8"
    before = make_warc(tmp_path / "parts" / "before.warc.gz",
                       [("https://a.example/before", b"<p>before the bomb</p>", html, "200 OK")]).read_bytes()
    after = make_warc(tmp_path / "parts" / "after.warc.gz",
                      [("https://a.example/after", b"<p>after the bomb</p>", html, "200 OK")]).read_bytes()
    bomb = _warc_bomb_member("https://a.example/bomb", GB)
    path.write_bytes(before + after + bomb if last else before + bomb + after)
    code = (
        "import json\n"
        "from lmforge.collect.warc import read_warc\n"
        f"print(json.dumps([[r.url, r.drop_reason, r.text] for r in read_warc({str(path)!r})]))\n"
    )
    records, peak = run_child(code)
    outcome = {u.rsplit("/", 1)[1]: (r, t) for u, r, t in records}
    assert len(records) == 3 and outcome["bomb"][0] == "too_large"
    assert outcome["before"] == (None, "<p>before the bomb</p>") and outcome["after"] == (None, "<p>after the bomb</p>")
    assert peak <= PEAK_MB


# --------------------------------------------------------------------------- HTTP


def _encoded_bomb(encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip_bomb(GB)
    raw = gzip_bomb(GB)[10:-8]  # the raw deflate stream of the same content
    return raw if encoding == "deflate-raw" else b"\x78\x9c" + raw  # zlib framing; the checksum is never reached


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
def test_the_crawler_stops_reading_an_encoded_bomb_at_max_bytes(tmp_path, encoding):
    body = _encoded_bomb(encoding)
    header = "deflate" if encoding.startswith("deflate") else encoding

    def routes(base: str) -> dict:
        return {"/robots.txt": cs.Response(b"", 404, "text/plain"),
                "/": cs.Response(cs.html("Index", ["A bomb and a page."], ["/bomb", "/ok"])),
                "/bomb": cs.Response(body, headers={"Content-Encoding": header}),
                "/ok": cs.Response(cs.html("OK", ["An ordinary page."]))}

    cap = 5_000_000
    with cs.SiteServer(routes) as server:
        code = (
            "import json\n"
            "from pathlib import Path\n"
            "from lmforge.collect.crawl import CrawlConfig, iter_crawl\n"
            f"cfg = CrawlConfig(seeds=[{server.url('/')!r}], delay=0, retries=0, max_bytes={cap}, timeout=30)\n"
            f"work = Path({str(tmp_path / 'work')!r})\n"
            "recs = list(iter_crawl(cfg, work, work))\n"
            "print(json.dumps([[r.url, r.drop_reason, r.meta.get('bytes_read')] for r in recs]))\n"
        )
        records, peak = run_child(code)
    records = {u.removeprefix(server.base): (r, n) for u, r, n in records}
    assert records["/ok"] == (None, None) and records["/"] == (None, None)
    reason, bytes_read = records["/bomb"]
    assert reason == "too_large"
    assert cap < bytes_read <= cap + MB  # decoding stopped just past the cap, not one huge chunk later
    assert peak <= PEAK_MB
