"""Limits for the hostile-input tests: run an attack in a child process under hard limits and measure it.

A regression must fail the test, not take the machine down: the child gets an address-space limit
(RLIMIT_AS) and a wall-clock deadline, and its peak resident memory comes from the kernel's own
accounting of that child (`os.wait4`), not from sampling.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float
    timed_out: bool


def run_measured(args: list[str], *, timeout: float = 60.0, address_space_mb: int | None = 8000,
                 cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 stdin: str | None = None) -> Measured:
    """Run `args` (a full command line) in its own session; kill the whole group at `timeout`."""

    def limits() -> None:
        if address_space_mb is not None:
            cap = address_space_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("COLUMNS", None)
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limits,
                            start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    out_chunks: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:
        out_chunks[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    if stdin is not None:
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    timer.cancel()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        stdout=out_chunks.get("out", b"").decode("utf-8", "replace"),
        stderr=out_chunks.get("err", b"").decode("utf-8", "replace"),
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        seconds=seconds,
        timed_out=timed_out.is_set(),
    )


def run_python(code: str, **kw) -> Measured:
    """`python -c code` under the limits of `run_measured`."""
    return run_measured([sys.executable, "-c", code], **kw)


def run_cli(*cli_args: str, **kw) -> Measured:
    """`python -m lmforge.cli.main ...` under the limits of `run_measured`."""
    return run_measured([sys.executable, "-m", "lmforge.cli.main", *cli_args], **kw)
