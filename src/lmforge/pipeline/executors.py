"""Executors: run independent shard tasks on a local process pool or on Ray.

Both take the same picklable task function and arguments and return results in task
order, so a recipe's output does not depend on where it ran.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from lmforge import progress
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, require

log = logging.getLogger(__name__)


class ExecutorConfig(StrictModel):
    kind: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1, description="local: processes (default: CPU cores); 1 runs inline")
    address: str | None = Field(None, description="ray: cluster address; default starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="ray: CPUs for a local Ray (default: all)")


class Executor:
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], description: str = "") -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # worker processes or the local Ray go with the block, also when it raises


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker as soon as the process that started it is gone.

    A SIGKILLed `lmforge run` gets no chance to shut its pool down, and its workers would carry on
    (about 150 MB each) for as long as their current shard takes, then idle. On Linux the kernel
    sends SIGKILL when the parent goes (PR_SET_PDEATHSIG; it fires when the parent *thread* that
    forked this process ends: `LocalExecutor.map` starts and shuts its pool in the one calling
    thread, so that thread outlives every worker it started). A daemon thread watching the parent
    pid covers other systems and the moment before prctl took effect. The resource tracker, the
    pool's other helper process, ends by itself once no worker holds its pipe open.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the watchdog still runs
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="lmforge-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int, every: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every)
    os._exit(1)  # orphaned: the shard this worker was on is redone on resume (no marker was written)


class LocalExecutor(Executor):
    """A process pool (spawned workers, safe alongside torch threads); one worker runs inline.

    Workers die with the process that started them (`die_with_parent`), even when it is SIGKILLed.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()

    def map(self, fn, tasks, description=""):
        results: list[Any] = [None] * len(tasks)
        with progress.task(description or "shards", total=len(tasks)) as bar:
            if self.workers == 1 or len(tasks) <= 1:
                for i, t in enumerate(tasks):
                    results[i] = fn(t)
                    bar.advance()
                return results
            import concurrent.futures as cf
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(min(self.workers, len(tasks)), mp_context=ctx,
                                        initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
                try:
                    for fut in cf.as_completed(futures):
                        results[futures[fut]] = fut.result()
                        bar.advance()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        return results


class RayExecutor(Executor):
    """Ray tasks, on a local Ray started here by default or on an existing cluster by address."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        ray = require("ray", "ray")
        self._ray = ray
        self._started_here = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                kwargs["address"] = address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            ray.init(**kwargs)
            self._started_here = True

    def map(self, fn, tasks, description=""):
        ray = self._ray
        remote = ray.remote(fn)
        refs = [remote.remote(t) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(tasks)
        pending = list(refs)
        with progress.task(description or "shards", total=len(tasks)) as bar:
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    for ref in done:
                        results[index[ref]] = ray.get(ref)
                        bar.advance()
            except ray.exceptions.RayTaskError as exc:
                for ref in pending:
                    ray.cancel(ref)
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, BaseException) else exc) from None
        return results

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


def make_executor(config: ExecutorConfig) -> Executor:
    if config.kind == "local":
        return LocalExecutor(config.workers)
    if config.kind == "ray":
        return RayExecutor(config.address, config.num_cpus)
    raise ConfigError(f"executor.kind: unknown executor {config.kind!r}; allowed: local, ray")  # pragma: no cover
