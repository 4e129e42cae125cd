"""The stage protocol: a typed config and a streaming `run(records) -> records`.

Stages never touch files. Dropped records go to a sink the executor provides (a
quarantine shard on disk, a list in a test), so every drop is kept with its reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmforge.config import StrictModel, validate
from lmforge.records import Record, text_bytes


class EmptyConfig(StrictModel):
    """Config of a stage that has no options."""


@dataclass(frozen=True, slots=True)
class Keep:
    pass


@dataclass(frozen=True, slots=True)
class Drop:
    """A record's verdict: quarantine it with `reason`.

    `value` is the measurement that crossed the line (a ratio, a word count); the stage keeps it in
    `meta[<stage>]["value"]` so a report can show how far past the threshold a document was.
    """

    reason: str
    value: float | None = None


KEEP = Keep()
DropSink = Callable[[Record], None]


class Configured:
    """What stages and sources share: a registry name and a typed config validated on construction."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrictModel]] = EmptyConfig

    def __init__(self, config: StrictModel | dict | None = None, **kwargs: Any) -> None:
        if config is None or isinstance(config, dict):
            config = validate(self.Config, {**(config or {}), **kwargs}, prefix=self.name)
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class Stage(Configured):
    """Base class. Subclasses set `name`, `Config` and implement `run` (or use a shape below).

    `is_global` stages (dedup clustering, ...) need the whole corpus; executors run them as
    map -> reduce -> apply (see `GlobalStage`), while `run` stays usable on an in-memory list.
    """

    is_global: ClassVar[bool] = False

    def __init__(self, config: StrictModel | dict | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._sink: DropSink = _discard_sink
        self._counters: Counter | None = None

    def bind(self, sink: DropSink) -> Stage:
        """Route dropped records to `sink` (the executor's quarantine writer)."""
        self._sink = sink
        return self

    def count(self, key: str, n: int = 1) -> None:
        """Add to a stage-specific counter (e.g. PII found by kind) that lands in stats.json."""
        if self._counters is not None and n:
            self._counters[key] += n

    def drop(self, record: Record, reason: str, **details: Any) -> None:
        record.meta["drop_reason"] = reason
        record.meta["drop_stage"] = self.name
        if details:
            record.meta.setdefault(self.name, {}).update(details)
        self._sink(record)

    def run(self, records: Iterable[Record]) -> Iterator[Record]:  # pragma: no cover - abstract
        raise NotImplementedError


def _discard_sink(record: Record) -> None:
    """Default sink for stages used outside an executor: the record is simply not yielded."""


class Transform(Stage):
    """A stage built from `apply(record) -> Record | Drop(reason)`: rewrite a record or quarantine it.

    The one place where a verdict becomes a kept or quarantined record, so every shape counts and
    quarantines drops the same way. A stage that works faster on many records at once (a model
    scoring a batch) overrides `run_batch`; `run` then feeds it `batch_size` records at a time, and
    the output is the same as record by record.
    """

    batch_size: ClassVar[int] = 256

    def apply(self, record: Record) -> Record | Drop:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_batch(self, records: list[Record]) -> list[Record | Drop]:
        """One outcome per input record, in order; override for vectorised stages."""
        return [self.apply(record) for record in records]

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        if type(self).run_batch is Transform.run_batch:
            for record in records:
                yield from self._settle(record, self.apply(record))
            return
        for chunk in _chunks(records, self.batch_size):
            outcomes = self.run_batch(chunk)
            if len(outcomes) != len(chunk):
                raise RuntimeError(f"{type(self).__name__}.run_batch returned {len(outcomes)} outcomes "
                                   f"for {len(chunk)} records")
            for record, outcome in zip(chunk, outcomes, strict=True):
                yield from self._settle(record, outcome)

    def _settle(self, record: Record, outcome: Record | Drop) -> Iterator[Record]:
        if isinstance(outcome, Drop):
            if outcome.value is not None:
                record.meta.setdefault(self.name, {})["value"] = round(float(outcome.value), 4)
            self.drop(record, outcome.reason)
        elif isinstance(outcome, Record):
            yield outcome
        else:
            raise TypeError(f"stage {self.name or type(self).__name__!r} returned {type(outcome).__name__}; "
                            "expected a Record or Drop(reason)")


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Filter(Transform):
    """A stage built from `decide(record) -> KEEP | Drop(reason)`; kept records pass unchanged."""

    def decide(self, record: Record) -> Keep | Drop:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, record: Record) -> Record | Drop:
        verdict = self.decide(record)
        if isinstance(verdict, Keep):
            return record
        if isinstance(verdict, Drop):
            return verdict
        raise TypeError(f"filter {self.name or type(self).__name__!r} decided {type(verdict).__name__}; "
                        "expected KEEP or Drop(reason)")


class Mapper(Transform):
    """A stage that rewrites every record and drops none (normalizers, redactors): `apply(record) -> Record`."""

    def apply(self, record: Record) -> Record:  # pragma: no cover - abstract
        raise NotImplementedError


