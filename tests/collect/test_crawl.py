"""The crawler against a generated site on 127.0.0.1: politeness measured on the server side."""

from __future__ import annotations

import gzip
import sqlite3
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from warcio.archiveiterator import ArchiveIterator

from lmforge.collect import crawl_frontier
from lmforge.collect.crawl import CrawlConfig, crawl, iter_crawl
from lmforge.collect.crawl_frontier import normalize_url
from lmforge.collect.html import decode_html
from lmforge.config import validate
from lmforge.errors import ConfigError
from lmforge.records import make_id

sys.path.insert(0, str(Path(__file__).parent))
import crawl_site as cs  # noqa: E402

FAST = dict(delay=0.05, concurrency=4, per_host_concurrency=2, max_bytes=200_000, retries=1, backoff=0.05,
            timeout=10)
FETCHED = {"/", *(f"/page/{i}" for i in range(cs.N_PAGES)), "/redirect/final", "/gbk/header", "/gbk/meta",
           "/slow/0", "/slow/1", "/slow/2", "/links", "/dup?a=1&b=2", "/flaky", "/deep/1", "/deep/2", "/deep/3",
           "/alt/3", "/alt/hidden", "/text.txt"}
DROPPED = {"/huge": "too_large", "/huge-cl": "too_large", "/files/data.bin": "content_type",
           "/files/image.png": "content_type", "/loop/a": "redirect_loop", "/missing": "http_404",
           "/error500": "http_500", "/private/secret.html": "robots_disallowed",
           "/private/other.html": "robots_disallowed", "/redirect/private": "robots_disallowed",
           "/redirect/out": "redirect_out_of_scope", "/chain/0": "too_many_redirects"}
# Requested but neither kept nor dropped under their own URL: robots.txt, redirect hops.
OTHER_REQUESTS = {"/robots.txt", "/loop/b", "/redirect/start", "/redirect/middle", *(f"/chain/{k}" for k in range(1, 6))}
NEVER = {"/private/secret.html", "/private/other.html", "/private/hop.html", "/hidden", "/deep/4", "/chain/6"}


@pytest.fixture
def quick_gil():
    """The site runs in the test's process: a short GIL switch interval keeps its timestamps accurate."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    """One full crawl of the demo site, shared by the tests that inspect its outcome."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        with cs.SiteServer({}) as external, cs.SiteServer(cs.demo_site(external.base)) as server:
            config = CrawlConfig(seeds=[server.url("/")], **FAST)
            work = tmp_path_factory.mktemp("crawl")
            summary = crawl(config, work)
            hits = server.site.snapshot()
            records = list(iter_crawl(config, work, work))
            yield SimpleNamespace(server=server, external=external, config=config, work=work, summary=summary,
                                  hits=hits, records=records, hits_after=server.site.snapshot())
    finally:
        sys.setswitchinterval(old)


def by_url(records, server):
    return {r.url.removeprefix(server.base): r for r in records}


def warc_responses(work: Path) -> list[tuple[str, object]]:
    out = []
    for path in sorted((work / "warc").glob("*.warc.gz")):
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh, check_digests="raise"):
                if rec.rec_type == "response":
                    out.append((rec.rec_headers.get_header("WARC-Target-URI"), rec))
                    rec.content_stream().read()
    return out


# --------------------------------------------------------------------------- the full crawl


def test_every_allowed_page_is_fetched_exactly_once(crawled):
    counts = Counter(h.path for h in crawled.hits)
    assert set(counts) == (FETCHED | set(DROPPED) | OTHER_REQUESTS) - NEVER
    retried = {"/flaky": 2, "/error500": 2}  # one retry each (retries=1): a 503, then a 200 / a 500 again
    assert {p: n for p, n in counts.items() if n != 1} == retried
    assert {h.user_agent for h in crawled.hits} == {crawled.config.user_agent}
    flaky = sorted(h.start for h in crawled.hits if h.path == "/flaky")
    assert flaky[1] - flaky[0] >= crawled.config.backoff
    assert crawled.summary.fetched == len(FETCHED)
    assert crawled.summary.requests == len(crawled.hits)


