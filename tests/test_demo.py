"""The walking skeleton end to end: built-in data -> clean -> dedup -> tokenizer -> GPT -> samples."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lmforge.demo import run_demo


def test_demo_short_run_learns_and_resumes(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, steps=80, workers=2)
    stats = json.loads((out / "stats.json").read_text())
    # real duplicates and short snippets in the built-in corpora are removed and quarantined
    assert stats["totals"]["dropped"]["exact_duplicate"] > 50
    assert stats["totals"]["records_out"] > 2000
    langs = {json.loads(line)["prompt"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert {"中国", "The "} <= langs
    p = result.steps["pretrain"]
    assert p["last_loss"] < p["first_loss"] - 1.0
    assert p["val_ppl_after"] < p["val_ppl_before"] / 3
    assert all(len(s["completion"]) > 0 for s in result.steps["generate"]["samples"])
    assert (out / "tokenizer" / "tokenizer.json").exists()
    assert (out / "pretrain" / "checkpoint" / "model.safetensors").exists()

    # a re-run finds every step done and redoes nothing
    ckpt = out / "pretrain" / "checkpoint" / "model.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = run_demo(out, steps=80, workers=2)
    assert time.perf_counter() - t0 < 10
    assert ckpt.stat().st_mtime_ns == mtime
    assert again.steps["pretrain"] == p


@pytest.mark.slow
def test_full_demo_command_under_five_minutes(tmp_path):
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "lmforge.cli.main", "demo", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert "held-out perplexity: before training" in res.stdout
    assert elapsed < 300, f"demo took {elapsed:.0f}s"
