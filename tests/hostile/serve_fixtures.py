"""Shared pieces of the `serve` hostile tests: a tiny real model with a long context, and a server over it.

Not a test module. Test modules import the fixtures they use (`from serve_fixtures import served`), so
each module gets one server (started once, stopped after its last test); the model is built once per
session and found on disk by the next module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serving import KEY, free_port, make_tiny_run, start_server  # noqa: E402

MODEL = "tiny"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 4096  # long enough that a full-length answer takes seconds, so a cancelled one shows

__all__ = ["AUTH", "CONTEXT", "KEY", "MODEL", "free_port", "serve_model_dir", "served", "start_server"]


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.getbasetemp() / "hostile-serve" / MODEL
    if not (run / "pretrain" / "checkpoint" / "config.json").is_file():
        make_tiny_run(run, block_size=CONTEXT)
    return run


@pytest.fixture(scope="module")
def served(serve_model_dir):
    """One server per test module, with a key and the default request limits."""
    running = start_server(serve_model_dir, api_keys=[KEY])
    yield running
    running.stop()
