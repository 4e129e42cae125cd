"""What every quality scorer shares: a score per document in `meta["quality"]`, kept or dropped per language.

A cut by threshold could stream, but a cut by top fraction needs every score of a language first,
so a scorer is a global stage: `map` scores a shard and keeps (score, language, characters) per
record, `reduce` turns the thresholds or fractions into one cutoff per language, and `apply` writes
the score and drops what falls below. The scores travel in the decision, so `apply` never scores
twice (a transformer scorer costs far more than the bookkeeping). The map summaries and decisions
stay in the run directory (`stages/NN-name/map`, `reduce`), which is what the report's quality
section reads: every document's score without opening a single `meta`.

Languages: the record's `lang` (its base: zh-Hant is zh) when set, else `lang.cjk_lang` (zh, ja),
else "und" (undetermined). A threshold or fraction keyed "*" covers the languages not named.
Scores that are not finite (a scorer that read nothing) never count towards a fraction; their
documents are quarantined as `quality_unscored`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.lang import cjk_lang
from lmforge.pipeline.stage import GlobalStage, Summaries
from lmforge.records import Record

UNDETERMINED = "und"
PerLanguage = float | dict[str, float]
# Schema metadata keys: counters `score_batch` kept during map (stats are only collected in apply),
# a fingerprint of the shard's record ids, and what the report needs to read a decision.
COUNTED, FINGERPRINT, QUALITY = b"lmforge.counted", b"lmforge.fingerprint", b"lmforge.quality"


def language_code(lang: str, text: str) -> str:
    """The language a cutoff applies to, from a record's `lang` field and text (see the module docstring)."""
    if lang:
        return lang.replace("_", "-").split("-")[0].lower()
    return cjk_lang(text) or UNDETERMINED


def language_of(record: Record) -> str:
    return language_code(record.lang, record.text)


def existing_path(value: str | None) -> str | None:
    """`value` made absolute, so worker processes with another working directory read the same files;
    a path that does not exist is a config error now rather than in a worker later."""
    if value is None:
        return None
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.exists(path):
        raise ValueError(f"{value!r} does not exist (relative paths start at {os.getcwd()})")
    return path


def per_language(value: PerLanguage | None, lang: str) -> float | None:
    """`value` for `lang`: the number itself, the language's entry, or the "*" entry."""
    if value is None or isinstance(value, (int, float)):
        return value
    return value.get(lang, value.get("*"))


class KeepConfig(StrictModel):
    """Where the score goes and which documents stay; the fields every scorer shares."""

    key: str = Field(default="score", min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                     description='the score is written to meta.quality.<key>')
    threshold: PerLanguage | None = Field(
        default=None, description='keep documents scoring at least this (one number, or per language: '
        '{zh: 2.5, en: 3, "*": 3}); none: keep everything, only score')
    top_fraction: PerLanguage | None = Field(
        default=None, description="keep this fraction of each language's documents, the best scored (0-1]")
    batch_size: int = Field(default=256, ge=1, le=65536, description="documents scored at once")

    @model_validator(mode="after")
    def _one_rule(self) -> KeepConfig:
        if self.threshold is not None and self.top_fraction is not None:
            raise ValueError("give threshold or top_fraction, not both")
        fractions = self.top_fraction
        values = fractions.values() if isinstance(fractions, dict) else [] if fractions is None else [fractions]
        if any(not 0 < v <= 1 for v in values):
            raise ValueError(f"top_fraction must lie in (0, 1]; got {fractions}")
        return self


def kth_best(scores: np.ndarray, fraction: float) -> float:
    """The lowest score among the best `fraction` of the finite `scores` (-inf: that is all of them).

    Ties at that score all count, so a little more than the fraction may pass it. The fraction of n
    is rounded up, after forgiving float noise (0.07 * 100 is 7.000000000000001: 7 documents, not 8).
    """
    finite = scores[np.isfinite(scores)]
    n = len(finite)
    k = max(1, math.ceil(fraction * n - 1e-9))
    if fraction >= 1 or k >= n:
        return -math.inf
    return float(np.partition(finite, n - k)[n - k])


