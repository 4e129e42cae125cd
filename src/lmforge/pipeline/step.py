"""The Step contract: one section of a recipe (input, pipeline, tokenizer, ..., report).

A Step is to a run directory what a Stage is to a record stream. It has a typed config, says
which paths of the run directory it reads and writes, and `run(ctx)` returns a JSON-able summary.
It never writes done-markers, `config.yaml`, `stats.json`, logs or the report: the one runner
(`lmforge.flow.runner`) does, for recipes, single commands, the demo and Python calls alike, so
resuming, torchrun ranks and the run-directory contract behave the same everywhere.

Steps live in the package whose work they do (or in `lmforge.flow.steps` when they only wire
library calls together); `STEPS` in `lmforge.flow.steps` names them in recipe order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lmforge.config import StrictModel
from lmforge.errors import ConfigError
from lmforge.pipeline.executors import ExecutorConfig

Summary = dict[str, Any]


@dataclass
class StepContext:
    """What a step may use besides its own config: where it runs and what ran before it."""

    run_dir: Path
    base_dir: Path = Path(".")  # relative input paths in the config resolve against this
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    summaries: dict[str, Summary] = field(default_factory=dict)  # earlier steps of this run, by name
    on_train_step: Callable[[int, float], None] | None = None  # (step, loss) for progress bars and tests
    rank: int = 0  # torchrun rank; only rank 0 writes shared files

    def path(self, relative: str) -> Path:
        return self.run_dir / relative

    def summary(self, step: str) -> Summary:
        """The summary of an earlier step; a recipe missing it is a config error naming both steps."""
        if step not in self.summaries:
            raise ConfigError(f"this step needs a '{step}' step earlier in the same run")
        return self.summaries[step]


class Step(ABC):
    """One resumable unit of a run: typed config in, files in the run directory and a summary out.

    `every_rank` steps (training) run on every torchrun process; the others run on rank 0 while
    the other ranks wait for the runner's done-marker. `cached = False` steps (the report) run
    again whenever an earlier step ran in this invocation, or when what they write is missing.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StrictModel]]
    every_rank: ClassVar[bool] = False
    cached: ClassVar[bool] = True

    def __init__(self, config: StrictModel) -> None:
        self.config = config

    def reads(self) -> list[str]:
        """Run-directory paths this step needs from earlier steps (checked before anything runs)."""
        return []

    def writes(self) -> list[str]:
        """Run-directory paths this step creates."""
        return []

    def check(self, steps: list[Step]) -> None:
        """Refuse a combination of steps that cannot work, before the first one runs."""
        return

    @abstractmethod
    def run(self, ctx: StepContext) -> Summary:
        """Do the work; return a JSON-able summary (it becomes the done-marker and stats.json's steps entry)."""
