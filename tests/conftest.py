"""Shared fixtures: small real corpora in Chinese and English, written as input files."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

ZH = [
    "人民日报讯，新年伊始，各地群众以多种方式欢度元旦佳节。",
    "这本书的内容很好，印刷清晰，送货也很快，值得推荐给大家。",
    "酒店的位置不错，但是房间的隔音太差了，晚上睡不好觉。",
    "１９９８年，我国经济继续保持稳定增长，物价涨幅进一步回落。",
    "价格要是能再低点就更好了！快递的服务态度不是很好。",
]
EN = [
    "The Python language reference describes the exact syntax and semantics of the language.",
    "A function definition is an executable statement that binds the function name to a function object.",
    "Names refer to objects and are introduced by name binding operations such as assignment.",
    "The global statement is a declaration which holds for the entire current code block.",
    "Exceptions are a means of breaking out of the normal flow of control of a code block.",
]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train no faster on two threads, and on a busy 2-core machine they can lose 20x:
    modules of small-model tests use one thread (`pytestmark = pytest.mark.usefixtures(...)`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def corpus_docs(n: int) -> list[dict]:
    """n documents mixing both languages, with real duplicates, HTML, short and empty texts."""
    docs = []
    for i in range(n):
        base = (ZH + EN)[i % 10]
        kind = i % 7
        if kind == 0:
            text = base  # a verbatim repeat of an earlier doc once i >= 10
        elif kind == 1:
            text = f"<p>{base}</p>\n<script>var x = {i};</script><p>第{i}段 paragraph {i}.</p>"
        elif kind == 2:
            text = "短" if i % 2 else "tiny"
        elif kind == 3:
            text = "   "
        else:
            text = f"{base} ({i}) {base[::-1]}"
        docs.append({"id": f"doc-{i:05d}", "text": text, "source": "fixture"})
    return docs


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """Three JSONL files (one gzipped) of 120 documents each."""
    import gzip

    d = tmp_path / "corpus"
    d.mkdir()
    docs = corpus_docs(360)
    for k in range(3):
        lines = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs[k * 120 : (k + 1) * 120])
        if k == 2:
            (d / f"part-{k}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
        else:
            (d / f"part-{k}.jsonl").write_text(lines, encoding="utf-8")
    return d


_DATA_RECIPE = """
name: small
input:
  files: ["corpus/*.jsonl*"]
  shard_size: {shard_size}
executor: {{kind: {executor}, workers: {workers}}}
pipeline:
{stages}
"""
DEFAULT_STAGES = ["strip_html: {}", "normalize: {}", "length_filter: {min_chars: 10}", "exact_dedup: {}"]


@pytest.fixture
def make_recipe(tmp_path: Path, corpus_dir: Path):
    """Write a data recipe over `corpus_dir` and return its path."""

    def make(shard_size: int = 40, workers: int = 1, stages: list[str] | None = None, executor: str = "local",
             name: str = "recipe.yaml") -> Path:
        body = _DATA_RECIPE.format(
            shard_size=shard_size, workers=workers, executor=executor,
            stages="\n".join(f"  - {s}" for s in (stages or DEFAULT_STAGES)),
        )
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return path

    return make


def _snapshot(run_dir: Path) -> dict[str, list[dict]]:
    """Every output and quarantine shard under stages/, as rows, keyed by relative path."""
    import pyarrow.parquet as pq

    return {
        str(p.relative_to(run_dir)): pq.read_table(p).to_pylist()
        for p in sorted((run_dir / "stages").rglob("*.parquet"))
        if p.parent.name not in ("map", "reduce")
    }


@pytest.fixture
def snapshot():
    return _snapshot


@pytest.fixture(scope="session")
def local_ray():
    """One local 2-CPU Ray for every test that compares executors (starting Ray takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def lmforge_cli():
    """Run `python -m lmforge.cli.main ARGS` in a subprocess, with extra folders on PYTHONPATH for custom stages.

    wait=False returns the Popen in its own session, so a test can SIGKILL the whole process group.
    """
    import os
    import subprocess
    import sys

    def run(*args: str, path: Path | None = None, wait: bool = True):
        extra = [str(path)] if path else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "lmforge.cli.main", *args]
        if wait:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    return run


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (never Playwright's own browser download).

    Module scope: Playwright's sync API keeps an event loop running while it is open, which would
    break later tests that call asyncio.run().

    `.ci/run` installs chromium (scripts/ci_chromium.sh), so in CI a missing browser is a failure;
    elsewhere the browser tests skip with the reason.
    """
    import os
    import shutil

    exe = os.environ.get("LMFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright)"
    if missing is None and exe is None:
        missing = "no chromium on PATH (bash scripts/ci_chromium.sh installs it)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


S3_SECRET = "s3cr3t-KEY-never-logged-0123456789"  # a fake secret: tests/collect/test_remote.py checks no log shows it


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, with dummy credentials and the endpoint in the environment."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "lmforge-test", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def empty_s3(s3_server):
    """`empty_s3(*buckets)`: a boto3 client of the test S3 server after removing every bucket and creating `buckets`
    (and a fresh s3fs client, whose listing cache would remember the removed objects)."""
    return _empty_s3


@pytest.fixture()
def downloads(monkeypatch):
    """The store paths `lmforge.storage` downloaded, in order: each is one GET of a whole object."""
    from lmforge import storage

    seen: list[str] = []
    real = storage._download

    def counting(fs, path, part, max_bytes):
        seen.append(path)
        return real(fs, path, part, max_bytes)

    monkeypatch.setattr(storage, "_download", counting)
    return seen


def _empty_s3(*buckets: str):
    """A boto3 client of the test S3 server after removing every bucket and creating `buckets`
    (and a fresh s3fs client, whose listing cache would remember the removed objects)."""
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3")
    for bucket in client.list_buckets().get("Buckets", []):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket["Name"], Key=obj["Key"])
        client.delete_bucket(Bucket=bucket["Name"])
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture()
def make_warc():
    """`make_warc(path, items)`: a gzipped WARC of HTTP responses, items as (url, body bytes, content type, status)."""

    def write(path: Path, items: list[tuple[str, bytes, str, str]]) -> Path:
        import io

        from warcio.statusandheaders import StatusAndHeaders
        from warcio.warcwriter import WARCWriter

        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            for url, body, ctype, status in items:
                headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
                writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                              http_headers=headers))
        return path

    return write
