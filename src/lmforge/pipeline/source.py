"""Sources: the stage kind that starts a run, turning files, pages, tables or APIs into records.

A source is a class with a typed config and `read(ctx) -> Iterator[Record]`, registered by name in
`pipeline/registry.py` beside the stages, so adding one is one class and one registry entry.

The contract every source follows:

- the same config and source give the same records in the same order, so a resumed ingest can skip
  the shards it already wrote;
- provenance holds what is known: `fetched_at` (ISO 8601 UTC), `content_type`, `encoding`,
  `license`, and `http_status` for web sources;
- a bad item never raises: it is yielded as a record whose `meta["drop_reason"]` is set (and
  `meta["drop_stage"] = "input"`), which ingest writes to quarantine; only a source that cannot be
  read at all raises `InputError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.pipeline.stage import Configured
from lmforge.records import Record


@dataclass(frozen=True)
class SourceContext:
    """Where a source reads from and keeps state.

    `base_dir` resolves relative paths (the recipe's folder); `work_dir` is a folder inside the run
    directory that a source may keep state in (a crawl frontier, WARC files).
    """

    base_dir: Path
    work_dir: Path


class Source(Configured):
    """Base class of sources: set `name` and `Config`, implement `read`."""

    def read(self, ctx: SourceContext) -> Iterator[Record]:  # pragma: no cover - abstract
        raise NotImplementedError
