"""The Ray executor gives the same output as the local one (on a local 2-CPU Ray)."""

from __future__ import annotations

import pytest

from lmforge.errors import InputError
from lmforge.flow import run_recipe
from lmforge.flow.recipe import load_recipe
from lmforge.pipeline.executors import ExecutorConfig

ray = pytest.importorskip("ray")


def test_ray_and_local_outputs_are_identical(make_recipe, tmp_path, local_ray, snapshot):
    recipe_path = make_recipe(shard_size=30)
    recipe = load_recipe(recipe_path)
    local = run_recipe(recipe, tmp_path / "local", recipe_path.parent, ExecutorConfig(kind="local", workers=2))
    on_ray = run_recipe(recipe, tmp_path / "ray", recipe_path.parent, ExecutorConfig(kind="ray"))
    a, b = snapshot(local.run_dir), snapshot(on_ray.run_dir)
    assert len(a) > 20 and a == b
    strip = [(s["name"], s["in"], s["out"], s["dropped"]) for s in local.stats["stages"]]
    assert strip == [(s["name"], s["in"], s["out"], s["dropped"]) for s in on_ray.stats["stages"]]


def test_ray_task_errors_surface_as_the_original_error(make_recipe, tmp_path, local_ray):
    recipe_path = make_recipe(shard_size=60)
    recipe = load_recipe(recipe_path)
    run_dir = tmp_path / "run"
    run_recipe(recipe, run_dir, recipe_path.parent, ExecutorConfig(kind="local", workers=1))
    seg = run_dir / "stages" / "01-strip_html+normalize+length_filter"
    for p in seg.glob("shard-00002*"):
        p.unlink()
    victim = run_dir / "stages" / "00-input" / "shard-00002.parquet"
    victim.write_bytes(b"not parquet")
    for step in ("pipeline", "report"):  # as if the run had died in the pipeline step
        (run_dir / "steps" / f"{step}.done").unlink()
    with pytest.raises(InputError, match="shard-00002.parquet"):
        run_recipe(recipe, run_dir, recipe_path.parent, ExecutorConfig(kind="ray"))
