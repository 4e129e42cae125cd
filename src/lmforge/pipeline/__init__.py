"""Stages, the executors that run them over shards, resume markers and per-run stats."""

from lmforge.pipeline.stage import KEEP, Drop, Filter, GlobalStage, Keep, Mapper, Stage, StageStats, run_chain

__all__ = ["KEEP", "Drop", "Filter", "GlobalStage", "Keep", "Mapper", "Stage", "StageStats", "run_chain"]
