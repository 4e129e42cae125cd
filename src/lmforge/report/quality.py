"""The report's quality section: for each quality scorer of a run, per language, the score histogram
(kept and dropped), what the cutoff and a few other thresholds would keep, and documents at each band.

A scorer (`quality.scoring.ScoreStage`) leaves every document's score, language and length in its
map summaries (`stages/NN-name/map/summary-*.parquet`) and its per-language cutoffs in the
decisions' metadata (`reduce/decision-*.parquet`), so the distributions are read from three small
columns, never from `meta`; at most MAX_SCORES scores per scorer and language are kept (a uniform
sample beyond, bottom-k on random keys). Example documents are the only texts read: from a few
output and quarantine shards of the scorer's directory, until each band has its examples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.report import plots
from lmforge.report.data import MAX_SHARDS, _evenly, _snippet, pick_shards, stage_dirs
from lmforge.report.html import Details, Figure, Section, Table, Text
from lmforge.report.run import Run

QUALITY_META = b"lmforge.quality"  # quality.scoring.QUALITY: the decisions' metadata key
MAX_SCORES = 50_000  # per scorer and language
MAX_LANGS = 6
EXAMPLE_ROWS = 20_000  # records read per scorer for examples
EXAMPLES_PER_BAND = 2
BANDS = (0.25, 0.5, 0.75)  # quartiles of a language's scores: four bands


@dataclass
class LangScores:
    scores: np.ndarray  # float64, NaN for unscored documents
    chars: np.ndarray  # int64
    keys: np.ndarray  # the random sampling keys (bottom-k)
    seen: int = 0  # documents read, sampled or not


@dataclass
class Scorer:
    """One scorer stage's scores, read from its directory."""

    dir: Path
    key: str
    label: str
    value: str  # what meta.quality.<key> holds: "score", or "perplexity" (exp(-score))
    cutoffs: dict[str, float]
    langs: dict[str, LangScores] = field(default_factory=dict)
    files_read: int = 0
    files_total: int = 0

    @property
    def stage(self) -> str:
        return self.dir.name.split("-", 1)[-1]


def find_scorers(run_dir: Path) -> list[Path]:
    """Stage directories a quality scorer wrote: their decisions carry the quality metadata."""
    import pyarrow.parquet as pq

    found = []
    for d in stage_dirs(run_dir):
        decision = next(iter(sorted((d / "reduce").glob("decision-*.parquet"))), None)
        if decision is not None and QUALITY_META in (pq.read_schema(decision).metadata or {}):
            found.append(d)
    return found


def read_scorer(stage_dir: Path, max_scores: int = MAX_SCORES, seed: int = 0) -> Scorer:
    import pyarrow.parquet as pq

    decision = sorted((stage_dir / "reduce").glob("decision-*.parquet"))[0]
    about = json.loads(pq.read_schema(decision).metadata[QUALITY_META])
    scorer = Scorer(stage_dir, about["key"], about.get("score_label", "score"), about.get("value", "score"),
                    {lang: v["cutoff"] for lang, v in about["languages"].items()})
    files = sorted((stage_dir / "map").glob("summary-*.parquet"))
    scorer.files_total = len(files)
    rng = np.random.default_rng(seed)
    for path in _evenly(files, MAX_SHARDS):
        table = pq.read_table(path, columns=["score", "lang", "chars"])
        scores = table.column("score").to_numpy(zero_copy_only=False)
        chars = table.column("chars").to_numpy(zero_copy_only=False)
        langs = np.asarray(table.column("lang").to_pylist(), dtype=object)
        for lang in np.unique(langs).tolist():
            mask = langs == lang
            _add(scorer.langs, lang, scores[mask], chars[mask], rng, max_scores)
        scorer.files_read += 1
    return scorer


def _add(langs: dict[str, LangScores], lang: str, scores: np.ndarray, chars: np.ndarray,
         rng: np.random.Generator, limit: int) -> None:
    """Merge a shard's scores of one language, keeping the `limit` with the smallest random keys."""
    keys = rng.random(len(scores))
    old = langs.get(lang)
    seen = len(scores) + (old.seen if old else 0)
    if old is not None:
        scores, chars, keys = (np.concatenate([a, b]) for a, b in
                               ((old.scores, scores), (old.chars, chars), (old.keys, keys)))
    if len(keys) > limit:
        keep = np.argpartition(keys, limit)[:limit]
        scores, chars, keys = scores[keep], chars[keep], keys[keep]
    langs[lang] = LangScores(scores, chars, keys, seen)


def thresholds(scores: np.ndarray, cutoff: float | None) -> list[float]:
    """Five thresholds across the middle 80% of the scores, rounded to their spacing's first digit
    (1, 2, 3 for a 0-5 rating; -5.984, -5.982 for close perplexities); and the cutoff."""
    if not scores.size:
        return []
    low, high = np.quantile(scores, [0.1, 0.9])
    step = (high - low) / 4
    digits = max(0, -math.floor(math.log10(step))) if step > 0 else 6
    values = {round(float(v), digits) for v in np.linspace(low, high, 5)}
    if cutoff is not None and math.isfinite(cutoff):
        values.add(float(cutoff))
    return sorted(values)


def keeps(scores: np.ndarray, chars: np.ndarray, threshold: float) -> tuple[int, float, float]:
    """(documents, share of documents, share of characters) scoring at least `threshold`."""
    kept = scores >= threshold
    return int(kept.sum()), float(kept.mean()) if kept.size else 0.0, float(chars[kept].sum() / max(chars.sum(), 1))