def cutoff_for(scores: np.ndarray, lang: str, config: KeepConfig) -> float:
    """The lowest score of `lang` kept (-inf: keep all): its threshold, or its top fraction of `scores`."""
    if config.threshold is not None:
        value = per_language(config.threshold, lang)
        return -math.inf if value is None else float(value)
    fraction = per_language(config.top_fraction, lang)
    return -math.inf if fraction is None else kth_best(scores, fraction)


def cutoffs(scores: np.ndarray, langs: np.ndarray, config: KeepConfig) -> dict[str, float]:
    """The lowest score kept, per language present (-inf: keep all)."""
    return {lang: cutoff_for(scores[langs == lang], lang, config) for lang in np.unique(langs).tolist()}


def _by_language(table) -> dict[str, np.ndarray]:
    """A summary table's scores grouped by its `lang` column, without a Python object per row."""
    import pyarrow.compute as pc

    scores = table.column("score").to_numpy(zero_copy_only=False)
    langs = table.column("lang")
    return {lang: scores[pc.equal(langs, lang).to_numpy(zero_copy_only=False)]
            for lang in pc.unique(langs).to_pylist()}


class _Fingerprint:
    """A digest of a shard's record ids in order: apply checks it sees the records map scored."""

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=12)

    def add(self, record_id: str) -> None:
        self._digest.update(record_id.encode("utf-8", "surrogatepass") + b"\x00")

    def hex(self) -> str:
        return self._digest.hexdigest()


