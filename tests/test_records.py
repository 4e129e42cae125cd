import gzip
import json
import os

import pyarrow.parquet as pq
import pytest

from lmforge.errors import InputError
from lmforge.records import (
    Record,
    atomic_path,
    make_id,
    read_jsonl,
    read_parquet,
    write_jsonl,
    write_parquet,
)


def _records():
    return [
        Record(id=make_id("t", str(i)), text=t, source="t", url=f"u{i}", lang=lang,
               meta={"k": i, "嵌套": {"x": [1, 2]}}, provenance={"encoding": "utf-8"})
        for i, (t, lang) in enumerate([("你好，世界！", "zh"), ("hello world", "en"), ("", ""), ("😀 emoji", "en")])
    ]


def test_parquet_round_trip_is_exact_and_zstd(tmp_path):
    path = tmp_path / "s.parquet"
    assert write_parquet(path, _records()) == 4
    assert list(read_parquet(path)) == _records()
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(1).compression == "ZSTD"
    # plain pyarrow sees ordinary string columns, so DuckDB/Polars/datasets read it too
    table = pq.read_table(path)
    assert table.column_names == ["id", "text", "source", "url", "lang", "meta", "provenance"]
    assert json.loads(table.column("meta")[1].as_py()) == {"k": 1, "嵌套": {"x": [1, 2]}}


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    write_parquet(target, _records()[:1])
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
    assert len(list(read_parquet(target))) == 1  # the old complete file is untouched


def test_ids_are_stable_and_distinct():
    assert make_id("a", "1") == make_id("a", "1")
    assert len({make_id("a", "1"), make_id("a", "2"), make_id("b", "1")}) == 3


def test_jsonl_gz_round_trip(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    write_jsonl(path, _records())
    assert gzip.decompress(path.read_bytes()).decode().count("\n") == 4
    assert list(read_jsonl(path)) == _records()


def test_jsonl_bad_lines_become_quarantine_records(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "good one"}\nnot json\n{"text": 5}\n\xff\xfe{"text":"x"}\n\n{"id": "given", "text": "ok"}\n')
    recs = list(read_jsonl(path))
    assert [r.drop_reason for r in recs] == [None, "bad_json", "bad_json", "bad_utf8", None]
    assert recs[0].id == make_id("x.jsonl", f"{path}:1") and recs[-1].id == "given"
    assert recs[1].meta["line"] == 2


def test_truncated_gzip_keeps_lines_before_the_damage(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    data = b"".join(b'{"text": "line %d"}\n' % i for i in range(20000))
    path.write_bytes(gzip.compress(data)[:20000])
    recs = list(read_jsonl(path))
    good = [r for r in recs if r.drop_reason is None]
    assert len(good) > 100 and [r.text for r in good] == [f"line {i}" for i in range(len(good))]
    assert recs[-1].drop_reason == "corrupt_file" and "EOFError" in recs[-1].meta["error"]
    assert sum(r.drop_reason is not None for r in recs) == 1


def test_corrupt_parquet_names_the_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="broken.parquet"):
        list(read_parquet(bad))
    with pytest.raises(InputError, match="not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))


def test_written_files_follow_the_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "s.parquet"
    write_parquet(path, _records())
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
