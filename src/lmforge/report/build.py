"""Assemble the report of one run directory: each section is built only from data the run has.

A section builder returns None when its data is absent (a data-only run has no training
section, a fine-tune has no funnel), so any part of the flow gets a valid report. A builder
that fails on damaged files costs only its own section: the page shows the error there and
the rest of the report is still written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from lmforge.report import data, plots
from lmforge.report.html import Details, Figure, Section, Table, Text
from lmforge.report.quality import quality_section
from lmforge.report.run import Run
from lmforge.report.sections import (
    configs_section,
    evaluation_section,
    finetune_sections,
    pretrain_sections,
    samples_section,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data sections


def funnel_section(run: Run) -> Section | None:
    stats = run.stats
    if not stats:
        return None
    stages = stats["stages"]
    kept = [(st["name"], st["out"]) for st in stages]
    if stages[0]["name"] != "input":  # a run that started from an existing stage: show what came in
        kept.insert(0, ("input", stages[0]["in"]))
    blocks: list[Any] = [Figure(plots.funnel(kept, "Data funnel: records kept after each stage"),
                                "Data funnel: records kept after each stage")]
    reasons = sorted(((f"{reason} ({st['name']})", n) for st in stages for reason, n in st["dropped"].items() if n),
                     key=lambda x: -x[1])
    if reasons:
        title = "Dropped records by reason"
        blocks.append(Figure(plots.bars([r for r, _ in reasons], [n for _, n in reasons], title, "records dropped"),
                             title))
    rows = [[st["name"], st["in"], st["out"], st["in"] - st["out"],
             ", ".join(f"{k} {v:,}" for k, v in st["dropped"].items()) or "—",
             round(st.get("bytes_out", 0) / 1e6, 3), st.get("seconds"),
             ", ".join(f"{k} {v:,}" for k, v in (st.get("counters") or {}).items()) or "—"] for st in stages]
    t = stats.get("totals", {})
    blocks.append(Table(["stage", "in", "out", "dropped", "drop reasons", "MB out", "seconds", "counted"], rows,
                        caption=f"records in {t.get('records_in', 0):,}, written {t.get('records_out', 0):,}"))
    q = run.quarantine()
    if q is not None and q.examples:
        rows = [[reason, ex["stage"], ex["where"], ex["text"]] for reason, found in sorted(q.examples.items())
                for ex in found]
        note = "" if q.files_read == q.files_total else f" (from {q.files_read} of {q.files_total} quarantine files)"
        blocks.append(Details(f"Examples of dropped records, by reason{note}",
                              [Table(["reason", "stage", "source", "text"], rows, wide_text=True)]))
    return Section("funnel", "Data funnel", blocks)


def documents_section(run: Run) -> Section | None:
    dirs = data.stage_dirs(run.dir)
    if not dirs or run.output is None:
        return None
    final = data.sample_docs(run.output)
    if final is None or final.lengths.size == 0:
        return None
    first = data.sample_docs(dirs[0]) if dirs[0] != run.output else None
    title = f"Document length, final output ({final.stage})"
    blocks: list[Any] = [Figure(plots.length_histogram(final.by_lang(), title), title,
                                "characters per document, log scale, one line per language")]
    langs = list(final.lang_counts())
    series = {"final output": [final.lang_counts()[k] for k in langs]}
    if first is not None:
        first_counts = first.lang_counts()
        langs += [k for k in first_counts if k not in langs]
        series = {"input": [first_counts.get(k, 0) for k in langs],
                  "final output": [final.lang_counts().get(k, 0) for k in langs]}
    title = "Documents by language"
    blocks.append(Figure(plots.grouped_bars(langs, series, title, "documents"), title,
                         "language as tagged by the pipeline (unknown: not tagged)"))
    rows = []
    for lang, lengths in final.by_lang().items():
        rows.append([lang, int(lengths.size), int(lengths.sum()), float(lengths.mean()), float(_median(lengths)),
                     int(lengths.min()), int(lengths.max())])
    blocks.append(Table(["language", "documents", "characters", "mean length", "median length", "shortest",
                         "longest"], rows, caption="final output"))
    for sample in (s for s in (first, final) if s is not None and s.sampled):
        blocks.append(Text(f"{sample.stage}: read {sample.shards_read} of {sample.shards_total} shards "
                           f"({sample.lengths.size:,} documents), evenly spaced.", "note"))
    return Section("documents", "Documents", blocks)


def _median(values) -> float:
    import numpy as np

    return float(np.median(values)) if len(values) else math.nan


def dedup_section(run: Run) -> Section | None:
    q = run.quarantine()
    if q is None or not q.clusters:
        return None
    dists = {stage: q.size_distribution(stage) for stage in sorted(q.clusters)}
    labels, bins = _size_bins(sorted({s for dist in dists.values() for s in dist}))
    series = {stage: [sum(n for s, n in dist.items() if lo <= s <= hi) for lo, hi in bins]
              for stage, dist in dists.items()}
    title = "Duplicate clusters by size"
    blocks: list[Any] = [Figure(
        plots.grouped_bars(labels, series, title, "clusters", log=max(max(v) for v in series.values()) > 50),
        title, "documents per cluster, the kept one included")]
    rows = []
    for stage in dists:
        values = list(q.clusters[stage].values())
        rows.append([stage, len(values), sum(values) - len(values), max(values), sum(values) / len(values)])
    blocks.append(Table(["stage", "clusters", "duplicates removed", "largest cluster", "mean size"], rows))
    top = [[stage, size, text] for stage in dists for size, text in q.largest(stage)]
    blocks.append(Details("Largest clusters", [Table(["stage", "size", "text (a removed copy)"], top,
                                                     wide_text=True)]))
    if q.files_read < q.files_total:
        blocks.append(Text(f"Counted from {q.files_read} of {q.files_total} quarantine files.", "note"))
    return Section("dedup", "Duplicates", blocks)


def _size_bins(sizes: list[int]) -> tuple[list[str], list[tuple[int, int]]]:
    """One bar per size when there are few; else ranges that grow (2, 3, 4, 5, 6-10, 11-20, 21-50 ...)."""
    if len(sizes) <= 12:
        return [str(s) for s in sizes], [(s, s) for s in sizes]
    edges = [2, 3, 4, 5, 6, 11, 21, 51, 101, 201, 501, 1001, 10**9]
    labels, bins = [], []
    for lo, nxt in zip(edges, edges[1:], strict=False):
        hi = nxt - 1
        if any(lo <= s <= hi for s in sizes):
            labels.append(str(lo) if lo == hi else (f"{lo}+" if nxt == 10**9 else f"{lo}-{hi}"))
            bins.append((lo, hi))
    return labels, bins


def tokenizer_section(run: Run) -> Section | None:
    steps = run.steps
    if "tokenizer" not in steps and not (run.dir / "tokenizer" / "tokenizer.json").is_file():
        return None
    val_percent = float((run.config.get("pretrain") or {}).get("val_percent") or 0.0)
    fert = data.fertility_by_language(run.dir, run.output, val_percent)
    tok_cfg = run.config.get("tokenizer") or {}
    facts = [["kind", tok_cfg.get("kind")], ["vocabulary", (steps.get("tokenizer") or {}).get("vocab_size")]]
    tokens = steps.get("tokens")
    if tokens:
        facts += [["training tokens", tokens.get("train_tokens")], ["validation tokens", tokens.get("val_tokens")],
                  ["characters per token (train)", tokens.get("chars_per_token")]]
    blocks: list[Any] = []
    if fert is not None and fert.rows:
        langs = [r.lang for r in fert.rows]
        title = "Tokenizer fertility by language"
        series = {"tokens per character": [r.tokens_per_char for r in fert.rows]}
        if all(r.words for r in fert.rows):
            series["tokens per word"] = [r.tokens_per_word for r in fert.rows]
        blocks.append(Figure(plots.grouped_bars(langs, series, title, "tokens"), title,
                             "lower is better: more text per token (words: whitespace for English, jieba for Chinese)"))
        rows = [[r.lang, r.chars, r.words, r.tokens, r.tokens_per_char, r.tokens_per_word if r.words else None,
                 r.chars / max(r.tokens, 1), 100 * r.fallback / max(r.tokens, 1),
                 "held-out" if fert.held_out[r.lang] else "all"] for r in fert.rows]
        blocks.append(Table(["language", "characters", "words", "tokens", "tokens/char", "tokens/word", "chars/token",
                             "byte fallback %", "documents"], rows))
        facts += [[f"longest tokens ({k})", " · ".join(v)] for k, v in fert.longest.items() if v]
    blocks.insert(0, Table(["", ""], facts, kv=True))
    return Section("tokenizer", "Tokenizer", blocks)


def logs_section(run: Run) -> Section | None:
    path = run.dir / "logs" / "run.log"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    flagged = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln]
    if not flagged:
        return None
    return Section("logs", "Warnings", [Text(f"{len(flagged)} warnings or errors in logs/run.log; the last ones:"),
                                        Table(["line"], [[ln] for ln in flagged[-30:]], wide_text=True)])


# --------------------------------------------------------------------------- the page

BUILDERS: list[Callable[[Run], Any]] = [funnel_section, documents_section, dedup_section, quality_section,
                                        tokenizer_section,
                                        pretrain_sections, finetune_sections, evaluation_section, samples_section,
                                        configs_section,
                                        logs_section]


def build_sections(run: Run) -> list[Section]:
    sections: list[Section] = []
    for builder in BUILDERS:
        name = builder.__name__.removesuffix("_section").removesuffix("_sections")
        try:
            made = builder(run)
        except Exception as exc:  # noqa: BLE001 - one damaged file must not cost the whole report
            log.warning("report: the %s section failed: %s: %s", name, type(exc).__name__, exc, exc_info=True)
            made = Section(f"{name}-error", name, [Text(f"This section could not be built: {type(exc).__name__}: "
                                                        f"{exc}", "error")])
        if made is None:
            continue
        sections.extend(made if isinstance(made, list) else [made])
    return sections


def facts(run: Run, sections: list[Section]) -> dict[str, Any]:
    out: dict[str, Any] = {"run directory": str(run.dir)}
    if run.stats:
        t = run.stats.get("totals", {})
        out["records in → out"] = f"{t.get('records_in', 0):,} → {t.get('records_out', 0):,}"
    pre = run.steps.get("pretrain")
    if pre:
        out["pretraining steps"] = pre.get("steps")
        if pre.get("val_ppl_after") is not None:
            out["validation perplexity"] = f"{pre['val_ppl_before']:,.1f} → {pre['val_ppl_after']:,.1f}"
    out["sections"] = len(sections)
    return out
