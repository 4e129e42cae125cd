"""The one runner: runs a list of Steps in a run directory and owns its contract.

For every run directory (recipes, single commands, the demo's parts, Python calls):

- `config.yaml`  the resolved config, written once; a different config in the same directory is
                 refused, so a resume never mixes two runs
- `steps/NAME.done`  a step's summary, written after the step; a re-run skips marked steps (the
                 steps themselves resume inside: shards, checkpoints)
- `stats.json`   per-stage data stats plus every step's summary, rewritten after each step that ran
- `logs/run.log` this run's log lines, every attempt appended (opened only when a step runs)
- `report.html`  the report step, last; redone only when something ran

A finished run re-run changes no file. Under torchrun, rank 0 runs the steps; the other ranks
wait for each step's done-marker and join only the `every_rank` steps (training).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import load_yaml_file
from lmforge.errors import ConfigError, UserError
from lmforge.pipeline.executors import ExecutorConfig
from lmforge.pipeline.runner import collect_stats
from lmforge.pipeline.step import Step, StepContext, Summary
from lmforge.records import atomic_path, read_json, write_json_atomic
from lmforge.storage import is_url

log = logging.getLogger(__name__)

MARKERS = "steps"
IGNORED_CONFIG_KEYS = {"executor", "name"}  # may differ between attempts without changing the output


@dataclass
class RunResult:
    run_dir: Path
    stats: dict[str, Any]
    steps: dict[str, Summary] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)  # steps that ran in this invocation (the rest were done)
    store: str | None = None  # the run's URL when it lives on an object store (run_dir is then its mirror)

    @property
    def output_dir(self) -> Path | None:
        """The final data stage directory, when the run has data steps."""
        output = self.steps.get("pipeline", {}).get("output") or self.steps.get("input", {}).get("output")
        return self.run_dir / output if output else None

    @property
    def report(self) -> Path | None:
        file = self.steps.get("report", {}).get("file")
        return self.run_dir / file if file else None


def distributed_rank() -> int:
    return int(os.environ.get("RANK", 0))


def marker_path(run_dir: Path, step: str) -> Path:
    return run_dir / MARKERS / f"{step}.done"


def step_done(run_dir: Path, step: str) -> Summary | None:
    """The summary a finished step left, or None (what a caller checks before redoing work)."""
    path = marker_path(run_dir, step)
    return read_json(path) if path.is_file() else None


def run_steps(steps: list[Step], run_dir: str | Path, config: dict[str, Any], *, base_dir: str | Path = ".",
              executor: ExecutorConfig | None = None,
              on_train_step: Callable[[int, float], None] | None = None,
              after_step: Callable[[], Any] | None = None) -> RunResult:
    """Run `steps` in order in `run_dir`, skipping finished ones; `config` is what config.yaml records.

    A URL `run_dir` (s3://...) runs in a local mirror published to the store as it goes (flow.mirror).
    """
    if is_url(str(run_dir)):
        from lmforge.flow.mirror import mirror_dir

        if distributed_rank() == 0:
            return _run_mirrored(steps, str(run_dir), config, base_dir=base_dir, executor=executor,
                                 on_train_step=on_train_step)
        run_dir = mirror_dir(str(run_dir))  # the other ranks of rank 0's node follow it in its mirror
    run_dir = Path(run_dir)
    check_steps(steps)
    ctx = StepContext(run_dir, Path(base_dir), executor or ExecutorConfig(), {}, on_train_step, distributed_rank())
    if ctx.rank > 0:
        return _follow(steps, ctx)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run_dir, config)
    result = RunResult(run_dir, read_json(run_dir / "stats.json") if (run_dir / "stats.json").is_file() else {})
    with _RunLog(run_dir / "logs" / "run.log") as run_log:
        for step in steps:
            summary = None if _must_run(step, result) else step_done(run_dir, step.name)
            if summary is None:
                if run_log.open():
                    log.info("run %s: recipe %s, steps %s", run_dir, config.get("name", "?"),
                             " ".join(s.name for s in steps))
                summary = _run_one(step, ctx)
                write_json_atomic(marker_path(run_dir, step.name), summary)
                result.ran.append(step.name)
                result.steps[step.name] = summary
                result.stats = write_stats(run_dir, result.steps)
                if after_step is not None:
                    after_step()
            ctx.summaries[step.name] = result.steps[step.name] = summary
    return result


def _run_mirrored(steps: list[Step], url: str, config: dict[str, Any], **kwargs: Any) -> RunResult:
    from lmforge.flow.mirror import RunMirror

    with RunMirror(url, interval=float(os.environ.get("LMFORGE_MIRROR_INTERVAL_S", 10))) as mirror:
        log.info("run %s: working in the mirror %s", mirror.shown, mirror.local)
        result = run_steps(steps, mirror.local, config, after_step=mirror.try_publish, **kwargs)
    result.store = mirror.shown
    return result


def check_steps(steps: list[Step]) -> None:
    """Every run-directory path a step reads is written by an earlier step; then each step's own checks."""
    written: dict[str, str] = {}
    for step in steps:
        for path in step.reads():
            if path not in written:
                raise ConfigError(f"{step.name}: needs '{path}', which no earlier step of this run writes "
                                  f"(add the step that makes it, e.g. {_maker_hint(path)})")
        for path in step.writes():
            written[path] = step.name
        step.check(steps)


def _maker_hint(path: str) -> str:
    return {"tokenizer": "'tokenizer:'", "tokens": "'tokenizer:' and 'pretrain:'",
            "pretrain/checkpoint": "'pretrain:'"}.get(path, f"the step that writes {path}")


def _must_run(step: Step, result: RunResult) -> bool:
    """Uncached steps (the report) run again when anything ran before them or their output is gone."""
    if step.cached:
        return False
    return bool(result.ran) or not all((result.run_dir / p).exists() for p in step.writes())


def _run_one(step: Step, ctx: StepContext) -> Summary:
    log.info("%s: step %s", ctx.run_dir, step.name)
    t0 = time.perf_counter()
    summary = dict(step.run(ctx))
    summary.setdefault("seconds", round(time.perf_counter() - t0, 2))
    return summary


def write_stats(run_dir: Path, steps: dict[str, Summary]) -> dict[str, Any]:
    stats = collect_stats(run_dir)
    stats["steps"] = dict(steps)
    write_json_atomic(run_dir / "stats.json", stats)
    return stats


def finished_run(run_dir: Path) -> RunResult:
    """The result of a run that finished earlier, from its stats.json (without running anything)."""
    stats = read_json(run_dir / "stats.json")
    return RunResult(run_dir, stats, dict(stats.get("steps") or {}))


def save_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write config.yaml once; refuse to resume a run directory made by a different config."""
    path = run_dir / "config.yaml"
    if path.exists():
        previous = load_yaml_file(path, "run config") or {}
        changed = sorted(k for k in set(previous) | set(config)
                         if k not in IGNORED_CONFIG_KEYS and previous.get(k) != config.get(k))
        if changed:
            raise ConfigError(
                f"{run_dir} holds a run of a different config (differs in: {', '.join(changed)}); "
                "use another --out directory to start a new run"
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _follow(steps: list[Step], ctx: StepContext) -> RunResult:
    """Ranks > 0: take each step's summary from rank 0's marker; run only the every-rank steps."""
    result = RunResult(ctx.run_dir, {})
    for step in steps:
        if step.every_rank:
            summary = step.run(ctx)
        elif step.cached:
            summary = _wait_for(ctx, step.name)
        else:
            continue
        ctx.summaries[step.name] = result.steps[step.name] = summary
    return result


def _wait_for(ctx: StepContext, step: str) -> Summary:
    deadline = time.monotonic() + float(os.environ.get("LMFORGE_DATA_WAIT_S", 3600))
    path = marker_path(ctx.run_dir, step)
    while not path.is_file():
        if time.monotonic() > deadline:
            raise UserError(f"rank {ctx.rank}: rank 0 did not finish step '{step}' ({path} never appeared)")
        time.sleep(0.5)
    return read_json(path)


class _RunLog:
    """Appends this attempt's lines to logs/run.log, opened only once a step actually runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler: logging.Handler | None = None
        self.previous_level = logging.NOTSET

    def open(self) -> bool:
        """Start appending to the log; True the first time (once per attempt)."""
        if self.handler is not None:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        root = logging.getLogger("lmforge")
        self.previous_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(self.handler)
        return True

    def __enter__(self) -> _RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handler is not None:
            root = logging.getLogger("lmforge")
            root.removeHandler(self.handler)
            root.setLevel(self.previous_level)
            self.handler.close()
