"""Inputs on S3: a real S3 API (moto's server on loopback), read through fsspec/s3fs and the real runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.collect.files import FilesConfig, iter_files
from lmforge.collect.remote import RemoteFile, is_url, public_url
from lmforge.collect.warc import WarcConfig, iter_warc
from lmforge.errors import InputError
from lmforge.records import make_id

SECRET = "s3cr3t-KEY-never-logged-0123456789"  # what the s3_server fixture (conftest) sets
BUCKET = "lmforge-crawl"


def test_fsspec_and_s3fs_import():
    import fsspec
    import s3fs

    assert fsspec.get_filesystem_class("s3") is s3fs.S3FileSystem


def test_urls_are_told_from_paths_and_logged_without_secrets():
    assert is_url("s3://bucket/crawl/*.warc.gz") and is_url("https://host/a.jsonl") and is_url("memory://x/y")
    assert not is_url("crawl/*.warc.gz") and not is_url("/data/a.warc") and not is_url("C:\\data\\a.warc")
    assert public_url("https://user:pw@host:8080/a/b.jsonl?X-Amz-Signature=abc#frag") == "https://host:8080/a/b.jsonl"
    assert RemoteFile("s3://b/crawl/x.warc.gz", 10, "").suffixes == [".warc", ".gz"]


def page(i: int) -> bytes:
    return f"<html><body><p>Page {i}: 第{i}页的正文内容，用于测试远程读取。</p></body></html>".encode()


def warc_items(start: int, n: int) -> list[tuple[str, bytes, str, str]]:
    """Responses for `make_warc`: pages `start`..`start + n - 1`, every fifth one a 404."""
    return [(f"https://site.example/{i}", page(i), "text/html", "404 Not Found" if i % 5 == 4 else "200 OK")
            for i in range(start, start + n)]


@pytest.fixture()
def s3(empty_s3, tmp_path, make_warc):
    """A bucket holding two WARCs and a few text files; the same files also lie in `tmp_path/local`."""

    client = empty_s3(BUCKET)
    local = tmp_path / "local"
    (local / "crawl").mkdir(parents=True)
    (local / "text").mkdir()
    make_warc(local / "crawl" / "crawl-00000.warc.gz", warc_items(0, 6))
    make_warc(local / "crawl" / "crawl-00001.warc.gz", warc_items(6, 5))
    (local / "text" / "a.jsonl").write_text("\n".join(json.dumps({"text": f"行 {i}"}) for i in range(3)) + "\n",
                                            encoding="utf-8")
    (local / "text" / "b.txt").write_text("第一段。\n\n第二段。", encoding="utf-8")
    (local / "text" / "c.bin").write_bytes(b"\x00\x01")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, path.relative_to(local).as_posix())
    return client, local


def run(paths: list[str], run_dir: Path, base_dir: Path):
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe

    recipe = parse_recipe({"name": "remote-warc", "input": {"warc": {"paths": paths}, "shard_size": 4},
                           "pipeline": ["strip_html", {"length_filter": {"min_chars": 5}}, "exact_dedup"],
                           "executor": {"kind": "local", "workers": 1}}, where="test")
    return run_recipe(recipe, run_dir, base_dir=base_dir)


def stage_files(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted((run_dir / "stages").rglob("*.parquet"))}


def test_a_recipe_reads_warcs_from_s3_like_local_files_and_resumes_without_downloading(s3, tmp_path, downloads,
                                                                                      caplog):
    from lmforge.pipeline.runner import iter_output

    caplog.set_level("DEBUG", logger="lmforge")
    _, local = s3
    local_run = run(["crawl/*.warc.gz"], tmp_path / "local-run", local)
    remote_run = run([f"s3://{BUCKET}/crawl/*.warc.gz"], tmp_path / "s3-run", tmp_path)
    assert sorted(downloads) == [f"{BUCKET}/crawl/crawl-00000.warc.gz", f"{BUCKET}/crawl/crawl-00001.warc.gz"]

    kept = [r.to_dict() for r in iter_output(remote_run.output_dir)]
    assert len(kept) == 9  # 11 responses, 2 of them 404s
    assert kept == [r.to_dict() for r in iter_output(local_run.output_dir)]
    assert {r["provenance"]["warc_file"] for r in kept} == {"crawl-00000.warc.gz", "crawl-00001.warc.gz"}
    # ids come from WARC-Record-ID and nothing in a record names the cached copy: the shards are the same bytes
    assert stage_files(tmp_path / "s3-run") == stage_files(tmp_path / "local-run")
    assert remote_run.stats["totals"]["dropped"] == local_run.stats["totals"]["dropped"] == {"http_404": 2}

    # an ingest killed while downloading the first WARC: no shards, no markers, only a partial copy of it;
    # the re-run fetches that object again (one GET on the server), never the one already staged
    cached = sorted((tmp_path / "s3-run" / "collect" / "remote-cache").rglob("*.warc.gz"), key=lambda p: p.name)
    assert [p.name for p in cached] == ["crawl-00000.warc.gz", "crawl-00001.warc.gz"]
    for marker in (tmp_path / "s3-run" / "steps").glob("*.done"):
        marker.unlink()
    before = stage_files(tmp_path / "s3-run")
    for shard in (tmp_path / "s3-run" / "stages").rglob("*"):
        if shard.is_file():
            shard.unlink()
    part = cached[0].parent / (cached[0].name + ".part")
    part.write_bytes(cached[0].read_bytes()[:100])
    cached[0].unlink()
    downloads.clear()
    caplog.clear()
    run([f"s3://{BUCKET}/crawl/*.warc.gz"], tmp_path / "s3-run", tmp_path)
    assert downloads == [f"{BUCKET}/crawl/crawl-00000.warc.gz"] and not part.exists()
    gets = [m for m in caplog.messages if f"GET /{BUCKET}/crawl/crawl-" in m]
    assert len(gets) == 1 and "crawl-00000" in gets[0]
    assert stage_files(tmp_path / "s3-run") == before

    outputs = b"".join(p.read_bytes() for p in (tmp_path / "s3-run").rglob("*") if p.is_file())
    assert SECRET.encode() not in outputs and SECRET not in caplog.text
    assert f"downloading s3://{BUCKET}/crawl/crawl-00000.warc.gz" in caplog.text
    downloads.clear()
    run([f"s3://{BUCKET}/crawl/*.warc.gz"], tmp_path / "s3-run", tmp_path)  # finished: nothing is read again
    assert downloads == []


def test_a_changed_object_is_downloaded_again(s3, tmp_path, downloads, make_warc):
    client, local = s3
    config = WarcConfig(paths=[f"s3://{BUCKET}/crawl/crawl-00001.warc.gz"])
    assert len(list(iter_warc(config, tmp_path, tmp_path / "work"))) == 5
    list(iter_warc(config, tmp_path, tmp_path / "work"))
    assert len(downloads) == 1
    make_warc(local / "new.warc.gz", warc_items(100, 2))
    client.upload_file(str(local / "new.warc.gz"), BUCKET, "crawl/crawl-00001.warc.gz")
    urls = [r.url for r in iter_warc(config, tmp_path, tmp_path / "work")]
    assert urls == ["https://site.example/100", "https://site.example/101"] and len(downloads) == 2


def test_files_from_s3_are_named_by_their_url(s3, tmp_path, downloads):
    _, local = s3
    url = f"s3://{BUCKET}/text"
    records = list(iter_files(FilesConfig(paths=[f"{url}/*"], text_split="paragraph"), tmp_path, tmp_path / "w"))
    by_id = {r.id: r for r in records}
    assert by_id[make_id("file:jsonl", f"{url}/a.jsonl:2")].text == "行 1"
    assert by_id[make_id("file:text", f"{url}/b.txt#1")].text == "第二段。"
    assert {r.url for r in records} == {f"{url}/a.jsonl", f"{url}/b.txt", f"{url}/c.bin"}
    (unknown,) = [r for r in records if r.drop_reason]
    assert unknown.url == f"{url}/c.bin" and unknown.drop_reason == "unsupported_format"
    assert sorted(downloads) == [f"{BUCKET}/text/a.jsonl", f"{BUCKET}/text/b.txt"]  # c.bin was not fetched
    # a prefix stands for the objects below it, as a folder does; staged copies are reused
    again = iter_files(FilesConfig(paths=[f"{url}/"], text_split="paragraph"), tmp_path, tmp_path / "w")
    assert [r.id for r in again] == [r.id for r in records] and len(downloads) == 2
    # the same texts as the local files, and the object's modification time rather than the download's
    local_texts = sorted(r.text for r in iter_files(FilesConfig(paths=[str(local / "text")], text_split="paragraph"),
                                                    tmp_path) if not r.drop_reason)
    assert sorted(r.text for r in records if not r.drop_reason) == local_texts
    head = s3[0].head_object(Bucket=BUCKET, Key="text/a.jsonl")["LastModified"]
    assert by_id[make_id("file:jsonl", f"{url}/a.jsonl:1")].provenance["modified_at"] == \
        head.isoformat(timespec="seconds").replace("Z", "+00:00")


def test_a_bad_csv_row_on_s3_is_quarantined_under_its_url(s3, tmp_path):
    client, _ = s3
    client.put_object(Bucket=BUCKET, Key="rows/r.csv", Body=("text\nshort row\n" + "x" * 200 + "\nlast row\n").encode())
    url = f"s3://{BUCKET}/rows/r.csv"
    records = list(iter_files(FilesConfig(paths=[url], max_line_bytes=64), tmp_path, tmp_path / "w"))
    assert [r.text for r in records if not r.drop_reason] == ["short row", "last row"]
    (bad,) = [r for r in records if r.drop_reason]
    assert bad.drop_reason == "line_too_long" and bad.url == url and bad.id == make_id("file:csv", f"{url}:2#line_too_long")


def test_an_object_over_the_limit_is_quarantined_without_being_fetched(s3, tmp_path, downloads):
    (rec,) = iter_files(FilesConfig(paths=[f"s3://{BUCKET}/text/a.jsonl"], max_file_bytes=10), tmp_path, tmp_path)
    assert rec.drop_reason == "file_too_large" and rec.url == f"s3://{BUCKET}/text/a.jsonl"
    assert "> 10 (max_file_bytes)" in rec.meta["error"]
    (rec,) = iter_warc(WarcConfig(paths=[f"s3://{BUCKET}/crawl/crawl-00000.warc.gz"], max_file_bytes=100), tmp_path)
    assert rec.drop_reason == "file_too_large" and rec.url == f"s3://{BUCKET}/crawl/crawl-00000.warc.gz"
    assert downloads == []
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize(("path", "message"), [
    ("s3://no-such-bucket/crawl/x.warc.gz", "input.warc.paths[0]: cannot read s3://no-such-bucket/crawl/x.warc.gz: "
                                            "not found (no such bucket or object)"),
    (f"s3://{BUCKET}/crawl/missing.warc.gz", f"input.warc.paths[0]: cannot read s3://{BUCKET}/crawl/missing.warc.gz"
                                             ": not found (no such bucket or object)"),
    ("s3://no-such-bucket/crawl/*.warc.gz", "input.warc.paths[0]: no object matches s3://no-such-bucket/crawl/"
                                            "*.warc.gz (is the bucket or prefix right?)"),
])
def test_a_missing_bucket_or_object_is_one_line_input_error(s3, tmp_path, path, message):
    with pytest.raises(InputError) as err:
        list(iter_warc(WarcConfig(paths=[path]), tmp_path, tmp_path))
    assert str(err.value) == message


def test_credentials_in_a_url_are_not_logged_or_kept(tmp_path, caplog):
    import fsspec

    caplog.set_level("DEBUG", logger="lmforge")
    fs = fsspec.filesystem("memory")
    fs.pipe("/lmforge-test/notes.txt", "备忘录的内容。".encode())
    records = list(iter_files(FilesConfig(paths=["memory://lmforge-test/notes.txt"]), tmp_path, tmp_path))
    assert [r.text for r in records] == ["备忘录的内容。"] and records[0].url == "memory:///lmforge-test/notes.txt"
    with pytest.raises(InputError) as err:
        list(iter_files(FilesConfig(paths=[f"https://user:{SECRET}@127.0.0.1:9/a.txt?sig={SECRET}"]), tmp_path,
                        tmp_path))
    assert SECRET not in str(err.value) and "https://127.0.0.1:9/a.txt" in str(err.value)
    assert SECRET not in caplog.text


def test_a_damaged_remote_warc_is_quarantined_under_its_url(s3, tmp_path):
    client, local = s3
    data = bytearray((local / "crawl" / "crawl-00000.warc.gz").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)  # one gzip member damaged; the members after it are read
    client.put_object(Bucket=BUCKET, Key="bad/bad.warc.gz", Body=bytes(data))
    url = f"s3://{BUCKET}/bad/bad.warc.gz"
    records = list(iter_warc(WarcConfig(paths=[url]), tmp_path, tmp_path / "work"))
    (damaged,) = [r for r in records if r.drop_reason == "corrupt_warc_member"]
    assert damaged.url == url and damaged.id == make_id("warc", f"{url}@{damaged.meta['warc_offset']}#damaged")
    assert 3 <= sum(r.drop_reason is None for r in records) < 5
    assert {r.provenance["warc_file"] for r in records if r.provenance} == {"bad.warc.gz"}
