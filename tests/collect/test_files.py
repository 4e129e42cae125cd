import gzip
import json

import pytest

from lmforge.collect.files import FilesConfig, iter_files
from lmforge.errors import ConfigError


def collect(tmp_path, **cfg):
    cfg.setdefault("paths", ["in"])
    return list(iter_files(FilesConfig(**cfg), tmp_path))


@pytest.fixture
def tree(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("第一段。\n还是第一段。\n\nSecond paragraph.", encoding="utf-8")
    (d / "bom.md").write_bytes("# 标题\n\n正文，带 BOM。".encode("utf-8-sig"))
    (d / "gbk.txt").write_bytes("简体中文，GBK 编码的文件。".encode("gbk"))
    (d / "gb18030.txt").write_bytes("罕见字𠀀在GB18030里。".encode("gb18030"))
    (d / "big5.txt").write_bytes("繁體中文，Big5 編碼的檔案。".encode("big5"))
    (d / "page.html").write_bytes('<html><head><meta charset="gbk"></head><body><p>网页正文</p></body></html>'.encode("gbk"))
    (d / "sub" / "rows.csv").write_text("id,text,lang\n1,\"逗号, 在引号里\",zh\n2,plain row,en\n", encoding="utf-8")
    (d / "sub" / "rows.tsv").write_bytes("text\tlabel\n繁體\tx\n".encode("big5"))
    (d / "items.json").write_text(json.dumps([{"text": "JSON 一"}, {"text": "JSON 二", "id": "j2"}, {"no": 1}]), "utf-8")
    (d / "lines.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gz line"}\n{bad\n{"text": "after bad"}\n'))
    (d / "empty.txt").write_bytes(b"")
    (d / "blob.txt").write_bytes(bytes(range(256)) * 10)
    (d / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (d / "huge.txt").write_text("长" * 10_000_000 + "\n", encoding="utf-8")  # one 30 MB line
    return tmp_path


def test_every_format_and_every_bad_file(tree):
    recs = collect(tree)
    good = {r.url.split("/in/")[-1] + ("#" + r.id if r.url.endswith(("csv", "json", "jsonl.gz", "tsv")) else ""): r
            for r in recs if r.drop_reason is None}
    texts = [r.text for r in recs if r.drop_reason is None]
    assert "第一段。\n还是第一段。\n\nSecond paragraph." in texts  # text_split=file by default
    assert "# 标题\n\n正文，带 BOM。" in texts
    assert "简体中文，GBK 编码的文件。" in texts and "繁體中文，Big5 編碼的檔案。" in texts
    assert "罕见字𠀀在GB18030里。" in texts
    assert any("网页正文" in t and t.startswith("<html>") for t in texts)
    assert "逗号, 在引号里" in texts and "plain row" in texts and "繁體" in texts
    assert {"JSON 一", "JSON 二", "gz line", "after bad"} <= set(texts)
    assert any(len(t) == 10_000_001 for t in texts)
    bad = sorted((r.url.split("/in/")[-1], r.drop_reason) for r in recs if r.drop_reason)
    assert bad == [("blob.txt", "binary_file"), ("empty.txt", "empty_file"), ("items.json", "no_text_field"),
                   ("lines.jsonl.gz", "bad_json"), ("photo.png", "unsupported_format")]
    by_text = {r.text: r for r in recs}
    assert by_text["简体中文，GBK 编码的文件。"].provenance["encoding"] == "gb18030"
    assert by_text["繁體中文，Big5 編碼的檔案。"].provenance["encoding"] == "big5hkscs"
    assert by_text["plain row"].id == "2" and by_text["plain row"].lang == "en"
    assert by_text["JSON 二"].id == "j2"
    assert by_text["逗号, 在引号里"].provenance["content_type"] == "text/csv"
    assert len(good) >= 12


def test_ids_are_stable_and_order_deterministic(tree):
    first = [(r.id, r.text[:20]) for r in collect(tree)]
    assert first == [(r.id, r.text[:20]) for r in collect(tree)]
    assert len({i for i, _ in first}) == len(first)


def test_paragraph_split_and_format_filter(tree):
    recs = collect(tree, paths=["in/a.txt"], text_split="paragraph")
    assert [r.text for r in recs] == ["第一段。\n还是第一段。", "Second paragraph."]
    only_csv = collect(tree, formats=["csv"])
    assert [r.text for r in only_csv if r.drop_reason is None] == ["逗号, 在引号里", "plain row"]
    assert {r.drop_reason for r in only_csv} == {None, "unsupported_format"}


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"input.files.paths\[0\]: no file matches 'nothing/\*.txt'"):
        collect(tmp_path, paths=["nothing/*.txt"])
    with pytest.raises(Exception, match="formats: unknown"):
        FilesConfig(paths=["x"], formats=["docx"])


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, xref offsets computed, as a PDF writer would."""
    stream = f"BT /F1 18 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_text_and_broken_pdf(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    d = tmp_path / "in"
    d.mkdir()
    (d / "hello.pdf").write_bytes(minimal_pdf("Hello from a PDF page"))
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    with open(d / "blank.pdf", "wb") as fh:
        writer.write(fh)
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage without xref")
    recs = collect(tmp_path)
    assert sorted(str(r.drop_reason) for r in recs) == ["None", "corrupt_pdf", "pdf_no_text"]
    (ok,) = [r for r in recs if r.drop_reason is None]
    assert ok.text == "Hello from a PDF page" and ok.meta["pdf"]["pages"] == 1


def test_parquet_columns_json_cannot_hold_become_strings(tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.records import read_parquet, write_parquet

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"body": ["正文 text"], "ts": [datetime.datetime(2024, 1, 2, 3, 4)], "raw": [b"ab"]}),
                   tmp_path / "in" / "t.parquet")
    (rec,) = collect(tmp_path, text_field="body")
    assert rec.meta["fields"] == {"ts": "2024-01-02T03:04:00", "raw": "ab"}
    write_parquet(tmp_path / "out.parquet", [rec])  # meta must serialise
    assert next(read_parquet(tmp_path / "out.parquet")).meta == rec.meta
