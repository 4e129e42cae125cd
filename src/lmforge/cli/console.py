"""Console output for the CLI: rich progress bars, logging setup, one-line errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lmforge import progress

console = Console(stderr=True)
out = Console()


class _RichHandle(progress.TaskHandle):
    def __init__(self, bar: Progress, task_id) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._id, n)

    def update(self, description: str) -> None:
        self._bar.update(self._id, description=description)


class RichReporter(progress.Reporter):
    """One live display for the whole command; each library task adds a bar that stays as a record."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )

    @contextlib.contextmanager
    def task(self, description: str, total: float | None) -> Iterator[progress.TaskHandle]:
        task_id = self.bar.add_task(description, total=total)
        yield _RichHandle(self.bar, task_id)
        task = self.bar.tasks[task_id]
        self.bar.update(task_id, total=task.completed if total is None else total,
                        completed=task.completed if total is None else total)


@contextlib.contextmanager
def rich_progress() -> Iterator[None]:
    reporter = RichReporter()
    with reporter.bar, progress.use(reporter):
        yield


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=debug, rich_tracebacks=debug)],
        force=True,
    )
    for noisy in ("urllib3", "filelock", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
