"""Main-content extraction: lmforge's `extract_html` against plain trafilatura, on one core.

Usage: `python benchmarks/extract.py [DIR]`, DIR defaulting to ../shared/benchmarks/article-extraction
(any folder with `html/<key>.html.gz` and `ground-truth.json` of the same layout works).

The metric is the one ../shared/README.md describes: whitespace tokens, multiset overlap,
precision and recall per page (an empty extraction has precision 1 only when the truth is empty),
both averaged over pages, F1 of the averages. lmforge runs without the title line, as the
ground truth is the article body alone. Every extractor runs in this one process, one after
another, on pages already decompressed in memory, so pages/s measures extraction alone.
Last line: `f1 <lmforge F1> speedup <lmforge pages/s / trafilatura pages/s>`.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "article-extraction"

log = logging.getLogger("benchmarks.extract")


@dataclass
class Score:
    precision: float
    recall: float
    pages_per_s: float = 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def page_score(extracted: str, truth: str) -> tuple[float, float]:
    """Precision and recall of one page on whitespace tokens, counting repeated tokens (multisets)."""
    got, want = extracted.split(), truth.split()
    if not got:
        empty_ok = 1.0 if not want else 0.0
        return empty_ok, empty_ok
    overlap = sum((Counter(got) & Counter(want)).values())
    return overlap / len(got), (overlap / len(want) if want else 1.0)


def score(extractions: dict[str, str], truths: dict[str, str]) -> Score:
    """Average precision and recall over every page of the ground truth (a missing page is empty)."""
    pairs = [page_score(extractions.get(key) or "", truth) for key, truth in truths.items()]
    n = len(pairs) or 1
    return Score(sum(p for p, _ in pairs) / n, sum(r for _, r in pairs) / n)


def load(directory: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Pages (key -> HTML) and truths (key -> article body)."""
    truth_file = directory / "ground-truth.json"
    if not truth_file.is_file():
        sys.exit(f"no ground-truth.json in {directory}")
    truths = {key: item.get("articleBody") or "" for key, item in json.loads(truth_file.read_text("utf-8")).items()}
    pages = {}
    for path in sorted((directory / "html").glob("*.html.gz")):
        key = path.name[: -len(".html.gz")]
        if key in truths:
            pages[key] = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    if not pages:
        sys.exit(f"no pages with ground truth in {directory / 'html'}")
    return pages, {key: truths[key] for key in pages}


def timed(extract: Callable[[str], str], pages: dict[str, str]) -> tuple[dict[str, str], float]:
    """Extractions and pages/s for one extractor (best of the two passes, after a warm-up page)."""
    extract(next(iter(pages.values())))
    best = float("inf")
    outputs: dict[str, str] = {}
    for _ in range(2):
        gc.collect()
        started = time.perf_counter()
        outputs = {key: extract(html) or "" for key, html in pages.items()}
        best = min(best, time.perf_counter() - started)
    return outputs, len(pages) / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR,
                        help="pages and ground truth in the article-extraction layout (default: %(default)s)")
    directory = parser.parse_args(argv).directory
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if hasattr(os, "sched_setaffinity"):  # one core, as the goal is stated
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import trafilatura

    from lmforge.clean.extract import ExtractConfig, extract_html

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    pages, truths = load(directory)
    config = ExtractConfig(include_title=False)
    extractors: dict[str, Callable[[str], str]] = {
        "lmforge": lambda html: extract_html(html, config)[0],
        "trafilatura": lambda html: trafilatura.extract(html),
        "trafilatura favor_precision": lambda html: trafilatura.extract(html, favor_precision=True),
    }
    results = {}
    for name, extract in extractors.items():
        outputs, speed = timed(extract, pages)
        results[name] = score(outputs, truths)
        results[name].pages_per_s = speed
    log.info("%d pages from %s, one core, trafilatura %s", len(pages), directory, trafilatura.__version__)
    log.info("%-30s %9s %9s %9s %9s", "extractor", "precision", "recall", "F1", "pages/s")
    for name, result in results.items():
        log.info("%-30s %9.3f %9.3f %9.3f %9.1f", name, result.precision, result.recall, result.f1,
                 result.pages_per_s)
    ours, baseline = results["lmforge"], results["trafilatura"]
    print(f"f1 {ours.f1:.3f} speedup {ours.pages_per_s / baseline.pages_per_s:.3f}")


if __name__ == "__main__":
    main()
