"""The end-to-end demo: crawl + built-in text -> clean/dedup -> GPT and BERT -> augment, fine-tune -> report.

The reduced demo (`--quick`) runs every real step on small data; it is killed once mid-run and
started again, and must finish without redoing what was done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _demo(out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "lmforge.cli.main", "demo", "--out", str(out), "--quick", "--workers", "2", *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_quick_demo_killed_mid_run_resumes_without_redoing_steps(tmp_path):
    out = tmp_path / "demo"
    proc = _demo(out, wait=False)
    gpt = out / "pretrain" / "checkpoint" / "model.safetensors"
    gpt_done = out / "steps" / "pretrain.done"  # the runner's marker: the checkpoint alone may still be rewritten
    deadline = time.monotonic() + 600
    while not gpt_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gpt_done.exists(), "the demo never finished its GPT"
    os.killpg(proc.pid, signal.SIGKILL)  # somewhere in the samples, BERT, augmentation or fine-tuning
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in [gpt, *out.glob("**/steps/*.done"),
                                                     out / "tokenizer" / "tokenizer.json"]}

    res = _demo(out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == m for p, m in done_before.items())  # nothing done was redone
    assert "lmforge demo" in res.stdout and "pretrained vs" in res.stdout

    summary = json.loads((out / "demo" / "summary.json").read_text())
    crawl = summary["crawl"]
    assert crawl["pages"] >= 6 and crawl["robots_honoured"] and crawl["quarantined"]["robots_disallowed"] == 1
    stats = json.loads((out / "stats.json").read_text())
    sources = {s["name"] for s in stats["stages"]}
    assert "minhash_dedup" in sources and stats["totals"]["records_out"] > 500
    assert summary["pretrain"]["val_ppl_after"] < summary["pretrain"]["val_ppl_before"] / 2
    assert summary["bert"]["val_after"]["mlm"] < summary["bert"]["val_before"]["mlm"]
    assert summary["augment"]["copies"] > summary["augment"]["train"] > 0
    for name, metric in (("sentiment", "accuracy"), ("ner", "f1")):
        assert {"pretrained", "scratch"} <= set(summary["finetunes"][name])
        assert 0.0 <= summary["finetunes"][name]["pretrained"]["test"][metric] <= 1.0
    # augmented copies stay in the training split: validation and test are the originals only
    rows = [json.loads(line) for line in (out / "augment" / "augmented.jsonl").read_text().splitlines()]
    assert all(r["split"] == "train" for r in rows if (r.get("meta") or {}).get("augmented_from"))

    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") >= 6 and "http://" not in html.replace("http://www.w3.org", "")
    for section in ("Data funnel", "Pretrained vs from scratch: ft-sentiment", "Pretrained vs from scratch: ft-ner",
                    "Generated samples"):
        assert section in html

    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = _demo(out)  # everything done: a re-run only reprints the summary and changes no file
    assert again.returncode == 0 and "pretrained vs" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == finished


@pytest.mark.slow
def test_full_demo_command_finishes_within_ten_minutes(tmp_path):
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "lmforge.cli.main", "demo", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert "held-out perplexity: before training" in res.stdout and (tmp_path / "d" / "report.html").exists()
    assert elapsed < 600, f"demo took {elapsed:.0f}s"
