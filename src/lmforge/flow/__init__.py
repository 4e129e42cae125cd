"""Runs: a recipe's steps, or one command's, under the one runner (`flow.runner`).

`run_recipe` builds the Steps of a recipe's sections (`flow.recipe.build_steps`) and hands them to
`run_steps`, which owns the run directory: done-markers, config.yaml, stats.json, logs and the
report. `lmforge.api` holds the Python calls that mirror each command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.flow.recipe import Recipe, build_steps, parse_recipe
from lmforge.flow.runner import RunResult, run_steps, step_done
from lmforge.pipeline.executors import ExecutorConfig

__all__ = ["RunResult", "collect", "run_recipe", "run_steps", "step_done"]


def run_recipe(recipe: Recipe, run_dir: str | Path, base_dir: str | Path = ".",
               executor: ExecutorConfig | None = None,
               on_train_step: Callable[[int, float], None] | None = None) -> RunResult:
    """Run every step of `recipe` in `run_dir`, resuming a run the same recipe started there."""
    return run_steps(build_steps(recipe), run_dir, recipe.resolved(), base_dir=base_dir,
                     executor=executor or recipe.executor, on_train_step=on_train_step)


def collect(source: str, config: dict[str, Any], run_dir: str | Path, shard_size: int = 500,
            base_dir: str | Path = ".") -> RunResult:
    """Read one source into `run_dir/stages/00-input` (what `lmforge collect` does)."""
    recipe = parse_recipe({"name": f"collect-{source}", "input": {source: config, "shard_size": shard_size}},
                          where=f"collect {source}")
    return run_recipe(recipe, run_dir, base_dir=base_dir)
