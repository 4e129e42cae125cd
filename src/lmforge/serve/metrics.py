"""Prometheus metrics of one server: requests, tokens, latency, batch sizes, queue depth.

Each app gets its own registry, so several servers (or tests) in one process never share counts.
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, backend: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmforge_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("lmforge_request_seconds", "Request latency, to the last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("lmforge_time_to_first_token_seconds", "Time to the first generated token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("lmforge_completion_tokens", "Tokens generated", registry=r)
        self.batch = Histogram("lmforge_batch_size", "Sequences advanced together per decoding step",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        running = Gauge("lmforge_running_sequences", "Sequences being decoded", registry=r)
        running.set_function(lambda: backend.running)
        waiting = Gauge("lmforge_waiting_requests", "Requests waiting for a batch slot", registry=r)
        waiting.set_function(lambda: backend.waiting)
        self._backend = backend

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        sizes = getattr(self._backend, "batch_sizes", None)
        if sizes:
            taken, sizes[:] = list(sizes), []
            for n in taken:
                self.batch.observe(n)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
