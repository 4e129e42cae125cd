"""SIGKILL of `lmforge run` must not leave its worker processes behind (issue 19, item 19).

Only the main process is killed (not its group, as a supervisor or the OOM killer would): every
process it started, found through /proc before the kill, must be gone a few seconds later.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

PIPELINE_TESTS = Path(__file__).resolve().parents[1] / "pipeline"  # slowstage.py lives there
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process below `root` (start time tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append(int(entry))
            starts[int(entry)] = st[2]
    found, todo = {}, [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            found[kid] = starts[kid]
            todo.append(kid)
    return found


def alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[0] not in ("Z", "X")


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
        rss = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return f"{pid} (gone)"
    return f"{pid} [{rss.split(':')[1].strip()}] {cmd}"


def _kill_main_and_watch(proc, ready, timeout: float = 120.0, grace: float = 5.0) -> list[str]:
    """Wait for `ready(descendants)`, SIGKILL the main process only, return what is still alive after `grace` s."""
    deadline = time.monotonic() + timeout
    kids: dict[int, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        kids = descendants(proc.pid)
        if ready(kids):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before the test could kill it"
    assert ready(kids), f"the workers never started: {[describe(p) for p in kids]}"
    kids = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + grace
    while time.monotonic() < end and any(alive(p, s) for p, s in kids.items()):
        time.sleep(0.1)
    survivors = [p for p, s in kids.items() if alive(p, s)]
    report = [describe(p) for p in survivors]
    for p in survivors:  # our own processes: clean up, then fail
        if alive(p, kids[p]):
            os.kill(p, signal.SIGKILL)
    return report


def _workers(kids: dict[int, int]) -> list[int]:
    return [p for p in kids if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_sigkill_of_run_leaves_no_pool_workers(make_recipe, tmp_path, lmforge_cli):
    recipe = make_recipe(shard_size=20, workers=2, stages=['"slowstage:Slow": {seconds: 0.05}', "normalize: {}"])
    out = tmp_path / "run"
    seg = out / "stages" / "01-slow+normalize"
    proc = lmforge_cli("run", str(recipe), "--out", str(out), path=PIPELINE_TESTS, wait=False)

    def ready(kids: dict[int, int]) -> bool:  # both workers up and at least one shard done by them
        try:
            return len(_workers(kids)) >= 2 and any(seg.glob("shard-*.done"))
        except OSError:
            return False

    survivors = _kill_main_and_watch(proc, ready)
    assert not survivors, f"processes outlived the killed run: {survivors}"


@pytest.mark.slow
def test_sigkill_of_a_ray_run_leaves_no_ray_processes(make_recipe, tmp_path, lmforge_cli):
    """Ray's workers, raylet and GCS go within seconds; its dashboard and runtime-env agents poll the
    raylet and take about a minute (Ray's own timeouts), hence the long grace."""
    pytest.importorskip("ray")
    recipe = make_recipe(shard_size=20, workers=2, executor="ray",
                         stages=['"slowstage:Slow": {seconds: 0.05}', "normalize: {}"])
    out = tmp_path / "run"
    seg = out / "stages" / "01-slow+normalize"
    proc = lmforge_cli("run", str(recipe), "--out", str(out), path=PIPELINE_TESTS, wait=False)

    def ready(kids: dict[int, int]) -> bool:
        return any(seg.glob("shard-*.done"))

    survivors = _kill_main_and_watch(proc, ready, timeout=240, grace=90)
    assert not survivors, f"processes outlived the killed run: {survivors}"
