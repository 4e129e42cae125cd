"""WARC reading: lmforge's reader (records with decoded text) against warcio's plain iterator.

Builds a gzipped WARC from the article-extraction pages in ../shared (121 real pages, repeated
to get a few thousand responses), then reads it with both, best of three runs each.
Last line: `overhead <lmforge seconds / warcio seconds - 1>` (negative means lmforge is faster).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tempfile
import time
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.collect.warc import read_warc

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "article-extraction" / "html"
COPIES = 20


def build_warc(path: Path) -> int:
    pages = [gzip.decompress(p.read_bytes()) for p in sorted(SHARED.glob("*.html.gz"))]
    if not pages:
        sys.exit(f"no pages found in {SHARED}")
    n = 0
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for copy in range(COPIES):
            for i, body in enumerate(pages):
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
                record = writer.create_warc_record(f"https://example.org/{copy}/{i}", "response",
                                                   payload=io.BytesIO(body), http_headers=headers)
                writer.write_record(record)
                n += 1
    return n


def warcio_plain(path: Path) -> tuple[int, int]:
    count = size = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            if record.rec_type == "response":
                size += len(record.content_stream().read())
                count += 1
    return count, size


def lmforge_records(path: Path) -> tuple[int, int]:
    count = size = 0
    for record in read_warc(path):
        if record.drop_reason is None:
            count += 1
            size += len(record.text)
    return count, size


def best_of(fn, path: Path, runs: int = 3) -> tuple[float, tuple[int, int]]:
    best, result = float("inf"), (0, 0)
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn(path)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.warc.gz"
        n = build_warc(path)
        mb = path.stat().st_size / 1e6
        t_warcio, (c1, _) = best_of(warcio_plain, path)
        t_lmf, (c2, chars) = best_of(lmforge_records, path)
    assert c1 == c2 == n, (c1, c2, n)
    print(f"WARC: {n} responses, {mb:.1f} MB gzipped ({COPIES} copies of {n // COPIES} pages)")
    print(f"{'reader':<40}{'seconds':>10}{'records/s':>12}")
    print(f"{'warcio ArchiveIterator (bytes only)':<40}{t_warcio:>10.3f}{n / t_warcio:>12.0f}")
    print(f"{'lmforge read_warc (records, decoded)':<40}{t_lmf:>10.3f}{n / t_lmf:>12.0f}")
    print(f"decoded characters: {chars:,}")
    print(f"overhead {t_lmf / t_warcio - 1:.3f}")


if __name__ == "__main__":
    main()
