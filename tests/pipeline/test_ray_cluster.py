"""recipes/commoncrawl-warc-ray.yaml on a three-node Ray cluster on this machine, losing a worker node mid-run.

The head (no CPUs, so every task lands on a worker) and two 1-CPU worker nodes are separate `ray start --block`
processes; the run is the CLI with `--ray-address`. Once the first pipeline segment has finished a shard, the
raylet of a worker node that is running a task is SIGKILLed, and the run must still end with the same record
shards, stats, tokenizer and token shards as the local executor.

Teardown kills only the processes these `ray start` commands started (never `ray stop`, which would also end
any other Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "commoncrawl-warc-ray.yaml"
RAY = Path(sys.executable).with_name("ray")
SHARD_SIZE = 6
IDLE = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")  # titles of Ray processes running no task
NAV = "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page(title: str, paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<html><head><title>{title}</title></head><body>{NAV}<article><h1>{title}</h1>{body}</article>"
            "<footer>Copyright 2024. All rights reserved.</footer></body></html>").encode()


def write_crawl(make_warc, path: Path, pages: int = 40) -> int:
    """`pages` Chinese and `pages` English pages of built-in text, plus verbatim copies (exact dedup) and
    copies with one paragraph changed (near-dup), a 404 and an image. Returns the number of responses."""
    from lmforge.collect.builtin import corpus_records

    zh = [r.text for r in corpus_records("peoples_daily", 2000) if len(r.text) > 80]
    en = [r.text for r in corpus_records("python_docs", 2000) if len(r.text) > 200]
    items = [(f"https://news.example.cn/{i}", _page(f"新闻 {i}", zh[4 * i: 4 * i + 4]), "text/html", "200 OK")
             for i in range(pages)]
    items += [(f"https://docs.example.org/{i}", _page(f"Docs {i}", en[4 * i: 4 * i + 4]), "text/html", "200 OK")
              for i in range(pages)]
    for i in range(0, pages, 5):
        items.append((f"https://mirror.example.net/{i}", items[i][1], "text/html", "200 OK"))
        near = en[4 * i: 4 * i + 3] + ["This mirror adds one closing remark of its own to the page."]
        items.append((f"https://copy.example.org/{i}", _page(f"Docs {i}", near), "text/html", "200 OK"))
    items += [("https://docs.example.org/missing", b"<p>not found</p>", "text/html", "404 Not Found"),
              ("https://docs.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", "200 OK")]
    make_warc(path, items)
    return len(items)


def write_recipe(directory: Path) -> Path:
    """The shipped recipe (clean, dedup, tokenizer, token shards) with small shards and a small vocabulary."""
    data = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    names = [next(iter(stage)) for stage in data["pipeline"]]
    assert names[-2:] == ["exact_dedup", "minhash_dedup"]
    data["input"]["shard_size"] = SHARD_SIZE
    data["tokenizer"]["vocab_size"] = 600
    data["tokens"]["val_percent"] = 10
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class RayNode:
    """One `ray start --block` process; it owns (as descendants) every Ray process of its node."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # the auth token comes from os.environ
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *args], env=env,
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.known: dict[int, psutil.Process] = {}

    def processes(self) -> list[psutil.Process]:
        """This node's processes now, remembered so teardown still finds those orphaned by a kill."""
        try:
            for p in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]:
                self.known.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        return list(self.known.values())

    def raylet(self) -> psutil.Process:
        found = [p for p in self.processes() if p.is_running() and p.name() == "raylet"]
        assert len(found) == 1, (self.name, found)
        return found[0]

    def busy(self) -> bool:
        """Whether one of this node's Ray workers is running a task (an idle one is titled ray::IDLE)."""
        for p in self.processes():
            try:
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::") and not title.startswith(IDLE):
                return True
        return False

    def stop(self) -> None:
        procs = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        for p in procs:  # whatever did not go with it (the same process objects: no pid reuse hazard)
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