def band_edges(scores: np.ndarray) -> np.ndarray:
    return np.quantile(scores, BANDS) if scores.size else np.zeros(len(BANDS))


def examples(scorer: Scorer, edges: dict[str, np.ndarray], max_rows: int = EXAMPLE_ROWS) -> dict[tuple, list]:
    """(lang, band) -> [(score, kept, snippet)] from the scorer's output and quarantine shards."""
    import pyarrow.parquet as pq

    from lmforge.quality.scoring import language_code

    found: dict[tuple, list] = {}
    wanted = len(edges) * (len(BANDS) + 1) * EXAMPLES_PER_BAND
    outputs, _ = pick_shards(scorer.dir, 4)
    quarantine = _evenly(sorted(scorer.dir.glob("quarantine-*.parquet")), 4)
    rows = 0
    for path in [*outputs, *quarantine]:
        if rows >= max_rows or sum(len(v) for v in found.values()) >= wanted:
            break
        table = pq.read_table(path, columns=["text", "lang", "meta"]).to_pydict()
        rows += len(table["text"])
        for text, lang, raw in zip(table["text"], table["lang"], table["meta"], strict=True):
            value = _quality_value(raw, scorer.key)
            lang = language_code(lang or "", text or "")
            if value is None or lang not in edges or (scorer.value == "perplexity" and value <= 0):
                continue
            score = -math.log(value) if scorer.value == "perplexity" else value
            band = int(np.searchsorted(edges[lang], score, side="right"))
            slot = found.setdefault((lang, band), [])
            if len(slot) < EXAMPLES_PER_BAND:
                slot.append((score, path.name.startswith("shard-"), _snippet(text)))
    return found


def _quality_value(raw: Any, key: str) -> float | None:
    try:
        meta = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    except ValueError:
        return None
    quality = meta.get("quality") if isinstance(meta, dict) else None
    value = quality.get(key) if isinstance(quality, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def scorer_blocks(scorer: Scorer) -> list[Any]:
    """Per language a histogram; one table of what thresholds keep; examples per band; a sampling note."""
    langs = sorted(scorer.langs, key=lambda k: -scorer.langs[k].seen)[:MAX_LANGS]
    blocks: list[Any] = [Text(f"{scorer.dir.name} writes meta.quality.{scorer.key}; score: {scorer.label}. "
                              f"Documents at or above their language's cutoff are kept.")]
    rows, edges = [], {}
    for lang in langs:
        figure, lang_rows, edges[lang] = _language(scorer, lang)
        blocks.append(figure)
        rows += lang_rows
    perplexity = ["perplexity at most"] if scorer.value == "perplexity" else []
    blocks.append(Table(["language", "threshold", *perplexity, "", "documents kept", "% documents", "% characters"],
                        rows, caption=f"What each threshold keeps ({scorer.key}, of the scored documents)"))
    found = examples(scorer, edges)
    if found:
        ex_rows = [[lang, name, score, "kept" if kept else "dropped", text]
                   for lang in langs for band, name in enumerate(_band_names(edges[lang]))
                   for score, kept, text in found.get((lang, band), [])]
        blocks.append(Details(f"Examples at each score band ({scorer.key}: quartiles of each language)",
                              [Table(["language", "band", "score", "", "text"], ex_rows, wide_text=True)]))
    if scorer.files_read < scorer.files_total:
        blocks.append(Text(f"Scores from {scorer.files_read} of {scorer.files_total} shards, evenly spaced.", "note"))
    return blocks


def _language(scorer: Scorer, lang: str) -> tuple[Figure, list[list[Any]], np.ndarray]:
    """One language's histogram, its threshold rows and its band edges."""
    data = scorer.langs[lang]
    scored = np.isfinite(data.scores)
    scores, chars = data.scores[scored], data.chars[scored]
    cutoff = scorer.cutoffs.get(lang)
    cut = cutoff if cutoff is not None and math.isfinite(cutoff) else None
    kept = scores >= (cut if cut is not None else -math.inf)
    title = f"{scorer.stage}: {scorer.key} scores, {lang}"
    caption = f"{data.seen:,} documents"
    if data.seen > len(data.scores):
        caption += f", {len(data.scores):,} sampled"
    if (~scored).any():
        caption += f", {int((~scored).sum()):,} unscored"
    figure = Figure(plots.score_histogram(scores[kept], scores[~kept], cut, title, scorer.label), title, caption)

    def shown(t: float | None) -> list[Any]:  # a perplexity filter's threshold as the perplexity it stands for
        return [None if t is None else math.exp(-t)] if scorer.value == "perplexity" else []

    rows = []
    for t in thresholds(scores, cut):
        n, share, char_share = keeps(scores, chars, t)
        rows.append([lang, t, *shown(t), "cutoff" if t == cut else "", n, 100 * share, 100 * char_share])
    if cut is None:
        rows.append([lang, None, *shown(None), "cutoff (keeps all)", int(scores.size), 100.0, 100.0])
    return figure, rows, band_edges(scores)


def _band_names(edges: np.ndarray) -> list[str]:
    cuts = [f"{v:.4g}" for v in edges]
    return [f"< {cuts[0]}", *[f"{a} to {b}" for a, b in zip(cuts, cuts[1:], strict=False)], f"≥ {cuts[-1]}"]


def quality_section(run: Run) -> Section | None:
    scorers = [read_scorer(d) for d in find_scorers(run.dir)]
    scorers = [s for s in scorers if s.langs]
    if not scorers:
        return None
    blocks: list[Any] = []
    for scorer in scorers:
        blocks += scorer_blocks(scorer)
    return Section("quality", "Quality scores", blocks)