class Summaries:
    """The per-shard outputs of a global stage's map phase, in shard order, read on demand.

    A reduce that reads one column at a time (`read(sid, ["band_3"])`) keeps its memory to that
    column rather than the whole corpus's summaries; in-memory runs pass tables directly.
    """

    def __init__(self, items: list[tuple[str, Any]]) -> None:
        self._items = dict(items)
        self.ids = [sid for sid, _ in items]

    def read(self, sid: str, columns: list[str] | None = None):
        item = self._items[sid]
        if hasattr(item, "num_rows"):  # an in-memory pyarrow Table
            return item.select(columns) if columns else item
        import pyarrow.parquet as pq

        return pq.read_table(item, columns=columns)

    def num_rows(self, sid: str) -> int:
        item = self._items[sid]
        if hasattr(item, "num_rows"):
            return item.num_rows
        import pyarrow.parquet as pq

        return pq.read_metadata(item).num_rows

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, column: str, indices, offsets=None):
        """`column`'s values (a pyarrow Array) at ascending global rows (counted across the shards in
        order), reading only the shards that hold one: a reduce that needs the ids of its duplicates
        only never holds every id. `offsets` (len(ids) + 1 first rows) spares counting the rows again."""
        import numpy as np
        import pyarrow as pa

        if offsets is None:
            offsets = np.concatenate([[0], np.cumsum([self.num_rows(sid) for sid in self.ids])]).astype(np.int64)
        parts = [pa.array([], pa.string())]
        shard_of = np.searchsorted(offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            values = self.read(self.ids[shard], [column]).column(0)
            parts.append(values.take(pa.array(indices[shard_of == shard] - offsets[shard])).combine_chunks())
        return pa.concat_arrays(parts)


class GlobalStage(Stage):
    """A stage that needs the whole corpus, run as map (per shard) -> reduce (once) -> apply (per shard).

    `map` returns a small summary of one shard as a pyarrow Table (e.g. hashes), `reduce` sees
    every shard's summary in shard order through `Summaries` and returns a decision Table per
    shard, and `apply` uses one shard's decision.
    """

    is_global = True

    def map(self, records: Iterable[Record]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def reduce(self, summaries: Summaries) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, decision: Any, records: Iterable[Record]) -> Iterator[Record]:  # pragma: no cover
        raise NotImplementedError

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        """In-memory version: one 'shard' holding everything."""
        records = list(records)
        decision = self.reduce(Summaries([("all", self.map(records))]))["all"]
        yield from self.apply(decision, records)

    def applier(self, decision: Any) -> Stage:
        """A streaming stage applying one shard's decision, so executors can meter it like any other."""
        return _Applier(self, decision)


class _Applier(Stage):
    def __init__(self, stage: GlobalStage, decision: Any) -> None:
        super().__init__(stage.config)
        self.name = stage.name  # type: ignore[misc]
        self._stage, self._decision = stage, decision

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        self._stage.bind(self._sink)
        self._stage._counters = self._counters
        return self._stage.apply(self._decision, records)


# --------------------------------------------------------------------------- stats


@dataclass
class StageStats:
    """Counts for one stage on one shard (or merged over shards)."""

    name: str
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.records_in,
            "out": self.records_out,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 4),
            **({"counters": dict(sorted(self.counters.items()))} if self.counters else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageStats:
        return cls(
            name=d["name"],
            records_in=d["in"],
            records_out=d["out"],
            bytes_in=d["bytes_in"],
            bytes_out=d["bytes_out"],
            seconds=d["seconds"],
            dropped=Counter(d.get("dropped", {})),
            counters=Counter(d.get("counters", {})),
        )

    def merge(self, other: StageStats) -> None:
        self.records_in += other.records_in
        self.records_out += other.records_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        self.dropped.update(other.dropped)
        self.counters.update(other.counters)


class _Metered:
    """Counts records and bytes leaving an iterator and the time spent producing them.

    The time includes everything upstream; `run_chain` subtracts the upstream meter to
    get each stage's own seconds.
    """

    def __init__(self, it: Iterable[Record], stats: StageStats) -> None:
        self._it = iter(it)
        self.stats = stats
        self.elapsed = 0.0

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        t0 = time.perf_counter()
        try:
            record = next(self._it)
        finally:
            self.elapsed += time.perf_counter() - t0
        self.stats.records_out += 1
        self.stats.bytes_out += text_bytes(record)
        return record


def run_chain(
    stages: list[Stage], records: Iterable[Record], sink: DropSink | None = None
) -> tuple[Iterator[Record], list[StageStats]]:
    """Chain streaming stages lazily and meter each one.

    Returns the output iterator and one StageStats per stage, filled in as the iterator
    is consumed. Dropped records are counted by reason and passed to `sink`.
    """
    stats = [StageStats(s.name) for s in stages]
    source = _Metered(records, StageStats("source"))
    meters: list[_Metered] = [source]
    for stage, st in zip(stages, stats, strict=True):

        def on_drop(record: Record, st: StageStats = st) -> None:
            st.dropped[record.meta.get("drop_reason", "unknown")] += 1
            if sink is not None:
                sink(record)

        stage.bind(on_drop)
        stage._counters = st.counters
        meters.append(_Metered(stage.run(meters[-1]), st))
    return _finalize(meters, stats), stats


def _finalize(meters: list[_Metered], stats: list[StageStats]) -> Iterator[Record]:
    yield from meters[-1]
    for i, st in enumerate(stats):
        upstream = meters[i].stats
        st.records_in = upstream.records_out
        st.bytes_in = upstream.bytes_out
        st.seconds = max(0.0, meters[i + 1].elapsed - meters[i].elapsed)
