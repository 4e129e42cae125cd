"""Fixtures: a tiny real model (random GPT + a BPE tokenizer trained on real text) and a server over it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serving import KEY, make_tiny_run, start_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    running = start_server(tiny_model_dir, api_keys=[KEY], max_tokens_limit=64, max_request_bytes=4096)
    yield running
    running.stop()
