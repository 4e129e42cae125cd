"""The recipe's `input` section: which sources to read, each with its own typed config, and shard size.

The section is validated against whatever sources the registry holds. Several sources are read one
after the other in registry order, so record order, shards and resume stay deterministic whatever
order the recipe lists them in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from lmforge.pipeline.registry import SOURCE, resolve_source, source_names, typed_entries
from lmforge.pipeline.source import SourceContext
from lmforge.records import Record

_SHARD_SIZE = "shard_size"


class InputConfig(BaseModel):
    """The recipe's `input:` section: one entry per source (its own typed config) and `shard_size`.

    Each source's config is an attribute (`config.builtin.max_docs_per_corpus`) once given.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    shard_size: int = Field(500, gt=0, description="records per shard: the unit of parallelism and resume")

    @model_validator(mode="before")
    @classmethod
    def _typed_sources(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        sources = typed_entries({k: v for k, v in data.items() if k != _SHARD_SIZE}, SOURCE, cls.__name__)
        if not sources:
            raise ValueError(f"give at least one source of {', '.join(source_names())}")
        return {**sources, **({_SHARD_SIZE: data[_SHARD_SIZE]} if _SHARD_SIZE in data else {})}

    @model_serializer(mode="wrap")
    def _sources_first(self, handler: Any) -> dict[str, Any]:
        """Dump as the recipe is written: the sources in reading order, then `shard_size`."""
        data = handler(self)
        if isinstance(data, dict) and _SHARD_SIZE in data:
            data[_SHARD_SIZE] = data.pop(_SHARD_SIZE)
        return data

    @property
    def source_names(self) -> list[str]:
        """The configured sources, in the order they are read."""
        return [name for name in source_names() if self.source(name) is not None]

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in source_names():
            return self.source(name)  # None for a source the input does not use, as for an unset field
        return super().__getattr__(name)

    def source(self, name: str) -> BaseModel | None:
        """The config of source `name`, or None when the input does not use it."""
        return (self.__pydantic_extra__ or {}).get(name)


def iter_input(config: InputConfig, base_dir: Path, work_dir: Path) -> Iterator[Record]:
    """Records of the configured sources in turn."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = SourceContext(Path(base_dir), Path(work_dir))
    for name in config.source_names:
        yield from resolve_source(name)(config.source(name)).read(ctx)
