"""Limits for the hostile-input tests: run an attack in a child process under hard limits and measure it.

A regression must fail the test, not take the machine down: the child gets an address-space limit
(RLIMIT_AS) and a wall-clock deadline.

Peak memory is the child's own high-water mark (VmHWM in /proc/PID/status), read every few
milliseconds while it runs. The kernel's `ru_maxrss` for a child cannot be used: a forked child
starts with the parent's pages resident and exec carries that high-water mark over, so a child
of a 800 MB pytest process reports 800 MB however little it uses. Popen returns only once the
child has exec'd, so every reading is of the new program. A spike shorter than the polling
interval could be missed; allocations that matter here take far longer than that.
"""

from __future__ import annotations

import contextlib
import json
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
    peak_kb = [0]
    done = threading.Event()

    def watch() -> None:
        status = f"/proc/{proc.pid}/status"
        while not done.is_set():
            try:
                with open(status, encoding="ascii") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
                            break
            except (OSError, ValueError):
                pass
            done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out_chunks: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:
        out_chunks[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    if stdin is not None:
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
    # Reap only after the watcher's last reading: a zombie's status has no VmHWM line any more.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    done.set()
    watcher.join()
    _, status = os.waitpid(proc.pid, 0)
    seconds = time.monotonic() - started
    timer.cancel()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        stdout=out_chunks.get("out", b"").decode("utf-8", "replace"),
        stderr=out_chunks.get("err", b"").decode("utf-8", "replace"),
        peak_rss_mb=peak_kb[0] / 1024,
        seconds=seconds,
        timed_out=timed_out.is_set(),
    )


def run_python(code: str, **kw) -> Measured:
    """`python -c code` under the limits of `run_measured`."""
    return run_measured([sys.executable, "-c", code], **kw)


def run_cli(*cli_args: str, **kw) -> Measured:
    """`python -m lmforge.cli.main ...` under the limits of `run_measured`."""
    return run_measured([sys.executable, "-m", "lmforge.cli.main", *cli_args], **kw)


def run_json(code: str, *, timeout: float = 90.0, address_space_mb: int | None = 6000) -> tuple[object, float, float]:
    """Run `code`, which prints one JSON line last, under the limits: (that JSON, peak RSS MB, seconds).

    The child must finish on its own and exit 0; anything else fails the calling test with the child's stderr.
    """
    m = run_python(code, timeout=timeout, address_space_mb=address_space_mb)
    print(f"peak {m.peak_rss_mb:.0f} MB, {m.seconds:.1f} s, rc {m.returncode}")
    if m.timed_out:
        raise AssertionError(f"the child was still running after {timeout} s")
    if m.returncode != 0:
        raise AssertionError(f"the child exited {m.returncode}: {m.stderr[-2000:]}")
    return json.loads(m.stdout.strip().splitlines()[-1]), m.peak_rss_mb, m.seconds
