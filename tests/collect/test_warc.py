import gzip
import io
from collections import Counter
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.collect.warc import WarcConfig, iter_warc, read_warc

SHARED = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "article-extraction" / "html"
GBK_PAGE = "<html><head><meta charset='gb2312'></head><body><p>这是一个用GBK编码的中文网页。</p></body></html>"


def pages() -> list[tuple[str, bytes, str, str]]:
    """(url, body, content type, status) — real article pages if ../shared is present, plus edge cases."""
    real = [(f"https://news.example/{p.name[:12]}", gzip.decompress(p.read_bytes()), "text/html; charset=utf-8", "200 OK")
            for p in sorted(SHARED.glob("*.html.gz"))[:20]]
    if not real:
        real = [(f"https://news.example/{i}", f"<p>Article {i} 文章</p>".encode(), "text/html", "200 OK")
                for i in range(20)]
    return real + [
        ("https://cn.example/gbk", GBK_PAGE.encode("gbk"), "text/html", "200 OK"),
        ("https://tw.example/big5", "<p>繁體中文網頁</p>".encode("big5"), "text/html; charset=big5", "200 OK"),
        ("https://x.example/missing", b"not found", "text/html", "404 Not Found"),
        ("https://x.example/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", "200 OK"),
    ]


def write_warc(path: Path, items, gz: bool = True) -> list[int]:
    """Write responses (plus a request record each, which readers must skip); return member offsets."""
    offsets = []
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gz)
        for url, body, ctype, status in items:
            offsets.append(fh.tell())
            headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))
            req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "x")], is_http_request=True)
            writer.write_record(writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req))
    return offsets


@pytest.mark.parametrize("gz", [True, False])
def test_responses_become_records_with_provenance(tmp_path, gz):
    items = pages()
    path = tmp_path / ("a.warc.gz" if gz else "a.warc")
    write_warc(path, items, gz)
    recs = list(read_warc(path))
    assert len(recs) == len(items)
    good = [r for r in recs if r.drop_reason is None]
    assert len(good) == len(items) - 2
    assert Counter(r.drop_reason for r in recs if r.drop_reason) == {"http_404": 1, "content_type": 1}
    by_url = {r.url: r for r in recs}
    assert by_url["https://cn.example/gbk"].text == GBK_PAGE
    assert by_url["https://cn.example/gbk"].provenance["encoding"] == "gb18030"
    assert "繁體中文網頁" in by_url["https://tw.example/big5"].text
    first = good[0]
    assert first.text == items[0][1].decode("utf-8")
    assert first.provenance["http_status"] == 200 and first.provenance["fetched_at"]
    assert first.provenance["warc_file"] == path.name and first.provenance["content_type"] == "text/html"
    assert len({r.id for r in recs}) == len(recs)


def test_corrupt_and_truncated_members_lose_only_themselves(tmp_path):
    items = pages()
    clean = tmp_path / "clean.warc.gz"
    offsets = write_warc(clean, items)
    data = bytearray(clean.read_bytes())
    for k in range(offsets[3] + 40, offsets[3] + 80):  # damage the 4th response's compressed bytes
        data[k] ^= 0xFF
    spliced = bytes(data[: offsets[10] + 200]) + b"JUNK" * 50 + bytes(data[offsets[11]:])  # cut the 11th short
    damaged = tmp_path / "damaged.warc.gz"
    damaged.write_bytes(spliced)
    recs = list(read_warc(damaged))
    expected = {u for i, (u, *_rest) in enumerate(items) if i not in (3, 10)}
    assert {r.url for r in recs if not r.meta.get("drop_reason", "").startswith("corrupt")} == expected
    assert Counter(r.drop_reason for r in recs)["corrupt_warc_member"] == 2
    truncated = tmp_path / "truncated.warc.gz"
    truncated.write_bytes(clean.read_bytes()[: offsets[-1] + 100])
    tail = list(read_warc(truncated))
    assert [r.url for r in tail if r.drop_reason in (None, "http_404", "content_type")] == [u for u, *_ in items[:-1]]
    assert tail[-1].drop_reason in ("truncated_record", "corrupt_warc_member")


def test_size_cap_and_globs(tmp_path):
    write_warc(tmp_path / "one.warc.gz", pages()[:3])
    write_warc(tmp_path / "two.warc.gz", pages()[3:5])
    recs = list(iter_warc(WarcConfig(paths=["*.warc.gz"], max_bytes=2000), tmp_path))
    assert len(recs) == 5
    sizes = {r.url: r.drop_reason for r in recs}
    assert all(reason in (None, "too_large") for reason in sizes.values())


def test_arc_files_are_read_through_warcio(tmp_path):
    body = b"<html><body>ARC page \xe4\xb8\xad\xe6\x96\x87</body></html>"
    http = b"HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body
    version = b"1 0 lmforge\nURL IP-address Archive-date Content-type Archive-length\n"
    header = b"filedesc://test.arc 0.0.0.0 20240101000000 text/plain %d\n" % len(version) + version + b"\n"
    rec = b"http://old.example/ 1.2.3.4 20240101000000 text/html %d\n" % len(http) + http + b"\n"
    (tmp_path / "old.arc").write_bytes(header + rec)
    (r,) = list(read_warc(tmp_path / "old.arc"))
    assert r.url == "http://old.example/" and "ARC page 中文" in r.text
