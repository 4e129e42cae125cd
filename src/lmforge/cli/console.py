"""Console output for the CLI: rich progress bars, logging setup, one-line errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console, ConsoleDimensions
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

# Where output goes to a pipe, a file or a test's capture there is no window to fit.
UNWRAPPED_WIDTH = 200


class CliConsole(Console):
    """rich's Console, except off a terminal: lines are never wrapped, and tables get a fixed width.

    rich otherwise wraps at COLUMNS, or at the width of whichever standard stream is a terminal, even
    when stdout is a file: a line a script greps for ("leaking pairs across splits: 0") then breaks at
    a place that depends on the window the command happened to be started from. On a terminal nothing
    changes; a width set in code (`console.width = 160`) still wins. "Terminal" means the stream is a
    tty, whatever FORCE_COLOR says: forcing colours gives a pipe no window.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if kwargs.get("width") is None:
            self._width = None  # rich read COLUMNS into it; on a terminal `size` still reads COLUMNS

    def _to_tty(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # closed (the end of a pytest run)
            return False

    @property
    def soft_wrap(self) -> bool:
        return self._soft_wrap or not self._to_tty()

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self._to_tty():
            return ConsoleDimensions(UNWRAPPED_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = CliConsole(stderr=True)
out = CliConsole()


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
    """rich's columns on a terminal; elsewhere one plain line per record, which rich would wrap and pad."""
    if console._to_tty():
        handler: logging.Handler = RichHandler(console=console, show_path=debug, rich_tracebacks=debug)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(console.file)
        where = " (%(filename)s:%(lineno)d)" if debug else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-8s %(message)s{where}", datefmt="[%X]"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)
    for noisy in ("urllib3", "filelock", "ray", "botocore", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def model_path(text: str) -> Path:
    """A MODEL argument: a folder, or a URL (s3://bucket/runs/x) staged into the user cache first."""
    from lmforge.storage import local_path

    return local_path(text, "MODEL")


def tokenizer_path(text: str) -> Path:
    """A --tokenizer option: a folder or tokenizer.json, or a URL staged as `model_path` does."""
    from lmforge.storage import local_path

    return local_path(text, "--tokenizer")
