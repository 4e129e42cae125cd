"""The built-in demo: the packaged demo recipe, run on built-in data with no network."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lmforge.flow import RunResult, run_recipe
from lmforge.pipeline.executors import ExecutorConfig
from lmforge.recipe import load_recipe


def demo_recipe_path() -> Path:
    return Path(str(resources.files("lmforge") / "recipes" / "demo.yaml"))


def run_demo(out: str | Path = "lmforge-demo", steps: int | None = None, workers: int | None = None) -> RunResult:
    recipe = load_recipe(demo_recipe_path())
    if steps is not None and recipe.pretrain is not None:
        recipe.pretrain.steps = steps
        recipe.pretrain.eval_every = min(recipe.pretrain.eval_every, steps)
        recipe.pretrain.warmup_steps = min(recipe.pretrain.warmup_steps, max(1, steps // 10))
    executor = ExecutorConfig(kind="local", workers=workers)
    return run_recipe(recipe, out, base_dir=demo_recipe_path().parent, executor=executor)
