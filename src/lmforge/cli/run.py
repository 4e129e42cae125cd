"""Run every section of a recipe (data, tokenizer, pretraining, samples, fine-tuning, ...), resumably.

Examples:

  lmforge run recipes/demo.yaml --out runs/demo

  lmforge run recipes/demo.yaml --out runs/demo --executor ray --workers 2

  lmforge run someone-elses.yaml --no-custom-stages

  lmforge run recipes/commoncrawl-warc-ray.yaml --out s3://bucket/runs/cc   # credentials from the environment

Re-running the same command on the same --out resumes where it stopped. A custom stage
("package.module:Class") imports and runs that module's code; --no-custom-stages refuses any
recipe that names one, before anything is imported.
"""

from __future__ import annotations

from pathlib import Path

import typer

NO_CUSTOM_STAGES = typer.Option(
    False, "--no-custom-stages",
    help="Refuse custom 'package.module:Class' stages (they run their module's code) before importing any.",
)


def run_command(
    recipe: Path = typer.Argument(..., help="YAML recipe file."),
    out: str | None = typer.Option(
        None, "--out", "-o",
        help="Run directory (default: runs/<recipe name>), or a store URL (s3://bucket/prefix) the run is published to."),
    executor: str | None = typer.Option(None, help="Override the recipe's executor: local or ray."),
    workers: int | None = typer.Option(None, min=1, help="Local worker processes (default: CPU cores)."),
    ray_address: str | None = typer.Option(None, help="Address of an existing Ray cluster."),
    no_custom_stages: bool = NO_CUSTOM_STAGES,
) -> None:
    from lmforge.api import run
    from lmforge.cli.console import rich_progress
    from lmforge.cli.summary import print_run_summary
    from lmforge.errors import Interrupted

    try:
        with rich_progress():
            result = run(recipe, out, executor=executor, workers=workers, ray_address=ray_address,
                         allow_custom_stages=not no_custom_stages)
    except KeyboardInterrupt:
        raise Interrupted() from None
    print_run_summary(result)
