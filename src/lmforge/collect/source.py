"""The `input` step of a recipe: one or more sources, read in a fixed order and cut into shards.

Several sources (the demo's built-in corpora plus a crawl) are read one after the other in the
order of SOURCE_NAMES, so record order, shards and resume stay deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lmforge.collect.api import ApiConfig, iter_api
from lmforge.collect.builtin import BuiltinConfig, builtin_records
from lmforge.collect.crawl import CrawlConfig, iter_crawl
from lmforge.collect.dataset import DatasetConfig, iter_dataset
from lmforge.collect.files import FilesConfig, iter_files
from lmforge.collect.sql import SqlConfig, iter_sql
from lmforge.collect.warc import WarcConfig, iter_warc
from lmforge.config import StrictModel
from lmforge.records import Record

SOURCE_NAMES = ("builtin", "files", "warc", "crawl", "sql", "api", "dataset")


class InputConfig(StrictModel):
    builtin: BuiltinConfig | None = None
    files: FilesConfig | None = None
    warc: WarcConfig | None = None
    crawl: CrawlConfig | None = None
    sql: SqlConfig | None = None
    api: ApiConfig | None = None
    dataset: DatasetConfig | None = None
    shard_size: int = Field(500, gt=0, description="records per shard: the unit of parallelism and resume")

    @model_validator(mode="after")
    def _some_source(self) -> InputConfig:
        if not self.source_names:
            raise ValueError(f"give at least one source of {', '.join(SOURCE_NAMES)}")
        return self

    @property
    def source_names(self) -> list[str]:
        return [name for name in SOURCE_NAMES if getattr(self, name) is not None]


def _builtin(config: BuiltinConfig, base_dir: Path, work_dir: Path) -> Iterator[Record]:
    return builtin_records(config)


READERS: dict[str, Callable[[Any, Path, Path], Iterator[Record]]] = {
    "builtin": _builtin,
    "files": iter_files,
    "warc": iter_warc,
    "crawl": iter_crawl,
    "sql": iter_sql,
    "api": iter_api,
    "dataset": iter_dataset,
}


def iter_input(config: InputConfig, base_dir: Path, work_dir: Path) -> Iterator[Record]:
    """Records of the configured sources in turn; `work_dir` is where a source may keep state (crawl frontier)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for name in config.source_names:
        yield from READERS[name](getattr(config, name), base_dir, work_dir)
