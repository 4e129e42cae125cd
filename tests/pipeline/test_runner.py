"""Runs of a multi-shard data recipe: parallel == inline, stats == files, resume, corrupt input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.flow import run_recipe
from lmforge.flow.recipe import load_recipe
from lmforge.pipeline.executors import ExecutorConfig


def run(recipe_path: Path, out: Path, **executor):
    recipe = load_recipe(recipe_path)
    ex = ExecutorConfig(**executor) if executor else None
    return run_recipe(recipe, out, base_dir=recipe_path.parent, executor=ex)


def test_outputs_and_drops(make_recipe, tmp_path, snapshot):
    result = run(make_recipe(shard_size=40), tmp_path / "run")
    out = [r for f, rows in snapshot(result.run_dir).items() if "02-exact_dedup/shard" in f for r in rows]
    texts = [r["text"] for r in out]
    assert len(texts) == len(set(t.lower() for t in texts)), "exact duplicates survived"
    assert not any("<script>" in t or "<p>" in t for t in texts)
    assert all(len(t) >= 10 for t in texts)
    totals = result.stats["totals"]
    assert totals["records_in"] == 360
    assert totals["records_out"] == len(out) == 215
    assert totals["dropped"] == {"empty": 51, "exact_duplicate": 42, "too_short": 52}
    # quarantined duplicates point at a kept document
    kept_ids = {r["id"] for r in out}
    qrows = [r for f, rows in snapshot(result.run_dir).items() if "02-exact_dedup/quarantine" in f for r in rows]
    assert len(qrows) == 42
    assert all(json.loads(r["meta"])["exact_dedup"]["duplicate_of"] in kept_ids for r in qrows)
    saved = (result.run_dir / "config.yaml").read_text()
    assert "min_chars: 10" in saved and "max_chars: 1000000" in saved  # resolved defaults are saved


def test_parallel_equals_inline(make_recipe, tmp_path, snapshot):
    a = run(make_recipe(shard_size=25), tmp_path / "inline", workers=1)
    b = run(make_recipe(shard_size=25), tmp_path / "pool", workers=2)
    assert snapshot(a.run_dir) == snapshot(b.run_dir)
    assert len(snapshot(a.run_dir)) > 20


def test_stats_match_records_written(make_recipe, tmp_path):
    result = run(make_recipe(shard_size=30), tmp_path / "run")
    stats = json.loads((result.run_dir / "stats.json").read_text())
    for d in sorted((result.run_dir / "stages").iterdir()):
        rows = sum(pq.read_metadata(p).num_rows for p in d.glob("shard-*.parquet"))
        quarantined = sum(pq.read_metadata(p).num_rows for p in d.glob("quarantine-*.parquet"))
        entries = [s for s in stats["stages"] if s["dir"] == f"stages/{d.name}"]
        assert entries[-1]["out"] == rows, d.name
        assert sum(s["dropped_total"] for s in entries) == quarantined, d.name
        for s in entries:
            assert s["in"] - s["out"] == s["dropped_total"]
    assert stats["totals"]["records_out"] == rows


def died_in_pipeline(run_dir: Path) -> None:
    """The runner's markers of a run killed inside the pipeline step: that step and the ones after it unfinished."""
    for step in ("pipeline", "report"):
        (run_dir / "steps" / f"{step}.done").unlink()


def test_rerun_skips_finished_shards_and_redoes_unmarked(make_recipe, tmp_path, snapshot):
    recipe = make_recipe(shard_size=40)
    first = run(recipe, tmp_path / "run")
    before = snapshot(first.run_dir)
    seg = first.run_dir / "stages" / "01-strip_html+normalize+length_filter"
    mtimes = {p: p.stat().st_mtime_ns for p in seg.glob("shard-*.parquet")}
    (seg / "shard-00004.done").unlink()  # as if the run died while writing shard 4:
    (seg / "shard-00004.parquet").write_bytes(b"partial garbage")
    died_in_pipeline(first.run_dir)
    second = run(recipe, tmp_path / "run")
    assert snapshot(second.run_dir) == before
    changed = [p.name for p, m in mtimes.items() if p.stat().st_mtime_ns != m]
    assert changed == ["shard-00004.parquet"]
    def counts(stats):
        return [(s["name"], s["in"], s["out"], s["dropped"], s["bytes_out"]) for s in stats["stages"]]

    assert counts(second.stats) == counts(first.stats)
    assert second.stats["totals"]["dropped"] == first.stats["totals"]["dropped"]


