"""Run a stage list over a corpus inside a run directory, resumably.

Layout (see ARCHITECTURE.md): `stages/00-input` holds the input cut into shards, then one
directory per segment: a run of streaming stages fused into one pass, or one global stage
(map -> reduce -> apply). Every shard is marked done after its files are written, so a
re-run skips finished shards and redoes only unfinished ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge import progress
from lmforge.errors import InputError
from lmforge.pipeline.executors import Executor
from lmforge.pipeline.input import InputConfig, iter_input
from lmforge.pipeline.registry import resolve_stage
from lmforge.pipeline.shards import (
    GlobalTask,
    StageSpec,
    StreamTask,
    done_shard_ids,
    marker_path,
    read_marker,
    run_global_apply_task,
    run_global_map_task,
    run_stream_task,
    shard_path,
    write_outputs,
)
from lmforge.pipeline.stage import StageStats, Summaries
from lmforge.records import Record, read_parquet, text_bytes, write_json_atomic

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- ingest


def ingest(config: InputConfig, base_dir: Path, out_dir: Path, work_dir: Path) -> None:
    """Cut the input into shards of `shard_size` records (bad records to quarantine)."""
    complete = out_dir / "ingest.done"
    if complete.exists():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    with progress.task("input: reading", total=None) as bar:
        chunk: list[Record] = []
        shard = 0
        t0 = time.perf_counter()
        for record in iter_input(config, base_dir, work_dir):
            chunk.append(record)
            if len(chunk) == config.shard_size:
                _flush_input(out_dir, shard, chunk, time.perf_counter() - t0)
                bar.advance(len(chunk))
                chunk, shard, t0 = [], shard + 1, time.perf_counter()
        if chunk or shard == 0:
            _flush_input(out_dir, shard, chunk, time.perf_counter() - t0)
            bar.advance(len(chunk))
    write_json_atomic(complete, {"shards": len(done_shard_ids(out_dir))})


def _flush_input(out_dir: Path, shard: int, chunk: list[Record], seconds: float) -> None:
    sid = f"{shard:05d}"
    if marker_path(out_dir, sid).exists():
        return
    good = [r for r in chunk if r.drop_reason is None]
    bad = [r for r in chunk if r.drop_reason is not None]
    st = StageStats("input", records_in=len(chunk), records_out=len(good), seconds=seconds)
    st.bytes_in = sum(text_bytes(r) for r in chunk)
    st.bytes_out = sum(text_bytes(r) for r in good)
    for r in bad:
        st.dropped[r.drop_reason] += 1
    write_outputs(out_dir, sid, good, bad, [st])


# --------------------------------------------------------------------------- segments


@dataclass
class Segment:
    specs: list[StageSpec]
    is_global: bool

    @property
    def name(self) -> str:
        return "+".join(resolve_stage(name).name or name.rsplit(":", 1)[-1] for name, _ in self.specs)


def plan_segments(specs: list[StageSpec]) -> list[Segment]:
    """Fuse consecutive streaming stages; each global stage stands alone."""
    segments: list[Segment] = []
    for spec in specs:
        is_global = resolve_stage(spec[0]).is_global
        if is_global or not segments or segments[-1].is_global:
            segments.append(Segment([spec], is_global))
        else:
            segments[-1].specs.append(spec)
    return segments


def _run_stream(executor: Executor, seg: Segment, in_dir: Path, out_dir: Path, shards: list[str]) -> None:
    todo = [s for s in shards if not marker_path(out_dir, s).exists()]
    tasks = [StreamTask(shard_path(in_dir, s), out_dir, s, seg.specs) for s in todo]
    if tasks:
        executor.map(run_stream_task, tasks, description=f"{out_dir.name}")


def _run_global(executor: Executor, seg: Segment, in_dir: Path, out_dir: Path, shards: list[str]) -> None:
    import pyarrow.parquet as pq

    from lmforge.pipeline.shards import build_stages
    from lmforge.records import atomic_path

    spec = seg.specs[0]
    map_dir, reduce_dir = out_dir / "map", out_dir / "reduce"
    todo = [s for s in shards if not marker_path(map_dir, s, "summary").exists()]
    if todo:
        tasks = [GlobalTask(shard_path(in_dir, s), out_dir, s, spec) for s in todo]
        executor.map(run_global_map_task, tasks, description=f"{out_dir.name}: map")
    if not (reduce_dir / "reduce.done").exists():
        stage = build_stages([spec])[0]
        summaries = Summaries([(s, map_dir / f"summary-{s}.parquet") for s in shards])
        with progress.task(f"{out_dir.name}: reduce", total=1) as bar:
            decisions = stage.reduce(summaries)
            for s in shards:
                with atomic_path(reduce_dir / f"decision-{s}.parquet") as tmp:
                    pq.write_table(decisions[s], tmp)
            bar.advance()
        write_json_atomic(reduce_dir / "reduce.done", {"shards": len(shards)})
    todo = [s for s in shards if not marker_path(out_dir, s).exists()]
    if todo:
        tasks = [GlobalTask(shard_path(in_dir, s), out_dir, s, spec) for s in todo]
        executor.map(run_global_apply_task, tasks, description=f"{out_dir.name}: apply")


def remove_stale_temp_files(directory: Path) -> None:
    """Temp files of writes that a killed run never finished; their shards are unmarked and will be redone."""
    for tmp in directory.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _check_inputs(in_dir: Path, shards: list[str]) -> None:
    for s in shards:
        if not shard_path(in_dir, s).exists():
            raise InputError(f"shard {shard_path(in_dir, s)} is marked done but missing; delete its .done marker")


def run_pipeline(
    run_dir: Path, input_config: InputConfig, specs: list[StageSpec], executor: Executor, base_dir: Path
) -> Path:
    """Run ingest and every segment; returns the directory holding the final shards."""
    ingest(input_config, base_dir, input_dir(run_dir), run_dir / "collect")
    return run_stages(run_dir, specs, executor)


def input_dir(run_dir: Path) -> Path:
    return run_dir / "stages" / "00-input"


def run_stages(run_dir: Path, specs: list[StageSpec], executor: Executor) -> Path:
    """Run every segment over the ingested input; returns the directory holding the final shards."""
    stages_dir = run_dir / "stages"
    in_dir = input_dir(run_dir)
    shards = done_shard_ids(in_dir)
    for i, seg in enumerate(plan_segments(specs), start=1):
        out_dir = stages_dir / f"{i:02d}-{seg.name}"
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out_dir)
        _check_inputs(in_dir, shards)
        (_run_global if seg.is_global else _run_stream)(executor, seg, in_dir, out_dir, shards)
        in_dir = out_dir
    return in_dir


# --------------------------------------------------------------------------- stats


def collect_stats(run_dir: Path) -> dict[str, Any]:
    """Merge the per-shard stats kept in the completion markers of every stage directory."""
    stages: list[dict[str, Any]] = []
    stage_dirs = sorted(p for p in (run_dir / "stages").glob("[0-9][0-9]-*") if p.is_dir())
    records_written = 0
    for d in stage_dirs:
        merged: list[StageStats] = []
        shards = done_shard_ids(d)
        written = quarantined = 0
        for sid in shards:
            info = read_marker(marker_path(d, sid)) or {}
            written += info.get("records", 0)
            quarantined += info.get("quarantined", 0)
            for j, sd in enumerate(info.get("stages", [])):
                st = StageStats.from_dict(sd)
                if j < len(merged):
                    merged[j].merge(st)
                else:
                    merged.append(st)
        for st in merged:
            stages.append({"dir": f"stages/{d.name}", "shards": len(shards), **st.to_dict()})
        records_written = written
    dropped: dict[str, int] = {}
    for st in stages:
        for reason, n in st["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    totals = {
        "records_in": stages[0]["in"] if stages else 0,
        "records_out": records_written,
        "dropped": dict(sorted(dropped.items())),
        "seconds": round(sum(st["seconds"] for st in stages), 4),
    }
    return {"stages": stages, "totals": totals, "output": f"stages/{stage_dirs[-1].name}" if stage_dirs else None}


def iter_output(stage_dir: Path) -> Iterator[Record]:
    """Records of a finished stage directory, in shard order."""
    for sid in done_shard_ids(stage_dir):
        yield from read_parquet(shard_path(stage_dir, sid))
