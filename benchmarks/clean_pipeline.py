"""Cleaning chain end to end: lmforge against datatrove on the same WARC, one worker each.

Builds a gzipped WARC from the article-extraction pages in ../shared (121 real news and blog
pages, each written COPIES times as near-copies: copies after the first get a different footer
line and URL, so no two records are byte-identical), then runs in this one process

- lmforge: read_warc -> extract -> gopher_repetition -> gopher_quality -> c4 (terminal-punctuation
  line filter off, as FineWeb runs it) -> fineweb -> Parquet, with `run_chain`;
- datatrove: WarcReader -> Trafilatura -> GopherRepetitionFilter -> GopherQualityFilter ->
  C4QualityFilter(filter_no_terminal_punct=False) -> FineWebQualityFilter -> JsonlWriter, with
  LocalPipelineExecutor(tasks=1, workers=1).

Both sides use the same thresholds. Two datatrove settings are aligned with lmforge's, because
otherwise the comparison measures a different chain, not a different implementation:
C4's `min_num_sentences` is 3 (lmforge's default, datatrove's is 5), and trafilatura's
`deduplicate` is off: it keeps a process-wide cache of paragraphs and blanks any paragraph
after its third sighting, so near-copies 4 to 6 lose their text depending on record order.
That is near-duplicate removal, which lmforge does in its dedup stage, not in extraction; pass
--datatrove-defaults to run datatrove exactly as shipped.

Prints documents/s of each chain (wall clock, model and tokenizer loading included, imports not),
how many documents each kept, and how the kept sets compare (by URL). Last line:
`speedup <lmforge docs/s / datatrove docs/s> agreement <|kept both| / |kept either|>`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.clean.extract import Extract
from lmforge.clean.filters.c4 import C4Filter
from lmforge.clean.filters.fineweb import FineWebFilter
from lmforge.clean.filters.gopher import GopherQuality, GopherRepetition
from lmforge.collect.warc import read_warc
from lmforge.pipeline.stage import run_chain
from lmforge.records import read_parquet, write_parquet

log = logging.getLogger("clean_pipeline")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "article-extraction"
COPIES = 6
MIN_SENTENCES = 3


def build_warc(path: Path, copies: int) -> int:
    """Write `copies` near-copies of every page; returns the number of response records."""
    truth = json.loads((SHARED / "ground-truth.json").read_text(encoding="utf-8"))
    pages = sorted((SHARED / "html").glob("*.html.gz"))
    if not pages:
        sys.exit(f"no pages found in {SHARED / 'html'}")
    n = 0
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for copy in range(copies):
            for page in pages:
                key = page.name.split(".")[0]
                body = gzip.decompress(page.read_bytes())
                if copy:
                    footer = f"<footer><p>Mirror copy {copy} of this page.</p></footer></body>".encode()
                    body = body.replace(b"</body>", footer, 1) if b"</body>" in body else body + footer
                url = truth.get(key, {}).get("url") or f"https://example.org/{key}"
                url += ("&" if "?" in url else "?") + f"copy={copy}"
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                        protocol="HTTP/1.1")
                record = writer.create_warc_record(
                    url, "response", payload=io.BytesIO(body), http_headers=http,
                    # datatrove's reader skips responses without an identified payload type
                    warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"},
                )
                writer.write_record(record)
                n += 1
    return n


def run_lmforge(warc: Path, out_dir: Path) -> tuple[float, int, set[str]]:
    """(seconds, documents in, URLs kept)."""
    t0 = time.perf_counter()
    stages = [Extract(), GopherRepetition(), GopherQuality(), C4Filter(filter_no_terminal_punct=False),
              FineWebFilter()]
    source = [0]

    def documents():
        for record in read_warc(warc):
            if record.drop_reason is None:
                source[0] += 1
                yield record

    out, stats = run_chain(stages, documents())
    shard = out_dir / "shard-00000.parquet"
    write_parquet(shard, out)
    seconds = time.perf_counter() - t0
    for st in stats:
        log.info("lmforge %-18s in %4d out %4d %6.2f s dropped %s", st.name, st.records_in, st.records_out,
                 st.seconds, dict(st.dropped))
    return seconds, source[0], {r.url for r in read_parquet(shard)}


def run_datatrove(warc: Path, out_dir: Path, defaults: bool) -> tuple[float, int, set[str]]:
    """(seconds, documents in, URLs kept)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from loguru import logger

    logger.remove()
    t0 = time.perf_counter()
    c4 = {"filter_no_terminal_punct": False} if defaults else {
        "filter_no_terminal_punct": False, "min_num_sentences": MIN_SENTENCES}
    executor = LocalPipelineExecutor(
        pipeline=[
            WarcReader(str(warc.parent), glob_pattern=warc.name),
            Trafilatura() if defaults else Trafilatura(deduplicate=False),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(**c4),
            FineWebQualityFilter(),
            JsonlWriter(str(out_dir / "out"), compression=None),
        ],
        tasks=1, workers=1, logging_dir=str(out_dir / "logs"), skip_completed=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # each task re-adds a loguru sink on sys.stderr at INFO: send that chatter to a file
    with open(out_dir / "datatrove.log", "w", encoding="utf-8") as chatter, contextlib.redirect_stderr(chatter):
        stats = executor.run()
    seconds = time.perf_counter() - t0
    n_in = -1
    for i, step in enumerate(stats.stats):
        counts = {k: getattr(v, "total", v) for k, v in step.stats.items()
                  if k in ("documents", "total", "forwarded") or k.startswith("dropped_")}
        log.info("datatrove %-22s %6.2f s %s", step.name, step.time_stats.total, counts)
        if i == 0:
            n_in = int(counts.get("documents", -1))
    kept = set()
    for path in sorted((out_dir / "out").glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            kept.update(json.loads(line)["metadata"]["url"] for line in fh if line.strip())
    return seconds, n_in, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=COPIES, help="near-copies of each page")
    parser.add_argument("--datatrove-defaults", action="store_true",
                        help="run datatrove as shipped (trafilatura dedup on, C4 needs 5 sentences)")
    args = parser.parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # it reports every odd page at ERROR
    try:
        import datatrove  # noqa: F401
        import spacy  # noqa: F401 - datatrove's English word tokenizer
    except ImportError as exc:
        sys.exit(f"datatrove side needs {exc.name}: pip install -e '.[bench]'")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        warc_dir = tmp_dir / "warc"
        warc_dir.mkdir()
        warc = warc_dir / "pages.warc.gz"
        n = build_warc(warc, args.copies)
        log.info("WARC: %d responses (%d copies of %d pages), %.1f MB", n, args.copies, n // args.copies,
                 warc.stat().st_size / 1e6)
        t_lmf, in_lmf, kept_lmf = run_lmforge(warc, tmp_dir / "lmforge")
        t_dt, in_dt, kept_dt = run_datatrove(warc, tmp_dir / "datatrove", args.datatrove_defaults)

    rate_lmf, rate_dt = in_lmf / t_lmf, in_dt / t_dt
    both, either = kept_lmf & kept_dt, kept_lmf | kept_dt
    jaccard = len(both) / len(either) if either else 1.0
    same_decision = (n - len(either - both)) / n
    print(f"{'chain':<12}{'docs in':>10}{'kept':>8}{'seconds':>10}{'docs/s':>10}")
    print(f"{'lmforge':<12}{in_lmf:>10}{len(kept_lmf):>8}{t_lmf:>10.2f}{rate_lmf:>10.1f}")
    print(f"{'datatrove':<12}{in_dt:>10}{len(kept_dt):>8}{t_dt:>10.2f}{rate_dt:>10.1f}")
    print(f"kept by both {len(both)}, only lmforge {len(kept_lmf - kept_dt)}, only datatrove {len(kept_dt - kept_lmf)}")
    print(f"jaccard of kept sets {jaccard:.3f}; same keep/drop decision on {same_decision:.3f} of documents")
    print(f"speedup {rate_lmf / rate_dt:.3f} agreement {jaccard:.3f}")


if __name__ == "__main__":
    main()
