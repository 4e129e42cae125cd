"""A custom stage (loaded by recipes as `slowstage:Slow`) that makes shards take measurable time."""

import time

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.pipeline import Mapper


class SlowConfig(StrictModel):
    seconds: float = Field(0.01, ge=0)


class Slow(Mapper):
    name = "slow"
    Config = SlowConfig

    def apply(self, record):
        time.sleep(self.config.seconds)
        record.meta["slow"] = {"slept": self.config.seconds}
        return record