def alive_nodes(address: str) -> list[dict]:
    """The cluster's alive nodes and their resources, asked by a short-lived driver."""
    code = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head with no CPUs and two 1-CPU worker nodes (resources node_a, node_b), each its own process tree.

    Ray (2.5x+) authenticates nodes and drivers with a token: every process here, `lmforge run` included,
    gets the same fresh one through the environment, so ~/.ray/auth_token is neither needed nor written.
    Each node gets its own short temp dir (Unix socket paths must stay under ~107 bytes)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    root = Path(tempfile.mkdtemp(prefix="lmf-ray-"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1"]
    nodes = {"head": RayNode("head", ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                                      "--include-dashboard=false", f"--temp-dir={root}/h", *common], root)}
    try:
        deadline = time.time() + 120
        while b"Ray runtime started" not in nodes["head"].log.read_bytes():
            assert nodes["head"].proc.poll() is None and time.time() < deadline, nodes["head"].log.read_text()
            time.sleep(0.5)
        for name in ("node_a", "node_b"):
            nodes[name] = RayNode(name, [f"--address={address}", "--num-cpus=1", "--num-gpus=0",
                                         f"--resources={json.dumps({name: 1})}", f"--temp-dir={root}/{name[-1]}",
                                         *common], root)
        while len(alive := alive_nodes(address)) < 3:
            for node in nodes.values():
                assert node.proc.poll() is None, node.log.read_text()
            assert time.time() < deadline, "the three Ray nodes did not come up"
            time.sleep(1)
        assert sorted(r.get("CPU", 0) for r in alive) == [0, 1, 1]
        assert {name for r in alive for name in r if name.startswith("node_")} == {"node_a", "node_b"}
        for node in nodes.values():
            node.processes()
        yield address, nodes
    finally:
        for node in reversed(nodes.values()):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _stats(run: Path) -> tuple[list, dict]:
    stats = json.loads((run / "stats.json").read_text(encoding="utf-8"))
    stages = [(s["name"], s["in"], s["out"], s["dropped"], s.get("counters")) for s in stats["stages"]]
    return stages, stats["totals"]["dropped"]


def _token_files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted((run / "tokens").rglob("*"))
            if p.is_file() and (p.suffix in (".tok", ".idx") or p.name == "manifest.json")}


def test_cluster_run_survives_a_dead_worker_node_and_equals_local(ray_cluster, tmp_path, snapshot, lmforge_cli,
                                                                   make_warc):
    address, nodes = ray_cluster
    (tmp_path / "warc").mkdir()
    responses = write_crawl(make_warc, tmp_path / "warc" / "crawl-00000.warc.gz")
    recipe = write_recipe(tmp_path)
    on_ray = tmp_path / "ray"

    proc = lmforge_cli("run", str(recipe), "--out", str(on_ray), "--ray-address", address, wait=False)
    try:
        deadline = time.time() + 300
        victim = None
        while victim is None and time.time() < deadline and proc.poll() is None:
            if list(on_ray.glob("stages/01-*/shard-*.done")):
                victim = next((n for n in (nodes["node_a"], nodes["node_b"]) if n.busy()), None)
            time.sleep(0.05)
        assert victim is not None, f"no worker node was busy after the first shard (run exit code {proc.poll()})"
        victim.raylet().kill()  # the node dies: its raylet, and the task it was running is lost
        shards = len(list(on_ray.glob("stages/00-input/shard-*.parquet")))
        done_at_kill = len(list(on_ray.glob("stages/01-*/shard-*.done")))
        assert shards > 4 and done_at_kill < shards, "the kill should land while the first segment runs"
        first_rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:  # a failed assertion above: the driver must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(alive_nodes(address)) == 2  # the head and the other worker node: the dead one stayed dead
    log.info("killed %s with %d of %d shards of the first segment done; the run exited %d",
             victim.name, done_at_kill, shards, first_rc)
    if first_rc != 0:  # the documented fallback: the same command resumes at the first unfinished shard
        again = lmforge_cli("run", str(recipe), "--out", str(on_ray), "--ray-address", address)
        assert again.returncode == 0, again.stderr[-3000:]
    local = tmp_path / "local"
    straight = lmforge_cli("run", str(recipe), "--out", str(local), "--executor", "local", "--workers", "1")
    assert straight.returncode == 0, straight.stderr[-3000:]

    a, b = snapshot(on_ray), snapshot(local)
    assert a.keys() == b.keys() and a == b  # every record shard of every stage, quarantine included, row by row
    stages, dropped = _stats(on_ray)
    assert (stages, dropped) == _stats(local)  # in / out / dropped / counters of every stage
    assert stages[0][:2] == ("input", responses)
    assert dropped["http_404"] == dropped["content_type"] == 1 and dropped["exact_duplicate"] == 8
    assert dropped["near_duplicate"] >= 1
    final = [r["id"] for k, rows in a.items() if "03-minhash_dedup/shard-" in k for r in rows]
    assert len(final) == len(set(final)) == stages[-1][2] > 50
    tokens = _token_files(on_ray)
    assert len(tokens) > 4 * 2 and tokens == _token_files(local)  # .tok, .idx and manifests of train/ and val/
    tokenizer = "tokenizer/tokenizer.json"
    assert (on_ray / tokenizer).read_bytes() == (local / tokenizer).read_bytes()
