"""Stages and sources, the executors that run them over shards, resume markers and per-run stats."""

from lmforge.pipeline.source import Source, SourceContext
from lmforge.pipeline.stage import (
    KEEP,
    Drop,
    Filter,
    GlobalStage,
    Keep,
    Mapper,
    Stage,
    StageStats,
    Transform,
    run_chain,
)

__all__ = ["KEEP", "Drop", "Filter", "GlobalStage", "Keep", "Mapper", "Source", "SourceContext", "Stage",
           "StageStats", "Transform", "run_chain"]