class ScoreStage(GlobalStage):
    """Base of the scorers: subclasses set `name`, a Config deriving from KeepConfig, and `score_batch`."""

    Config = KeepConfig
    drop_reason = "quality_below_cutoff"
    score_label: ClassVar[str] = "score"  # what the report calls the score (its units)
    value_kind: ClassVar[str] = "score"  # what meta.quality.<key> holds: the score, or "perplexity" = exp(-score)

    def score_batch(self, records: list[Record]) -> np.ndarray:  # pragma: no cover - abstract
        """One score per record, higher is better; NaN where the record cannot be scored."""
        raise NotImplementedError

    def value(self, score: float) -> float:
        """What meta.quality.<key> holds for a score: the score itself, or a perplexity for -ln(perplexity)."""
        return score

    def lang_values(self, lang: str, scores: np.ndarray) -> dict[str, float]:
        """The numbers `apply` needs for one language, from all its scores: the cutoff, and whatever a
        subclass's `extra` reads (perplexity bucket edges)."""
        return {"cutoff": cutoff_for(scores, lang, self.config)}

    def extra(self, score: float, lang: str, values: dict[str, float]) -> dict[str, Any]:
        """More meta.quality keys for one record, from its language's `lang_values`; none by default."""
        return {}

    def _scores(self, records: Iterable[Record]) -> tuple[np.ndarray, list[str], list[int], str]:
        scores, langs, chars, batch = [], [], [], []
        fingerprint = _Fingerprint()

        def flush() -> None:
            scores.append(np.asarray(self.score_batch(batch), dtype=np.float64))
            if len(scores[-1]) != len(batch):
                raise RuntimeError(f"{self.name}.score_batch returned {len(scores[-1])} scores for {len(batch)} records")
            langs.extend(language_of(r) for r in batch)
            chars.extend(len(r.text) for r in batch)
            batch.clear()

        for record in records:
            batch.append(record)
            fingerprint.add(record.id)
            if len(batch) >= self.config.batch_size:
                flush()
        if batch:
            flush()
        return (np.concatenate(scores) if scores else np.zeros(0)), langs, chars, fingerprint.hex()

    def map(self, records: Iterable[Record]):
        """(score, lang, chars) per record; what `score_batch` counted and the ids' fingerprint as metadata."""
        import pyarrow as pa

        outer, self._counters = self._counters, Counter()  # stats are gathered in apply: carry counts there
        try:
            scores, langs, chars, fingerprint = self._scores(records)
            counted = dict(self._counters)
        finally:
            self._counters = outer
        table = pa.table({"score": pa.array(scores, pa.float64()), "lang": pa.array(langs, pa.string()),
                          "chars": pa.array(chars, pa.int64())})
        return table.replace_schema_metadata({COUNTED: json.dumps(counted), FINGERPRINT: fingerprint})

    def reduce(self, summaries: Summaries) -> dict[str, Any]:
        """Per language, `lang_values` over all its scores; per shard, a decision row per record.

        Only the score and language columns are read, a shard at a time, and held as one float
        array per language: a corpus of 100M documents costs 0.8 GB here, not 100M Python strings.
        """
        import pyarrow as pa

        groups: dict[str, list[np.ndarray]] = {}
        for sid in summaries.ids:
            for lang, part in _by_language(summaries.read(sid, ["score", "lang"])).items():
                groups.setdefault(lang, []).append(part)
        values = {lang: self.lang_values(lang, np.concatenate(parts)) for lang, parts in sorted(groups.items())}
        names = ["cutoff", *sorted({n for v in values.values() for n in v} - {"cutoff"})]
        about = json.dumps({"key": self.config.key, "stage": self.name, "score_label": self.score_label,
                            "value": self.value_kind, "languages": values})
        out = {}
        for sid in summaries.ids:
            table = summaries.read(sid, ["score", "lang"])
            langs = table.column("lang").to_pylist()
            columns = {"score": table.column("score"), "lang": table.column("lang")}
            columns.update({n: pa.array([values[x].get(n, math.nan) for x in langs], pa.float64()) for n in names})
            meta = table.schema.metadata or {}
            out[sid] = pa.table(columns).replace_schema_metadata({
                COUNTED: meta.get(COUNTED, b"{}"), FINGERPRINT: meta.get(FINGERPRINT, b""), QUALITY: about})
        return out

    def apply(self, decision, records: Iterable[Record]) -> Iterator[Record]:
        meta = decision.schema.metadata or {}
        for counter, n in json.loads(meta.get(COUNTED, b"{}")).items():
            self.count(counter, n)
        scores = decision.column("score").to_pylist()
        langs = decision.column("lang").to_pylist()
        names = [n for n in decision.column_names if n not in ("score", "lang")]
        rows = {n: decision.column(n).to_pylist() for n in names}
        fingerprint, n = _Fingerprint(), 0
        for n, record in enumerate(records, start=1):
            if n > len(scores):
                raise RuntimeError(f"{self.name}: shard has more records than when it was scored")
            fingerprint.add(record.id)
            score, lang = scores[n - 1], langs[n - 1]
            values = {name: rows[name][n - 1] for name in names}
            yield from self._settle(record, score, lang, values)
        if n != len(scores):
            raise RuntimeError(f"{self.name}: shard has fewer records than when it was scored")
        expected = meta.get(FINGERPRINT, b"").decode()
        if expected and fingerprint.hex() != expected:
            raise RuntimeError(f"{self.name}: the shard's records are not the ones scored (another order or "
                               "other documents); delete this stage's directory to score it again")

    def _settle(self, record: Record, score: float, lang: str, values: dict[str, float]) -> Iterator[Record]:
        cut = values["cutoff"]
        quality = record.meta.setdefault("quality", {})
        quality[self.config.key] = round(self.value(score), 6) if math.isfinite(score) else None
        if math.isfinite(score):
            quality.update(self.extra(score, lang, values))
        self.count(f"scored_{lang}")
        if not math.isfinite(score):  # a scorer that could not score (no text, no characters it reads)
            self.drop(record, "quality_unscored", lang=lang)
        elif score >= cut:
            yield record
        else:
            self.drop(record, self.drop_reason, value=round(self.value(score), 4),
                      cutoff=round(self.value(cut), 4), lang=lang)
