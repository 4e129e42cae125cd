import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.collect.dataset import DatasetConfig, iter_dataset
from lmforge.errors import ConfigError, InputError

datasets = pytest.importorskip("datasets")
ROWS = [{"id": f"r{i}", "text": t, "label": i % 2} for i, t in enumerate(["第一条", "second row", "第三條", "fourth"])]


def read(tmp_path, **cfg):
    return list(iter_dataset(DatasetConfig(**cfg), tmp_path))


def test_save_to_disk_dataset_and_dict(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    recs = read(tmp_path, path="single")
    assert [r.text for r in recs] == [r["text"] for r in ROWS]
    assert [r.id for r in recs] == ["r0", "r1", "r2", "r3"] and recs[1].meta["fields"] == {"label": 1}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:3]),
                               "test": datasets.Dataset.from_list(ROWS[3:])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert [r.text for r in read(tmp_path, path="dict")] == ["fourth", "第一条", "second row", "第三條"]
    assert [r.text for r in read(tmp_path, path="dict", split="test")] == ["fourth"]
    with pytest.raises(ConfigError, match="'validation' not in"):
        read(tmp_path, path="dict", split="validation")
    with pytest.raises(InputError, match="no column 'content'"):
        read(tmp_path, path="single", text_field="content")


def test_parquet_and_jsonl_directories_and_hub_snapshot(tmp_path):
    snap = tmp_path / "datasets--org--corpus" / "snapshots" / "abc123"
    (snap / "data").mkdir(parents=True)
    (snap / "README.md").write_text("---\nlicense: mit\n---\n# corpus card, not data")
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), snap / "data" / "train-00000-of-00001.parquet")
    (snap / "data" / "test-00000-of-00001.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS[2:]) + '{"text": 5}\n', "utf-8")
    recs = read(tmp_path, path="datasets--org--corpus")
    assert [r.text for r in recs if r.drop_reason is None] == ["第三條", "fourth", "第一条", "second row"]
    assert [r.drop_reason for r in recs if r.drop_reason] == ["bad_json"]  # a line without a string text
    assert all(r.source == "dataset:abc123" for r in recs)
    assert [r.text for r in read(tmp_path, path="datasets--org--corpus", split="train")] == ["第一条", "second row"]


def test_arrow_files_and_missing_data(tmp_path):
    d = tmp_path / "arrow"
    d.mkdir()
    table = pa.Table.from_pylist(ROWS)
    with pa.ipc.new_stream(d / "data-00000.arrow", table.schema) as w:
        w.write_table(table)
    (d / "data-00001.arrow").write_bytes(b"not arrow at all")
    recs = read(tmp_path, path="arrow")
    assert [r.text for r in recs if r.drop_reason is None] == [r["text"] for r in ROWS]
    assert [r.drop_reason for r in recs if r.drop_reason] == ["corrupt_file"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no data files"):
        read(tmp_path, path="empty")
    with pytest.raises(ConfigError, match="is not a directory"):
        read(tmp_path, path="nope")
