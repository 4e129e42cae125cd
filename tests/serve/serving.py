"""Helpers for the server tests: a tiny real model on disk and a uvicorn server in a thread.

Not a test module: test files load it with `sys.path` (pytest runs with --import-mode=importlib).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

KEY = "sk-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_run(run: Path, block_size: int = 128) -> Path:
    """RUN/pretrain/checkpoint + RUN/tokenizer, the layout `lmforge pretrain` leaves."""
    import pydoc_data.topics

    import torch

    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
    from lmforge.train.checkpoint import save_checkpoint

    texts = list(pydoc_data.topics.topics.values())[:20] + ["你好，世界。今天我们学习语言模型。电话 13812345678。"] * 20
    train_tokenizer(texts, TokenizerConfig(vocab_size=400), run / "tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=400, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(model, model.config, run / "pretrain" / "checkpoint")
    return run


def wait_healthy(base: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server at {base} not healthy after {timeout} s")


class Running:
    def __init__(self, service, server, thread, base: str) -> None:
        self.service, self.server, self.thread, self.base = service, server, thread, base

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_server(model_dir: Path, **config) -> Running:
    from lmforge.serve.http import build_service, uvicorn_server
    from lmforge.serve.protocol import ServeConfig

    cfg = ServeConfig(port=free_port(), **config)
    service = build_service(model_dir, cfg, device="cpu")
    server = uvicorn_server(service)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{cfg.port}"
    wait_healthy(base)
    return Running(service, server, thread, base)
