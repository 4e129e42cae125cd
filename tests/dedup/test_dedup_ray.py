"""Exact and near-duplicate removal give identical results on Ray (a local 2-CPU Ray) and on the local pool:
the map phases (hashes, MinHash signatures, band hashes) run in Ray tasks, the reductions in the driver."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from lmforge.flow import run_recipe
from lmforge.flow.recipe import load_recipe
from lmforge.pipeline.executors import ExecutorConfig

ray = pytest.importorskip("ray")

STAGES = ["strip_html: {}", "normalize: {}", "length_filter: {min_chars: 10}", "exact_dedup: {}",
          '"lmforge.dedup.minhash:MinHashDedup": {}']


def test_exact_and_near_dedup_identical_on_ray_and_local(make_recipe, tmp_path, local_ray, snapshot):
    recipe_path = make_recipe(shard_size=30, stages=STAGES)
    recipe = load_recipe(recipe_path)
    local = run_recipe(recipe, tmp_path / "local", recipe_path.parent, ExecutorConfig(kind="local", workers=2))
    on_ray = run_recipe(recipe, tmp_path / "ray", recipe_path.parent, ExecutorConfig(kind="ray"))
    a, b = snapshot(local.run_dir), snapshot(on_ray.run_dir)
    assert len(a) > 30 and a == b
    # the map summaries (signatures, band hashes) and reduce decisions match too, not just the outputs
    for stage_dir in ("02-exact_dedup", "03-minhash_dedup"):
        for kind in ("map", "reduce"):
            files = sorted((local.run_dir / "stages" / stage_dir / kind).glob("*.parquet"))
            assert files, (stage_dir, kind)
            for f in files:
                other = on_ray.run_dir / "stages" / stage_dir / kind / f.name
                assert pq.read_table(f).equals(pq.read_table(other)), f.name
    strip = [(s["name"], s["in"], s["out"], s["dropped"], s.get("counters")) for s in local.stats["stages"]]
    assert strip == [(s["name"], s["in"], s["out"], s["dropped"], s.get("counters")) for s in on_ray.stats["stages"]]
    dropped = local.stats["totals"]["dropped"]
    assert dropped["exact_duplicate"] == 42 and dropped["near_duplicate"] > 50
