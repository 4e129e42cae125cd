"""`slowdedup:SlowMinHashDedup`: MinHash dedup whose map and apply take measurable time per shard,
so a test can SIGKILL a run inside either phase."""

from __future__ import annotations

import time

from pydantic import Field

from lmforge.dedup.minhash import MinHashConfig, MinHashDedup


class SlowMinHashConfig(MinHashConfig):
    sleep: float = Field(0.1, ge=0)


class SlowMinHashDedup(MinHashDedup):
    Config = SlowMinHashConfig

    def map(self, records):
        time.sleep(self.config.sleep)
        return super().map(records)

    def apply(self, decision, records):
        time.sleep(self.config.sleep)
        yield from super().apply(decision, records)
