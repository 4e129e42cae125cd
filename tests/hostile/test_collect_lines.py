"""Overlong lines in line-based files: quarantined without ever being held whole, the lines around them kept."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hostile_limits import run_json

from lmforge.collect.files import FilesConfig, iter_files

MB = 1 << 20


def collect(tmp_path: Path, **cfg) -> list:
    cfg.setdefault("paths", ["in"])
    return list(iter_files(FilesConfig(**cfg), tmp_path))


@pytest.mark.parametrize("text_field", ["text", "body"])
def test_a_200_mb_jsonl_line_is_quarantined_in_bounded_memory(tmp_path, text_field):
    d = tmp_path / "in"
    d.mkdir()
    with open(d / "lines.jsonl", "wb") as fh:
        fh.write(json.dumps({text_field: "before the long line"}).encode() + b"\n")
        fh.write(b'{"' + text_field.encode() + b'": "')
        chunk = b"x" * MB
        for _ in range(200):
            fh.write(chunk)
        fh.write(b'"}\n')
        fh.write(json.dumps({text_field: "after the long line"}).encode() + b"\n")
    code = (
        "import json\n"
        "from pathlib import Path\n"
        "from lmforge.collect.files import FilesConfig, iter_files\n"
        f"config = FilesConfig(paths=['in'], text_field={text_field!r})\n"
        f"recs = iter_files(config, Path({str(tmp_path)!r}))\n"
        "print(json.dumps([[r.text[:40], r.drop_reason, r.meta] for r in recs]))\n"
    )
    records, peak, _ = run_json(code)
    (d / "lines.jsonl").unlink()  # 200 MB: do not leave it in pytest's kept temp folders
    assert [(t, r) for t, r, _ in records if r is None] == [("before the long line", None),
                                                           ("after the long line", None)]
    (bad,) = [m for _, r, m in records if r is not None]
    assert bad["drop_reason"] == "line_too_long" and bad["line"] == 2
    assert bad["bytes"] > 200 * MB
    assert peak <= 300


def test_long_csv_rows_and_text_lines_lose_only_themselves(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    long = "y" * (3 * MB)
    (d / "rows.csv").write_text(f"id,text\n1,first row\n2,{long}\n3,third row\n", encoding="utf-8")
    (d / "rows.tsv").write_text(f"text\tid\nfirst tab\t1\n{long}\t2\nthird tab\t3\n", encoding="utf-8")
    (d / "lines.txt").write_text(f"line one\n{long}\nline three\n", encoding="utf-8")
    (d / "zipped.txt.gz").write_bytes(gzip.compress(f"zipped one\n{long}\nzipped three\n".encode()))
    recs = collect(tmp_path, text_split="line", max_line_bytes=MB)
    kept = sorted(r.text for r in recs if r.drop_reason is None)
    assert kept == sorted(["first row", "third row", "first tab", "third tab", "line one", "line three",
                           "zipped one", "zipped three"])
    bad = sorted((Path(r.url).name, r.drop_reason, r.meta["line"]) for r in recs if r.drop_reason)
    assert bad == [("lines.txt", "line_too_long", 2), ("rows.csv", "line_too_long", 3),
                   ("rows.tsv", "line_too_long", 3), ("zipped.txt.gz", "line_too_long", 2)]
    ids = {r.text: r.id for r in recs}
    assert ids["third row"] == "3" and ids["third tab"] == "3"


def test_paragraphs_are_streamed_and_capped_too(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    text = "para one\nstill one\n\n\n" + "z" * (2 * MB) + "\n\npara three\r\n\r\nlast\n"
    (d / "p.txt").write_text(text, encoding="utf-8", newline="")
    recs = collect(tmp_path, text_split="paragraph", max_line_bytes=MB)
    assert [r.text for r in recs if r.drop_reason is None] == ["para one\nstill one", "para three", "last\n"]
    assert [r.drop_reason for r in recs if r.drop_reason] == ["line_too_long"]


def test_max_line_bytes_is_validated():
    assert FilesConfig(paths=["x"]).max_line_bytes == 32 * MB
    with pytest.raises(ValueError, match="max_line_bytes\n  Input should be greater than 0"):
        FilesConfig(paths=["x"], max_line_bytes=0)
