"""A run directory on S3 (moto's server on loopback): published as it goes, killed, resumed from the store
alone (a fresh mirror), and byte-identical to the same recipe run in a local directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmforge.flow.mirror import MANIFEST

CRAWL, RUNS = "crawl", "runs"
NOT_COMPARED = ("logs/", "report.html", "collect/remote-cache/")  # timings and local caches
TIMED = ("stats.json", "steps/", ".done")  # JSON whose timing fields differ between two runs


def recipe(tmp_path: Path) -> Path:
    data = {
        "name": "s3-run",
        "input": {"warc": {"paths": [f"s3://{CRAWL}/segments/*.warc.gz"], "statuses": [200]}, "shard_size": 6},
        "executor": {"kind": "local", "workers": 1},  # inline: no worker processes to start
        "pipeline": [{"extract": {}}, {"normalize": {}}, {"langid": {"keep": ["zh", "en"]}}, {"gopher_quality": {}},
                     {"exact_dedup": {}}, {"minhash_dedup": {}}],
        "tokenizer": {"kind": "byte_bpe", "vocab_size": 400},
        "tokens": {"val_percent": 25},
    }
    path = tmp_path / "s3-run.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture()
def crawl(empty_s3, make_warc, tmp_path):
    """Two WARC segments in s3://crawl/segments: Chinese news and English docs pages, a copy and a 404."""
    from lmforge.collect.builtin import corpus_records

    zh = [r.text for r in corpus_records("peoples_daily", 400) if len(r.text) > 80]
    en = [r.text for r in corpus_records("python_docs", 400) if len(r.text) > 200]

    def html(paragraphs: list[str]) -> bytes:
        return ("<html><body><article>" + "".join(f"<p>{p}</p>" for p in paragraphs) + "</article></body></html>").encode()

    items = [(f"https://news.example.cn/{i}", html(zh[4 * i: 4 * i + 4]), "text/html", "200 OK") for i in range(20)]
    items += [(f"https://docs.example.org/{i}", html(en[4 * i: 4 * i + 4]), "text/html", "200 OK") for i in range(20)]
    items += [("https://mirror.example.net/0", items[3][1], "text/html", "200 OK"),
              ("https://docs.example.org/gone", b"<p>gone</p>", "text/html", "404 Not Found")]
    client = empty_s3(CRAWL, RUNS)
    for k, part in enumerate((items[::2], items[1::2])):
        path = make_warc(tmp_path / "segments" / f"seg-{k}.warc.gz", part)
        client.upload_file(str(path), CRAWL, f"segments/{path.name}")
    return client


def comparable(files: dict[str, bytes]) -> dict[str, object]:
    """The files two runs of one recipe must agree on: bytes, or for JSON with timings the JSON without them."""
    out: dict[str, object] = {}
    for rel, body in files.items():
        if rel.startswith(NOT_COMPARED) or rel.endswith(NOT_COMPARED) or rel == MANIFEST:
            continue
        out[rel] = _untimed(json.loads(body)) if rel.startswith(TIMED) or rel.endswith(TIMED) else body
    return out