def test_robots_txt_is_obeyed_and_fetched_once(crawled):
    paths = [h.path for h in crawled.hits]
    assert not [p for p in paths if p.startswith("/private/")]
    assert paths.count("/robots.txt") == 1
    assert paths[0] == "/robots.txt"
    records = by_url(crawled.records, crawled.server)
    for path in ("/private/secret.html", "/private/other.html", "/redirect/private"):
        assert records[path].meta["drop_reason"] == "robots_disallowed"
    assert crawled.summary.skipped["robots_disallowed"] == 3
    assert records["/redirect/private"].meta["final_url"] == crawled.server.url("/private/hop.html")


# The crawler spaces the moments request headers go out; the server stamps a request when its
# handler thread runs, a few ms later, and on a busy machine some stamps are later than others.
JITTER = 0.01


def test_requests_to_the_host_are_spaced_by_the_delay(crawled):
    starts = sorted(h.start for h in crawled.hits)
    gaps = sorted(b - a for a, b in zip(starts, starts[1:], strict=False))
    assert len(gaps) > 40
    assert gaps[0] >= crawled.config.delay - JITTER, gaps[:5]
    assert gaps[len(gaps) // 2] >= crawled.config.delay  # the typical gap is the full delay


def test_requests_in_flight_per_host_stay_within_the_limit(crawled):
    # the 0.3 s slow pages overlap with later requests, so the limit is actually reached
    assert crawled.server.site.max_in_flight == crawled.config.per_host_concurrency == 2


def test_bad_pages_are_quarantined_with_their_reason(crawled):
    records = by_url(crawled.records, crawled.server)
    for path, reason in DROPPED.items():
        rec = records[path]
        assert rec.meta["drop_reason"] == reason, path
        assert rec.meta["drop_stage"] == "input" and rec.text == ""
    huge = records["/huge"]
    assert crawled.config.max_bytes < huge.meta["bytes_read"] <= crawled.config.max_bytes + 64 * 1024
    sent = next(h.sent for h in crawled.hits if h.path == "/huge")
    assert sent < cs.HUGE_BYTES // 2  # the crawler hung up early; the server could not push it all
    assert records["/huge-cl"].meta["bytes_read"] == 0  # refused on its Content-Length alone
    assert records["/files/image.png"].provenance["content_type"] == "image/png"
    assert records["/missing"].provenance["http_status"] == 404
    assert crawled.summary.skipped == dict(sorted(Counter(DROPPED.values()).items()))


def test_links_out_of_scope_are_never_followed(crawled):
    assert crawled.external.site.snapshot() == []  # neither its link nor a redirect to it was followed
    assert crawled.summary.links_ignored == {"bad_scheme": 4, "max_depth": 1, "out_of_scope": 1}
    paths = {h.path for h in crawled.hits}
    assert "/deep/4" not in paths  # max_depth=3: / is depth 0, /deep/3 depth 3
    assert "/dup?b=2&a=1" not in paths  # the same page as /dup?a=1&b=2


def test_redirects_and_canonicals(crawled):
    records = by_url(crawled.records, crawled.server)
    assert "/redirect/start" not in records and records["/redirect/final"].text.count("redirect chain") == 1
    assert "/hidden" not in {h.path for h in crawled.hits}  # a canonical is never fetched just for being named
    page3 = make_id("crawl", crawled.server.url("/page/3"))
    pair = [r for r in crawled.records if r.url.endswith(("/page/3", "/alt/3"))]
    assert len(pair) == 2 and [r.id for r in pair if not r.drop_reason] == [page3]
    assert [r.meta["drop_reason"] for r in pair if r.drop_reason] == ["duplicate_canonical"]
    kept = [r.id for r in crawled.records if not r.drop_reason]
    assert len(kept) == len(set(kept)) == len(FETCHED) - 1


def test_gbk_pages_decode_exactly(crawled):
    records = by_url(crawled.records, crawled.server)
    for path in ("/gbk/header", "/gbk/meta"):
        assert f"<p>{cs.GBK_TEXT}</p>" in records[path].text
        assert records[path].provenance["encoding"] == "gb18030"


def test_records_carry_text_and_provenance(crawled):
    records = crawled.records
    # pages in WARC order first, then the pages dropped during the crawl, sorted by URL
    n_warc = sum(1 for r in records if "warc_file" in r.provenance)
    assert all("warc_file" in r.provenance for r in records[:n_warc])
    dropped = records[n_warc:]
    assert [r.url for r in dropped] == sorted(crawled.server.url(p) for p in DROPPED)
    page = by_url(records, crawled.server)["/page/7"]
    en, zh = cs.page_text(7)
    assert en in page.text and zh in page.text
    assert page.source == "crawl" and page.id == make_id("crawl", page.url)
    prov = page.provenance
    assert set(prov) == {"fetched_at", "content_type", "encoding", "http_status", "warc_file", "warc_offset", "depth"}
    assert prov["http_status"] == 200 and prov["depth"] == 1 and prov["encoding"] == "utf-8"
    assert datetime.fromisoformat(prov["fetched_at"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert (crawled.work / prov["warc_file"]).exists()
    text = by_url(records, crawled.server)["/text.txt"]
    assert text.text == f"{cs.EN[1]}\n{cs.ZH[1]}\n"


def test_warc_files_are_valid(crawled):
    responses = warc_responses(crawled.work)
    urls = [u for u, _ in responses]
    assert sorted(urls) == sorted(crawled.server.url(p) for p in FETCHED)
    for _, rec in responses:
        assert rec.http_headers.get_statuscode() == "200"
        assert rec.rec_headers.get_header("WARC-Date")
    with open(crawled.work / "warc" / "crawl-00000.warc.gz", "rb") as fh:
        assert next(iter(ArchiveIterator(fh))).rec_type == "warcinfo"


def test_a_finished_crawl_makes_no_requests(crawled):
    assert crawled.hits_after == crawled.hits  # iter_crawl after crawl
    before = len(crawled.server.site.snapshot())
    again = crawl(crawled.config, crawled.work)
    records = list(iter_crawl(crawled.config, crawled.work, crawled.work))
    assert len(crawled.server.site.snapshot()) == before
    assert again.requests == 0 and again.fetched == crawled.summary.fetched
    assert [r.to_dict() for r in records] == [r.to_dict() for r in crawled.records]


# --------------------------------------------------------------------------- smaller crawls


def page_hits(server) -> Counter[str]:
    return Counter(h.path for h in server.site.snapshot() if h.path != "/robots.txt")


def test_max_pages_stops_and_a_bigger_budget_continues(tmp_path):
    with cs.SiteServer(cs.flat_site(20, 0)) as server:
        config = CrawlConfig(seeds=[server.url("/")], **{**FAST, "delay": 0.01}, max_pages=5)
        summary = crawl(config, tmp_path)
        assert sum(page_hits(server).values()) == summary.fetched == 5 and summary.queued > 0
        summary = crawl(config.model_copy(update={"max_pages": 8}), tmp_path)
        hits = page_hits(server)
        assert sum(hits.values()) == summary.fetched == 8 and set(hits.values()) == {1}


def test_max_depth_is_honoured(tmp_path):
    with cs.SiteServer(cs.demo_site("http://localhost:9")) as server:
        config = CrawlConfig(seeds=[server.url("/deep/1")], **{**FAST, "delay": 0.01}, max_depth=2)
        crawl(config, tmp_path)
        assert page_hits(server) == {"/deep/1": 1, "/deep/2": 1, "/deep/3": 1}


def test_robots_crawl_delay_raises_the_delay(tmp_path, quick_gil):
    robots = "User-agent: *\nCrawl-delay: 0.25\nDisallow: /private/\n"
    with cs.SiteServer(cs.demo_site("http://localhost:9", robots)) as server:
        config = CrawlConfig(seeds=[server.url("/deep/1")], **{**FAST, "delay": 0.01}, max_depth=2)
        crawl(config, tmp_path)
        starts = sorted(h.start for h in server.site.snapshot())
        assert len(starts) == 4
        assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.25 - JITTER


def test_robots_group_for_our_agent_wins(tmp_path):
    robots = "User-agent: *\nDisallow: /\n\nUser-agent: lmforge-crawler\nDisallow: /deep/3\n"
    with cs.SiteServer(cs.demo_site("http://localhost:9", robots)) as server:
        config = CrawlConfig(seeds=[server.url("/deep/1")], **{**FAST, "delay": 0.01})
        summary = crawl(config, tmp_path)
        assert page_hits(server) == {"/deep/1": 1, "/deep/2": 1}
        assert summary.skipped == {"robots_disallowed": 1}


def test_robots_5xx_keeps_the_crawler_off_the_host(tmp_path):
    def routes(base):
        site = cs.demo_site("http://localhost:9")(base)
        site["/robots.txt"] = cs.Response(b"down", 503, "text/plain")
        return site

    with cs.SiteServer(routes) as server:
        config = CrawlConfig(seeds=[server.url("/"), server.url("/page/1")], **{**FAST, "delay": 0.01})
        summary = crawl(config, tmp_path)
        assert page_hits(server) == {} and server.site.counts()["/robots.txt"] == 2  # retries=1
        assert summary.skipped == {"robots_unavailable": 2}
        reasons = {r.meta["drop_reason"] for r in iter_crawl(config, tmp_path, tmp_path)}
        assert reasons == {"robots_unavailable"}


def test_missing_robots_allows_everything(tmp_path):
    def routes(base):
        site = cs.demo_site("http://localhost:9")(base)
        del site["/robots.txt"]
        return site

    with cs.SiteServer(routes) as server:
        config = CrawlConfig(seeds=[server.url("/private/secret.html")], **{**FAST, "delay": 0.01})
        assert crawl(config, tmp_path).fetched == 1
        assert page_hits(server) == {"/private/secret.html": 1}


def test_include_and_exclude_patterns(tmp_path):
    with cs.SiteServer(cs.demo_site("http://localhost:9")) as server:
        config = CrawlConfig(seeds=[server.url("/")], **{**FAST, "delay": 0.01}, max_depth=1,
                             include=[r"/page/\d+$", r"/$"], exclude=[r"/page/\d*[13579]$"])
        crawl(config, tmp_path)
        assert set(page_hits(server)) == {"/", *(f"/page/{i}" for i in range(0, cs.N_PAGES, 2))}


def test_a_crash_between_warc_and_commit_loses_nothing(tmp_path, monkeypatch, caplog):
    """The WARC record is written but the frontier never hears of it: the next run must not refetch."""
    calls = {"n": 0}
    real = crawl_frontier.Frontier.record_fetched

    def crashing(self, page, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(self, page, *args, **kwargs)

    with cs.SiteServer(cs.flat_site(8, 0)) as server:
        config = CrawlConfig(seeds=[server.url("/")], **{**FAST, "delay": 0.01, "concurrency": 1,
                                                           "per_host_concurrency": 1})
        monkeypatch.setattr(crawl_frontier.Frontier, "record_fetched", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            crawl(config, tmp_path)
        monkeypatch.setattr(crawl_frontier.Frontier, "record_fetched", real)
        assert sum(page_hits(server).values()) == 4
        with caplog.at_level("INFO", logger="lmforge.collect.crawl"):
            summary = crawl(config, tmp_path)
        assert any("recovered" in m for m in caplog.messages)
        assert summary.fetched == 9 and set(page_hits(server).values()) == {1}
        urls = [u for u, _ in warc_responses(tmp_path)]
        assert len(urls) == len(set(urls)) == 9


def test_a_torn_warc_tail_is_cut_off(tmp_path):
    with cs.SiteServer(cs.flat_site(8, 0)) as server:
        config = CrawlConfig(seeds=[server.url("/")], **{**FAST, "delay": 0.01}, max_pages=3)
        crawl(config, tmp_path)
        warc = tmp_path / "warc" / "crawl-00000.warc.gz"
        good = warc.stat().st_size
        torn = gzip.compress(b"WARC/1.1\r\nWARC-Type: response\r\n" + b"z" * 5000)
        with open(warc, "ab") as fh:
            fh.write(torn[: len(torn) // 2])
        summary = crawl(config.model_copy(update={"max_pages": 6}), tmp_path)
        assert summary.fetched == 6 and set(page_hits(server).values()) == {1}
        assert warc.stat().st_size > good
        urls = [u for u, _ in warc_responses(tmp_path)]  # reads cleanly past the old tail
        assert len(urls) == len(set(urls)) == 6
        db = sqlite3.connect(tmp_path / "frontier.sqlite")
        assert db.execute("SELECT committed FROM warc_files").fetchone()[0] == warc.stat().st_size


def test_retry_after_is_respected_when_short(tmp_path):
    def routes(base):
        def limited(previous: int) -> cs.Response:
            if previous == 0:
                return cs.Response(b"slow down", 429, "text/plain", headers={"Retry-After": "1"})
            return cs.Response(cs.html("Limited", ["Served after waiting."]))

        return {"/robots.txt": cs.Response(b"", 404, "text/plain"),
                "/": cs.Response(cs.html("Index", ["Two rate-limited pages."], ["/limited", "/banned"])),
                "/limited": limited,
                "/banned": cs.Response(b"go away", 429, "text/plain", headers={"Retry-After": "3600"})}

    with cs.SiteServer(routes) as server:
        config = CrawlConfig(seeds=[server.url("/")], **{**FAST, "delay": 0.01, "backoff": 0.01, "retries": 2})
        summary = crawl(config, tmp_path)
        starts = sorted(h.start for h in server.site.snapshot() if h.path == "/limited")
        assert len(starts) == 2 and starts[1] - starts[0] >= 1.0 - JITTER
        assert page_hits(server)["/banned"] == 1  # an hour's wait is not worth stalling for: dropped at once
        assert summary.fetched == 2 and summary.skipped == {"http_429": 1}


def test_warc_files_rotate_by_size(tmp_path):
    with cs.SiteServer(cs.flat_site(8, 0)) as server:
        config = CrawlConfig(seeds=[server.url("/")], **{**FAST, "delay": 0.01}, warc_max_bytes=1500)
        crawl(config, tmp_path)
        files = sorted((tmp_path / "warc").glob("*.warc.gz"))
        assert len(files) >= 3 and files[0].name == "crawl-00000.warc.gz"
        urls = [u for u, _ in warc_responses(tmp_path)]
        assert len(urls) == len(set(urls)) == 9
        records = list(iter_crawl(config, tmp_path, tmp_path))
        assert len(records) == 9 and len({r.provenance["warc_file"] for r in records}) == len(files)


# --------------------------------------------------------------------------- units


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"seeds\[0\]: must be an http"):
        validate(CrawlConfig, {"seeds": ["ftp://example.com/file"]})
    with pytest.raises(ConfigError, match=r"delay: .*greater than or equal to 0"):
        validate(CrawlConfig, {"seeds": ["https://example.com"], "delay": -1})
    with pytest.raises(ConfigError, match=r"include\[0\]: pattern .* is not a valid regular expression"):
        validate(CrawlConfig, {"seeds": ["https://example.com"], "include": ["("]})
    with pytest.raises(ConfigError, match=r"seeds: "):
        validate(CrawlConfig, {"seeds": []})
    with pytest.raises(ConfigError, match=r"max_pagez: unknown key"):
        validate(CrawlConfig, {"seeds": ["https://example.com"], "max_pagez": 3})


@pytest.mark.parametrize(("url", "expected"), [
    ("HTTP://Example.COM:80/a/../b/./c?b=2&a=1#frag", "http://example.com/b/c?a=1&b=2"),
    ("https://example.com:443", "https://example.com/"),
    ("https://example.com:8443/x/", "https://example.com:8443/x/"),
    ("http://例子.中国/路径?q=中文", "http://xn--fsqu00a.xn--fiqs8s/%E8%B7%AF%E5%BE%84?q=%E4%B8%AD%E6%96%87"),
    ("http://example.com/%7euser/%2f", "http://example.com/~user/%2F"),
    ("http://user:pw@example.com/", "http://example.com/"),
    ("ftp://example.com/", None),
    ("mailto:a@b.c", None),
    ("http:///nohost", None),
    ("http://example.com:99999/", None),
])
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


def test_decode_html_sources_in_order():
    zh = "你好，世界！这是中文网页。" * 3
    gbk = zh.encode("gbk")
    assert decode_html(gbk, "text/html; charset=gb2312") == (zh, "gb18030")
    assert decode_html(b'<meta http-equiv="Content-Type" content="text/html; charset=GBK">' + gbk, None)[1] == "gb18030"
    assert decode_html(zh.encode(), "text/html; charset=gbk") == (zh, "utf-8")  # a wrong label is not trusted
    assert decode_html(b"\xef\xbb\xbfhello", "text/html; charset=gbk") == ("hello", "utf-8-sig")
    assert decode_html("café".encode("latin-1"), "text/html; charset=iso-8859-1") == ("café", "cp1252")
    assert decode_html("café 中文".encode(), "text/html; charset=iso-8859-1") == ("café 中文", "utf-8")
    assert decode_html(b"", None) == ("", "utf-8")
    text, enc = decode_html(("<p>" + "我们的语言模型需要大量干净的中文文本数据。" * 20 + "</p>").encode("gb18030"), "text/html")
    assert enc == "gb18030" and "干净的中文文本" in text
