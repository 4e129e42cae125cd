"""The data steps: `input` cuts the sources into shards, `pipeline` runs the stages over them.

Both resume inside too: ingest skips finished input shards and each segment skips finished
output shards, so a killed run redoes at most the shards that were being written.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.pipeline.executors import make_executor
from lmforge.pipeline.input import InputConfig
from lmforge.pipeline.runner import collect_stats, ingest, input_dir, run_stages
from lmforge.pipeline.step import Step, StepContext, Summary


class StageList(StrictModel):
    """The `pipeline:` section: stage entries already validated and resolved by the recipe."""

    stages: list[dict[str, Any]] = Field(default_factory=list)

    def specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, resolved config) per entry, in order."""
        return [next(iter(entry.items())) for entry in self.stages]


class InputStep(Step):
    name = "input"
    Config = InputConfig

    def writes(self) -> list[str]:
        return ["stages/00-input"]

    def run(self, ctx: StepContext) -> Summary:
        ingest(self.config, ctx.base_dir, input_dir(ctx.run_dir), ctx.run_dir / "collect")
        first = collect_stats(ctx.run_dir)["stages"][0]
        return {"output": "stages/00-input", "shards": first["shards"], "records": first["out"],
                "dropped": first["dropped"]}


class PipelineStep(Step):
    name = "pipeline"
    Config = StageList

    def reads(self) -> list[str]:
        return ["stages/00-input"]

    def writes(self) -> list[str]:
        return ["stages"]

    def run(self, ctx: StepContext) -> Summary:
        specs = self.config.specs()
        with make_executor(ctx.executor) as ex:
            output = run_stages(ctx.run_dir, specs, ex)
        totals = collect_stats(ctx.run_dir)["totals"]
        return {"output": output.relative_to(ctx.run_dir).as_posix(), "records": totals["records_out"],
                "stages": len(specs)}
