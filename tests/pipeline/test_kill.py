"""SIGKILL a multi-shard run mid-way, re-run it, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

HERE = Path(__file__).parent
STAGES = ['"slowstage:Slow": {seconds: 0.015}', "normalize: {}", "length_filter: {min_chars: 10}", "exact_dedup: {}"]


def test_sigkill_then_rerun_equals_uninterrupted(make_recipe, tmp_path, snapshot, lmforge_cli):
    def lmforge(*args: str, wait: bool = True):
        return lmforge_cli(*args, path=HERE, wait=wait)

    recipe = make_recipe(shard_size=20, workers=2, stages=STAGES)
    killed = tmp_path / "killed"
    seg = killed / "stages" / "01-slow+normalize+length_filter"
    proc = lmforge("run", str(recipe), "--out", str(killed), wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(seg.glob("*.done"))) < 4:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(seg.glob("*.done")))
    assert 4 <= done_at_kill < 18, "the kill should land mid-run"
    assert not (killed / "stages" / "02-exact_dedup").exists() or not list(
        (killed / "stages" / "02-exact_dedup").glob("shard-*.done"))

    resumed = lmforge("run", str(recipe), "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean"
    straight = lmforge("run", str(recipe), "--out", str(clean))
    assert straight.returncode == 0, straight.stderr

    a, b = snapshot(killed), snapshot(clean)
    assert a.keys() == b.keys() and a == b
    assert not [p for p in killed.rglob(".*.tmp")], "temporary files left behind"
    final = [r for k, v in a.items() if "02-exact_dedup/shard-" in k for r in v]
    assert len(final) == len({r["id"] for r in final}) == 215
    sa = json.loads((killed / "stats.json").read_text())
    sb = json.loads((clean / "stats.json").read_text())
    assert [(s["name"], s["in"], s["out"], s["dropped"]) for s in sa["stages"]] == [
        (s["name"], s["in"], s["out"], s["dropped"]) for s in sb["stages"]]