def test_rerun_with_another_recipe_is_refused(make_recipe, tmp_path):
    run(make_recipe(shard_size=40), tmp_path / "run")
    with pytest.raises(ConfigError, match="differs in: input"):
        run(make_recipe(shard_size=50, name="other.yaml"), tmp_path / "run")


def test_corrupt_input_file_names_it_and_keeps_finished_shards(make_recipe, corpus_dir, tmp_path, snapshot):
    bad = corpus_dir / "part-1.jsonl"
    good_text = bad.read_bytes()
    (corpus_dir / "part-1.jsonl").unlink()
    (corpus_dir / "part-1.parquet").write_bytes(b"PAR1 garbage, not a parquet file")
    recipe = make_recipe(shard_size=40, stages=["normalize: {}"])
    recipe.write_text(recipe.read_text().replace("corpus/*.jsonl*", "corpus/*"))
    with pytest.raises(InputError, match=r"part-1\.parquet"):
        run(recipe, tmp_path / "run")
    in_dir = tmp_path / "run" / "stages" / "00-input"
    done = sorted(p.name for p in in_dir.glob("*.done"))
    assert done == ["shard-00000.done", "shard-00001.done", "shard-00002.done"]  # part-0's 120 records
    assert sum(pq.read_metadata(p).num_rows for p in in_dir.glob("shard-*.parquet")) == 120
    # fix the input and re-run: it completes, matching a clean run
    (corpus_dir / "part-1.parquet").unlink()
    (corpus_dir / "part-1.jsonl").write_bytes(good_text)
    resumed = run(recipe, tmp_path / "run")
    clean = run(recipe, tmp_path / "clean")
    assert snapshot(resumed.run_dir) == snapshot(clean.run_dir)


def test_corrupt_stage_shard_names_it_and_keeps_finished_shards(make_recipe, tmp_path):
    recipe = make_recipe(shard_size=40)
    run_dir = tmp_path / "run"
    run(recipe, run_dir)
    seg = run_dir / "stages" / "01-strip_html+normalize+length_filter"
    for p in seg.iterdir():
        if "-0000" in p.name and p.name[-len("00005.done"):] >= "00005.done":
            p.unlink()
    kept = {p.name: p.read_bytes() for p in seg.glob("shard-*")}
    victim = run_dir / "stages" / "00-input" / "shard-00006.parquet"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated shard with its marker still present
    died_in_pipeline(run_dir)
    with pytest.raises(InputError, match=r"00-input/shard-00006\.parquet"):
        run(recipe, run_dir, workers=1)
    for name, data in kept.items():
        assert (seg / name).read_bytes() == data
    assert (seg / "shard-00005.done").exists() and not (seg / "shard-00006.done").exists()


def test_empty_and_binary_inputs_never_crash(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "empty.txt").write_bytes(b"")
    (data / "blank.jsonl").write_bytes(b"\n\n")
    (data / "image.bin").write_bytes(bytes(range(256)) * 40)
    (data / "blob.txt").write_bytes(bytes(range(256)) * 40)
    (data / "gbk.txt").write_bytes("这是一个GBK编码的文件，不是UTF-8。".encode("gbk"))
    (data / "ok.txt").write_text("A paragraph that is long enough to keep.\n\n第二段也足够长，可以保留下来。", "utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: {files: ['in/*']}\npipeline:\n  - length_filter: {min_chars: 10}\n")
    result = run(recipe, tmp_path / "run")
    assert result.stats["totals"]["records_out"] == 2  # ok.txt and the GBK file, decoded
    assert result.stats["totals"]["dropped"] == {"binary_file": 1, "empty_file": 1, "unsupported_format": 1}
    assert "recipe" in (result.run_dir / "logs" / "run.log").read_text()
