"""Hostile servers and links against the crawler: byte-dripping servers and scope-dodging URLs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_limits import run_json

from lmforge.collect.crawl import CrawlConfig, crawl, iter_crawl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))
import crawl_site as cs  # noqa: E402

DEADLINE = 2.0
SLACK = 3.0  # process start-up, robots.txt, the index page, scheduling on a busy machine


def drip(seconds: int = 90) -> Iterator[bytes]:
    """One byte a second: every socket read succeeds well within any per-read timeout."""
    yield b"<html><body><p>"
    for _ in range(seconds):
        time.sleep(1)
        yield b"x"


def crawl_in_child(config: dict, work: Path, timeout: float = 60) -> tuple[dict, list, float]:
    code = (
        "import json\n"
        "from dataclasses import asdict\n"
        "from pathlib import Path\n"
        "from lmforge.collect.crawl import CrawlConfig, crawl, iter_crawl\n"
        f"cfg = CrawlConfig(**json.loads({json.dumps(json.dumps(config))}))\n"
        f"work = Path({str(work)!r})\n"
        "summary = crawl(cfg, work)\n"
        "recs = [[r.url, r.drop_reason, r.meta.get('error')] for r in iter_crawl(cfg, work, work)]\n"
        "print(json.dumps([asdict(summary), recs]))\n"
    )
    (summary, records), _, seconds = run_json(code, timeout=timeout)
    return summary, records, seconds


def test_a_dripping_server_cannot_hold_a_request_past_the_deadline(tmp_path):
    def routes(base: str) -> dict:
        return {"/robots.txt": cs.Response(b"", 404, "text/plain"),
                "/": cs.Response(cs.html("Index", ["Slow pages."], ["/drip/0", "/drip/1", "/drip/2", "/ok"])),
                **{f"/drip/{i}": cs.Response(drip, content_length=False) for i in range(3)},
                "/ok": cs.Response(cs.html("OK", ["An ordinary page."]))}

    with cs.SiteServer(routes) as server:
        config = {"seeds": [server.url("/")], "timeout": DEADLINE, "retries": 0, "delay": 0,
                  "concurrency": 4, "per_host_concurrency": 4}
        summary, records, _ = crawl_in_child(config, tmp_path / "work")
    by_path = {u.removeprefix(server.base): (r, e) for u, r, e in records}
    assert by_path["/ok"] == (None, None)
    for i in range(3):
        reason, error = by_path[f"/drip/{i}"]
        assert reason == "timeout" and "2" in error
    assert summary["skipped"] == {"timeout": 3} and summary["fetched"] == 2
    assert summary["seconds"] <= DEADLINE + SLACK  # the three drips run side by side, each cut at the deadline


def test_retries_are_within_the_bound_too(tmp_path):
    """Each attempt has its own deadline: attempts x deadline + backoff bounds a page."""
    def routes(base: str) -> dict:
        return {"/robots.txt": cs.Response(b"", 404, "text/plain"),
                "/": cs.Response(drip, content_length=False)}

    with cs.SiteServer(routes) as server:
        config = {"seeds": [server.url("/")], "timeout": 1.0, "retries": 2, "backoff": 0.1, "delay": 0}
        summary, records, _ = crawl_in_child(config, tmp_path / "work")
        assert server.site.counts()["/"] == 3
    assert [r for _, r, _ in records] == ["timeout"]
    assert summary["seconds"] <= 3 * 1.0 + 0.1 + 0.2 + SLACK


def test_a_dripping_robots_txt_gives_up_and_keeps_off_the_host(tmp_path):
    def routes(base: str) -> dict:
        return {"/robots.txt": cs.Response(drip, content_type="text/plain", content_length=False),
                "/": cs.Response(cs.html("Index", ["never fetched"]))}

    with cs.SiteServer(routes) as server:
        config = {"seeds": [server.url("/")], "timeout": DEADLINE, "retries": 0, "delay": 0}
        summary, records, _ = crawl_in_child(config, tmp_path / "work")
        assert "/" not in server.site.counts()
    assert [r for _, r, _ in records] == ["robots_unavailable"]
    assert summary["seconds"] <= DEADLINE + SLACK


def test_timeout_is_documented_as_the_total_deadline():
    description = CrawlConfig.model_fields["timeout"].description or ""
    assert "total" in description and "request" in description


# --------------------------------------------------------------------------- scope


def two_sites(external_base: str):
    def build(base: str) -> dict:
        host = base.removeprefix("http://")
        links = [f"{external_base}/landing?ref={host}", f"{external_base}/allowed/page", "/allowed/ok", "/other"]
        return {"/robots.txt": cs.Response(b"", 404, "text/plain"),
                "/": cs.Response(cs.html("Index", ["Links to another host."], links)),
                "/allowed/ok": cs.Response(cs.html("OK", ["In scope."])),
                "/other": cs.Response(cs.html("Other", ["Not matched by include."]))}

    return build


@pytest.mark.parametrize(("include", "expected"), [
    # the seed's host, found by re.search in the other host's query string
    ([r"127\.0\.0\.1:{port}"], ["/", "/allowed/ok", "/other"]),
    # a path pattern that also matches a path on the other host
    ([r"/allowed/", r"/$"], ["/", "/allowed/ok"]),
])
def test_include_patterns_never_leave_the_allowed_hosts(tmp_path, include, expected):
    with cs.SiteServer({}) as external, cs.SiteServer(two_sites(external.base)) as server:
        patterns = [p.format(port=server.port) for p in include]
        config = CrawlConfig(seeds=[server.url("/")], include=patterns, delay=0, retries=0, timeout=5)
        summary = crawl(config, tmp_path)
        assert external.site.snapshot() == []
        assert summary.links_ignored.get("out_of_scope", 0) >= 2
        fetched = sorted(r.url.removeprefix(server.base) for r in iter_crawl(config, tmp_path, tmp_path)
                         if r.drop_reason is None)
    assert fetched == expected


def test_patterns_see_scheme_host_and_path_only():
    from lmforge.collect.crawl import CrawlScope

    config = CrawlConfig(seeds=["http://allowed.example/"], include=[r"allowed\.example", r"^http://[^/]+/docs/"],
                         exclude=[r"/private/", r"token"], allowed_hosts=["Docs.Example"])
    scope = CrawlScope(config)
    assert scope.allows("http://allowed.example/a?ref=x")
    assert not scope.allows("http://other.example/?ref=allowed.example")
    assert not scope.allows("http://other.example/docs/")  # off the allowed hosts, whatever matches
    assert scope.allows("http://docs.example/docs/intro")  # an extra allowed host
    assert not scope.allows("http://docs.example/intro")  # an allowed host, but no include pattern matches
    assert not scope.allows("http://allowed.example/private/x")
    assert scope.allows("http://allowed.example/page?token=1")  # the query is not matched
