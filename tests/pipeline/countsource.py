"""A source added by tests with one registry entry (`countsource:CountSource`): numbered lines of a word."""

from collections.abc import Iterator

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.pipeline import Source, SourceContext
from lmforge.records import Record, make_id


class CountConfig(StrictModel):
    n: int = Field(gt=0, description="records to make")
    word: str = "count"


class CountSource(Source):
    name = "count"
    Config = CountConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        for i in range(self.config.n):
            yield Record(id=make_id("count", str(i)), text=f"{self.config.word} number {i} of a small corpus",
                         source="count")
