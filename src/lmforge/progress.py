"""A tiny progress hook so library code can report progress without printing.

The library calls `progress.task(description, total)`; by default nothing is shown. The
CLI installs a rich-based reporter with `progress.use(...)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TaskHandle:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, description: str) -> None:
        pass


class Reporter:
    """No-op reporter; subclasses draw bars."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None) -> Iterator[TaskHandle]:
        yield TaskHandle()


_current: Reporter = Reporter()


def task(description: str, total: float | None = None):
    return _current.task(description, total)


@contextlib.contextmanager
def use(reporter: Reporter) -> Iterator[Reporter]:
    global _current
    previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = previous
