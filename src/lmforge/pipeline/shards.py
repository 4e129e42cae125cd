"""Per-shard work: the picklable task functions executors run, and the completion markers.

A shard's outputs are written atomically and only then its `.done` marker, which also
holds the shard's stage stats. A shard without a marker is redone from its input on
resume, overwriting whatever partial files it left; a shard with one is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.pipeline.registry import resolve_stage
from lmforge.pipeline.stage import GlobalStage, Stage, StageStats, run_chain
from lmforge.records import Record, read_json, read_parquet, write_json_atomic, write_parquet

log = logging.getLogger(__name__)

StageSpec = tuple[str, dict[str, Any]]


def shard_path(directory: Path, shard_id: str) -> Path:
    return directory / f"shard-{shard_id}.parquet"


def marker_path(directory: Path, shard_id: str, kind: str = "shard") -> Path:
    return directory / f"{kind}-{shard_id}.done"


def quarantine_path(directory: Path, shard_id: str) -> Path:
    return directory / f"quarantine-{shard_id}.parquet"


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def done_shard_ids(directory: Path) -> list[str]:
    """Ids of shards in `directory` whose completion marker exists, sorted."""
    return sorted(p.name[len("shard-") : -len(".done")] for p in directory.glob("shard-*.done"))


def build_stages(specs: list[StageSpec]) -> list[Stage]:
    return [resolve_stage(name)(cfg) for name, cfg in specs]


def write_outputs(
    out_dir: Path, shard_id: str, records: Iterable[Record], quarantined: list[Record], stats: list[StageStats],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a shard, its quarantine and then its marker; returns the marker's content."""
    n_out = write_parquet(shard_path(out_dir, shard_id), records)
    qpath = quarantine_path(out_dir, shard_id)
    if quarantined:
        write_parquet(qpath, quarantined)
    elif qpath.exists():
        qpath.unlink()  # a partial earlier attempt may have left one
    info = {"shard": shard_id, "records": n_out, "quarantined": len(quarantined),
            "stages": [s.to_dict() for s in stats], **(extra or {})}
    write_json_atomic(marker_path(out_dir, shard_id), info)
    return info


@dataclass
class StreamTask:
    """Run a chain of streaming stages over one input shard."""

    input_path: Path
    out_dir: Path
    shard_id: str
    specs: list[StageSpec] = field(default_factory=list)


def run_stream_task(task: StreamTask) -> dict[str, Any]:
    stages = build_stages(task.specs)
    quarantined: list[Record] = []
    out, stats = run_chain(stages, read_parquet(task.input_path), quarantined.append)
    # materialise before writing so the stats are final when the marker is written
    kept = list(out)
    return write_outputs(task.out_dir, task.shard_id, kept, quarantined, stats)


@dataclass
class GlobalTask:
    """One shard's map or apply phase of a global stage."""

    input_path: Path
    out_dir: Path
    shard_id: str
    spec: StageSpec


def run_global_map_task(task: GlobalTask) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from lmforge.records import atomic_path

    stage = build_stages([task.spec])[0]
    assert isinstance(stage, GlobalStage)
    table = stage.map(read_parquet(task.input_path))
    target = task.out_dir / "map" / f"summary-{task.shard_id}.parquet"
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    info = {"shard": task.shard_id, "rows": table.num_rows}
    write_json_atomic(marker_path(task.out_dir / "map", task.shard_id, "summary"), info)
    return info


def run_global_apply_task(task: GlobalTask) -> dict[str, Any]:
    import pyarrow.parquet as pq

    stage = build_stages([task.spec])[0]
    assert isinstance(stage, GlobalStage)
    decision = pq.read_table(task.out_dir / "reduce" / f"decision-{task.shard_id}.parquet")
    quarantined: list[Record] = []
    out, stats = run_chain([stage.applier(decision)], read_parquet(task.input_path), quarantined.append)
    kept = list(out)
    return write_outputs(task.out_dir, task.shard_id, kept, quarantined, stats)
