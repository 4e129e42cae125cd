"""The bridge between the asyncio server and the engine's thread.

The engine steps on one thread so that a forward pass never blocks the event loop; each
request gets an asyncio queue that the engine thread feeds through the loop's thread-safe
callback. Stopping drains: requests already admitted or waiting are finished first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from lmforge.serve.engine import Engine, Event
from lmforge.serve.loading import LoadedModel
from lmforge.serve.sampling import SamplingParams

logger = logging.getLogger(__name__)


class EngineWorker:
    """lmforge's own backend: the continuous-batching engine on a background thread."""

    def __init__(self, loaded: LoadedModel, slots: int = 8, max_len: int | None = None) -> None:
        self.loaded = loaded
        self.engine = Engine(loaded.model, loaded.tokenizer, slots=slots, stop_ids=loaded.stop_ids, max_len=max_len)
        self.max_len = self.engine.max_len
        self.batch_sizes: list[int] = []  # read (and cleared) by the metrics collector
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish what was submitted, then end the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            if not self.engine.busy:
                if self._stopping:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                advanced = self.engine.step()
            except Exception as exc:  # a bug or out-of-memory: fail loudly, never hang the clients
                logger.exception("generation engine failed")
                self.error = exc
                self.engine.abort_all()
                return
            if advanced:
                self.batch_sizes.append(advanced)

    @property
    def running(self) -> int:
        return self.engine.running

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    def check_fits(self, prompt_tokens: int, params: SamplingParams) -> None:
        self.engine.check_fits(prompt_tokens, params)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       extra_stop_ids: list[int] | None = None) -> AsyncIterator[Event]:
        """Events of one request until all its samples finish; cancelling the iteration cancels it."""
        if self.error is not None:
            raise RuntimeError(f"the generation engine stopped: {self.error}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def sink(ev: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        req = self.engine.submit(prompt_ids, params, sink, extra_stop_ids)
        self._wake.set()
        remaining = params.n
        try:
            while remaining:
                ev = await queue.get()
                if ev.finish_reason is not None:
                    remaining -= 1
                yield ev
        finally:
            if remaining:
                self.engine.cancel(req)


def make_backend(kind: str, loaded: Any, slots: int, max_len: int | None = None) -> Any:
    if kind == "lmforge":
        return EngineWorker(loaded, slots, max_len)
    from lmforge.serve.vllm_backend import VLLMBackend

    return VLLMBackend(loaded, slots)