def _untimed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "second" not in k and not k.endswith(("_s", "per_s"))}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def store_files(client, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def manifest(client) -> dict[str, dict]:
    try:
        body = client.get_object(Bucket=RUNS, Key=f"cc/{MANIFEST}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return {}
    return json.loads(body)["files"]


def lmforge_run(recipe_path: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "LMFORGE_CACHE_DIR": str(cache), "LMFORGE_MIRROR_INTERVAL_S": "0.2"}
    return subprocess.Popen([sys.executable, "-m", "lmforge", "run", str(recipe_path), "--out", f"s3://{RUNS}/cc"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_run_on_s3_killed_and_resumed_elsewhere_equals_a_local_run(crawl, tmp_path):
    from lmforge.api import run

    path = recipe(tmp_path)
    local = run(path, tmp_path / "local-run")
    assert local.stats["totals"]["dropped"]["exact_duplicate"] == 1

    first = lmforge_run(path, tmp_path / "cache-a")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        published = manifest(crawl)
        if any(k.startswith("stages/") and k.endswith(".done") for k in published):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = manifest(crawl)
    assert at_kill and "steps/tokens.done" not in at_kill, "the run should have been killed halfway"
    for rel in at_kill:  # the store is consistent at the kill: each published marker has its shard
        if rel.startswith("stages/") and rel.endswith(".done") and "/shard-" in rel:
            assert rel.replace(".done", ".parquet") in at_kill

    second = lmforge_run(path, tmp_path / "cache-b")  # another machine: nothing but the store to resume from
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out.decode()[-3000:]
    remote = store_files(crawl, RUNS, "cc")
    assert not [k for k in remote if ".upload-" in k]  # no temporary key left behind
    assert set(json.loads(remote[MANIFEST])["files"]) == set(remote) - {MANIFEST}
    assert comparable(remote) == comparable(local_files(tmp_path / "local-run"))
    assert any(k.startswith("tokens/train/") for k in remote) and "tokenizer/tokenizer.json" in remote
    assert b"s3cr3t" not in b"".join(remote.values()) and b"s3cr3t" not in out

    # the run's record shards on the store are an input like any other: same records, same ids
    from lmforge.collect.files import FilesConfig, iter_files
    from lmforge.pipeline.runner import iter_output

    final = local.output_dir.relative_to(tmp_path / "local-run").as_posix()
    shards = FilesConfig(paths=[f"s3://{RUNS}/cc/{final}/shard-*.parquet"])
    kept = [(r.id, r.text, r.url) for r in iter_output(local.output_dir)]
    assert [(r.id, r.text, r.url) for r in iter_files(shards, tmp_path, tmp_path / "work")] == kept and kept

    nowhere = subprocess.run([sys.executable, "-m", "lmforge", "run", str(path), "--out", "s3://no-such-bucket/cc"],
                             env={**os.environ, "LMFORGE_CACHE_DIR": str(tmp_path / "cache-c")},
                             capture_output=True, text=True, timeout=120)
    assert nowhere.returncode == 2 and nowhere.stderr.strip().splitlines()[-1] \
        == "error: --out: cannot write s3://no-such-bucket/cc: not found (no such bucket or object)"

    # a finished run re-run publishes nothing new
    before = {o["Key"]: o["LastModified"] for o in crawl.list_objects_v2(Bucket=RUNS)["Contents"]}
    third = lmforge_run(path, tmp_path / "cache-b")
    assert third.wait(timeout=120) == 0
    assert {o["Key"]: o["LastModified"] for o in crawl.list_objects_v2(Bucket=RUNS)["Contents"]} == before


# ---------------------------------------------------------------------------- one pass at a time (memory://)


@pytest.fixture()
def store(monkeypatch, tmp_path):
    """An empty fsspec memory store and a fresh user cache for the mirrors."""
    import fsspec

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    return fs


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_a_pass_publishes_files_then_markers_then_the_manifest_and_removes_deleted_files(store):
    from lmforge.flow.mirror import RunMirror

    mirror = RunMirror("memory://runs/a", interval=3600)
    mirror.pull()
    write(mirror.local, {"config.yaml": "name: a\n", "stages/00-input/shard-00000.parquet": "rows",
                         "stages/00-input/shard-00000.done": "{}", "stages/00-input/.shard-00001.parquet.9.ab.tmp": "x",
                         "collect/remote-cache/k/seg.warc.gz": "cached input"})
    puts: list[str] = []
    real_mv = store.mv
    store.mv = lambda src, dst, **kw: (puts.append(dst.rsplit("/", 1)[-1]), real_mv(src, dst, **kw))[1]
    assert mirror.publish() == 3
    assert puts == ["config.yaml", "shard-00000.parquet", "shard-00000.done", MANIFEST]
    listed = json.loads(store.cat_file(f"/runs/a/{MANIFEST}"))["files"]
    assert sorted(listed) == ["config.yaml", "stages/00-input/shard-00000.done", "stages/00-input/shard-00000.parquet"]
    assert mirror.publish() == 0  # nothing changed: nothing uploaded, not even the manifest
    (mirror.local / "stages/00-input/shard-00000.done").unlink()
    (mirror.local / "stages/00-input/shard-00000.parquet").unlink()
    assert mirror.publish() == 2
    assert not store.exists("/runs/a/stages/00-input/shard-00000.done")
    assert sorted(json.loads(store.cat_file(f"/runs/a/{MANIFEST}"))["files"]) == ["config.yaml"]


def test_a_pass_killed_halfway_leaves_the_store_at_the_previous_pass(store, monkeypatch, tmp_path):
    from lmforge.flow.mirror import RunMirror

    first = RunMirror("memory://runs/b", interval=3600)
    first.pull()
    write(first.local, {"config.yaml": "name: b\n", "s/shard-0.parquet": "zero", "s/shard-0.done": "{}"})
    first.publish()
    write(first.local, {"s/shard-1.parquet": "one", "s/shard-1.done": "{}"})
    real_mv, moved = store.mv, []

    def dies_after_one(src, dst, **kw):
        if moved:
            raise ConnectionError("killed")
        moved.append(dst)
        return real_mv(src, dst, **kw)

    store.mv = dies_after_one
    with pytest.raises(Exception, match="killed"):
        first.publish()
    store.mv = real_mv
    assert store.exists("/runs/b/s/shard-1.parquet") and any(".upload-" in k for k in store.find("/runs/b"))

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "elsewhere"))  # resume on another machine
    second = RunMirror("memory://runs/b", interval=3600)
    second.pull()
    got = sorted(p.relative_to(second.local).as_posix() for p in second.local.rglob("*") if p.is_file())
    assert got == ["config.yaml", "s/shard-0.done", "s/shard-0.parquet"]  # shard 1 was never published
    assert not any(".upload-" in k for k in store.find("/runs/b"))  # the killed pass's temporary keys are gone


def test_a_mirror_of_a_run_the_store_no_longer_holds_is_cleared(store):
    from lmforge.flow.mirror import RunMirror

    old = RunMirror("memory://runs/c", interval=3600)
    old.pull()
    write(old.local, {"config.yaml": "name: old\n", "s/shard-0.done": "{}"})
    old.publish()
    store.rm("/runs/c", recursive=True)  # someone deletes the run on the store to start again
    again = RunMirror("memory://runs/c", interval=3600)
    assert again.local == old.local
    again.pull()  # the store holds no run: a new one, not the old files
    assert again.local.is_dir() and not any(again.local.iterdir())


# ---------------------------------------------------------------------------- reading a run on a store

SMALL = """
name: small
input: {builtin: {corpora: [peoples_daily, reviews], max_docs_per_corpus: 40}, shard_size: 30}
executor: {kind: local, workers: 1}
pipeline: [{normalize: {}}, {length_filter: {min_chars: 20}}, {exact_dedup: {}}]
"""


def test_stats_and_report_read_a_run_by_its_url_from_another_machine(store, monkeypatch, tmp_path, capsys):
    import hashlib

    from lmforge.cli.main import main
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe

    recipe = parse_recipe(yaml.safe_load(SMALL), where="test")
    run_recipe(recipe, "memory://runs/small", base_dir=tmp_path)
    run_recipe(recipe, tmp_path / "local", base_dir=tmp_path)
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "elsewhere"))  # a machine that never saw the run
    capsys.readouterr()
    assert main(["stats", "memory://runs/small", "--json"]) == 0
    local = json.loads((tmp_path / "local" / "stats.json").read_text())
    assert [(s["name"], s["in"], s["out"]) for s in json.loads(capsys.readouterr().out)["stages"]] == \
        [(s["name"], s["in"], s["out"]) for s in local["stages"]]
    fetched = [p.name for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()]
    assert fetched == ["stats.json"]  # stats needs one file, not the run's shards
    assert main(["stats", "memory://runs/small"]) == 0 and "exact_dedup" in capsys.readouterr().out

    before = json.loads(store.cat_file(f"/runs/small/{MANIFEST}"))["files"]
    mirror = (tmp_path / "elsewhere" / "stats.json").parent
    (mirror / "stages" / "old.txt").parent.mkdir()
    (mirror / "stages" / "old.txt").write_text("left by an older run of this URL")
    assert main(["report", "memory://runs/small"]) == 0
    assert capsys.readouterr().out.startswith("report: memory://runs/small/report.html")
    html = store.cat_file("/runs/small/report.html")
    assert b"Data funnel" in html and b"exact_dedup" in html
    after = json.loads(store.cat_file(f"/runs/small/{MANIFEST}"))["files"]
    (written,) = (tmp_path / "elsewhere").rglob("report.html")  # rebuilt in this machine's mirror, then published
    assert after["report.html"]["sha256"] == hashlib.sha256(html).hexdigest() == hashlib.sha256(
        written.read_bytes()).hexdigest()
    assert {k: v for k, v in after.items() if k != "report.html"} == \
        {k: v for k, v in before.items() if k != "report.html"}  # the report is the only object it wrote
    assert not any(".upload-" in k for k in store.find("/runs/small")) and not store.exists("/runs/small/stages/old.txt")

    for command in ("stats", "report"):
        assert main([command, "memory://runs/none"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
            f"error: RUN_DIR: no lmforge run at memory://runs/none (no {MANIFEST}; is the URL right?)"
