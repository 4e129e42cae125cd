"""Main-content extraction: real-looking pages in English and Chinese, Markdown, time limit, benchmark floor."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from lmforge.clean.extract import (
    Extract,
    ExtractConfig,
    ExtractTimeout,
    extract_html,
    looks_like_html,
    time_limit,
)
from lmforge.records import Record

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "benchmarks" / "article-extraction"

EN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Harbour bridge reopens after repairs | The Coastal Times</title>
<meta property="og:title" content="Harbour bridge reopens after two years of repairs">
<script>window.dataLayer = [{"page": "article"}]; function track() { return 1; }</script>
<style>.cookie-banner { position: fixed; }</style>
</head>
<body>
<div class="cookie-banner" id="cookie-consent">We use cookies to improve your experience. Accept all cookies?</div>
<header class="site-header"><a href="/">The Coastal Times</a>
  <nav class="main-nav"><ul><li><a href="/news">News</a></li><li><a href="/sport">Sport</a></li>
  <li><a href="/weather">Weather</a></li><li><a href="/opinion">Opinion</a></li></ul></nav></header>
<main id="main">
 <article class="article">
  <h1>Harbour bridge reopens after two years of repairs</h1>
  <div class="byline">By Jane Walker, 3 March 2024</div>
  <div class="share-bar"><a href="#">Share on Facebook</a> <a href="#">Share on X</a></div>
  <div class="article-body">
   <p>The old harbour bridge reopened to traffic on Monday morning, two years after engineers closed it
   because of corroded steel cables that could no longer carry the weight of modern lorries.</p>
   <p>Hundreds of residents walked across the deck before the first cars arrived, and the mayor said the
   town had waited patiently, even though the detour added twenty minutes to every journey to the coast.</p>
   <h2>What changed during the repairs</h2>
   <p>Workers replaced all forty-eight suspension cables, repainted the towers and laid a new surface,
   while divers inspected the foundations, which were found to be in surprisingly good condition.</p>
   <ul><li>Forty-eight new suspension cables made of galvanised steel</li>
       <li>A wider footpath on the seaward side of the deck</li></ul>
   <table><tr><th>Year</th><th>Vehicles per day</th></tr><tr><td>2021</td><td>14,000</td></tr>
          <tr><td>2024</td><td>16,500</td></tr></table>
   <p>The council expects traffic to return to its earlier level within a month, and it plans to review
   the speed limit on the approach roads once the new surface has settled over the coming winter.</p>
  </div>
  <div class="related-articles"><h3>Related stories</h3><ul>
   <li><a href="/a">Council approves budget for coastal road improvements next year</a></li>
   <li><a href="/b">Ferry timetable changes announced for the summer season</a></li></ul></div>
 </article>
 <section class="comments" id="comments"><h3>12 comments</h3>
  <div class="comment"><p>Finally! I have been driving the long way round for two years and it has cost me a fortune
  in fuel, so this is very welcome news for everyone who lives on the peninsula.</p></div>
  <div class="comment"><p>Shame they did not add a cycle lane while they were at it, it would have been the
  perfect opportunity and the cost would have been small compared to the whole project.</p></div>
 </section>
</main>
<aside class="sidebar"><h3>Most read</h3><ol><li><a href="/x">Storm warning for the weekend</a></li>
 <li><a href="/y">Local bakery wins national prize</a></li></ol></aside>
<footer class="site-footer"><p>Copyright 2024 The Coastal Times. All rights reserved. Terms of use and
 privacy policy apply to every page of this website and to all of its newsletters.</p></footer>
</body></html>"""

ZH_PAGE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>城市地铁三号线正式开通运营_新闻中心_示例网</title></head>
<body>
<div id="topbar" class="top-nav"><a href="/">首页</a> | <a href="/news">新闻</a> | <a href="/finance">财经</a> |
 <a href="/sports">体育</a> | <a href="/login">登录</a></div>
<div class="breadcrumb"><a href="/">首页</a> &gt; <a href="/news">新闻中心</a> &gt; 正文</div>
<div class="main-content">
 <h1 class="article-title">城市地铁三号线正式开通运营</h1>
 <div class="article-meta">来源：示例日报　作者：李明　2024年5月1日</div>
 <div class="article-content" id="article">
  <p>五月一日上午九时，本市地铁三号线正式开通运营，全长三十二公里，共设二十四座车站，连接城市东部新区与西部老城区。</p>
  <p>据市轨道交通集团介绍，三号线开通后，东西两区之间的通勤时间将由原来的一个半小时缩短至四十分钟左右，预计日均客流量可达三十万人次。</p>
  <p>开通首日，不少市民专程前来体验。家住东部新区的王女士说，以前每天上班要换乘两次公交车，现在坐地铁直达，方便多了。</p>
  <p>据悉，三号线二期工程已于去年年底开工建设，预计二零二六年建成通车，届时将进一步延伸至城市南部的高铁站。</p>
 </div>
 <div class="share"><a href="#">分享到微博</a> <a href="#">分享到微信</a></div>
 <div class="related"><h3>相关新闻</h3><ul><li><a href="/1">地铁四号线环评公示</a></li>
  <li><a href="/2">公交线路调整方案发布</a></li><li><a href="/3">城市交通年度报告出炉</a></li></ul></div>
 <div id="comment-box" class="comment-list"><p>网友甲：终于等到了，支持！希望以后能多开几条线路，方便大家出行，减少堵车。</p>
  <p>网友乙：票价是多少？有没有学生优惠？希望有关部门能够尽快公布具体的票价方案和优惠政策。</p></div>
</div>
<div class="footer">版权所有 示例网 京ICP备00000000号 联系我们 关于我们 广告服务 网站地图 隐私政策</div>
</body></html>"""


def texts_in(text: str, *needles: str) -> list[bool]:
    return [needle in text for needle in needles]


def test_english_article_kept_boilerplate_removed():
    text, title = extract_html(EN_PAGE, ExtractConfig(include_title=False))
    assert title == "Harbour bridge reopens after two years of repairs"
    assert all(texts_in(text, "reopened to traffic on Monday morning", "Hundreds of residents walked",
                        "What changed during the repairs", "Forty-eight new suspension cables",
                        "return to its earlier level within a month"))
    assert not any(texts_in(text, "cookies", "Share on Facebook", "Related stories", "Ferry timetable",
                            "Finally!", "cycle lane", "Most read", "Copyright", "Sport", "Weather"))
    assert "16,500" in text  # the data table inside the article is kept


def test_chinese_article_kept_boilerplate_removed():
    text, title = extract_html(ZH_PAGE, ExtractConfig(include_title=False))
    assert title == "城市地铁三号线正式开通运营_新闻中心_示例网"
    assert all(texts_in(text, "本市地铁三号线正式开通运营", "缩短至四十分钟左右", "王女士", "延伸至城市南部的高铁站"))
    assert not any(texts_in(text, "分享到微博", "相关新闻", "网友甲", "版权所有", "登录", "财经"))


def test_title_is_first_line_by_default():
    text, title = extract_html(EN_PAGE)
    assert text.split("\n")[0] == title == "Harbour bridge reopens after two years of repairs"


def test_markdown_renders_headings_lists_tables():
    text, _ = extract_html(EN_PAGE, ExtractConfig(markdown=True))
    lines = text.split("\n")
    assert lines[0] == "# Harbour bridge reopens after two years of repairs"
    assert "## What changed during the repairs" in lines
    assert "- Forty-eight new suspension cables made of galvanised steel" in lines
    assert "| Year | Vehicles per day |" in lines
    assert "| --- | --- |" in lines
    assert "| 2024 | 16,500 |" in lines


def test_stage_keeps_title_in_meta_and_drops_empty():
    stage = Extract()
    dropped: list[Record] = []
    stage.bind(dropped.append)
    page = Record(id="a", text=EN_PAGE, provenance={"content_type": "text/html; charset=utf-8"})
    empty = Record(id="b", text="<html><body><div><a href='/'>Home</a></div></body></html>")
    out = list(stage.run([page, empty]))
    assert [r.id for r in out] == ["a"]
    assert out[0].meta["extract"]["title"] == "Harbour bridge reopens after two years of repairs"
    assert out[0].text.startswith("Harbour bridge reopens after two years of repairs\n")
    assert [(r.id, r.meta["drop_reason"], r.meta["drop_stage"]) for r in dropped] == [
        ("b", "extract_empty", "extract")]


def test_non_html_passes_through_unchanged():
    plain = Record(id="p", text="Just a sentence with a < b and c > d.", provenance={"content_type": "text/plain"})
    markup_as_text = Record(id="q", text="<p>declared plain text</p>", provenance={"content_type": "text/plain"})
    undeclared = Record(id="r", text="No markup here at all, only prose about 3 < 4.")
    assert not looks_like_html(plain) and not looks_like_html(markup_as_text) and not looks_like_html(undeclared)
    out = list(Extract().run([plain, markup_as_text, undeclared]))
    assert [(r.id, r.text) for r in out] == [(r.id, r.text) for r in (plain, markup_as_text, undeclared)]
    assert all("extract" not in r.meta for r in out)


@pytest.mark.parametrize("html", [
    "", "<", "<html><body><p>unclosed <b>bold <i>both</p></div></span>",
    "<html><head><title></title></head><body></body></html>", "\x00\x01<div>\ud800</div>", "<" * 10_000,
    "<table><tr><td><table><tr><td>" * 200, "<html><body>" + "<p>" + "x" * 5000,
])
def test_broken_html_never_raises(html):
    text, title = extract_html(html)
    assert isinstance(text, str)
    dropped: list[Record] = []
    out = list(Extract().bind(dropped.append).run([Record(id="x", text=html, provenance={"content_type": "text/html"})]))
    assert len(out) + len(dropped) == 1


def _nested_page(depth: int) -> str:
    paragraph = "<p>Some words of text that make a paragraph long enough to be scored, with commas, here.</p>"
    return "<html><body>" + "<div>" * depth + paragraph * 2000 + "</div>" * depth + "</body></html>"


def test_pathological_page_dropped_with_timeout():
    html = _nested_page(2_000)  # 2,000 paragraphs under 2,000 nested divs: seconds of scoring
    stage = Extract(timeout=0.3, fallback="none")
    dropped: list[Record] = []
    stage.bind(dropped.append)
    started = time.perf_counter()
    out = list(stage.run([Record(id="deep", text=html, provenance={"content_type": "text/html"})]))
    elapsed = time.perf_counter() - started
    assert out == [] and dropped[0].meta["drop_reason"] == "extract_timeout"
    assert elapsed < 1.5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the timer is disarmed afterwards


def test_deeply_nested_page_refused_before_parsing():
    """200,000 nested divs would keep the (uninterruptible) parser busy for over a minute."""
    html = "<html><body>" + "<div>" * 200_000 + "text " * 10 + "</div>" * 200_000 + "</body></html>"
    stage = Extract(timeout=1.0)
    dropped: list[Record] = []
    stage.bind(dropped.append)
    started = time.perf_counter()
    assert list(stage.run([Record(id="deep", text=html)])) == []
    assert time.perf_counter() - started < 1.0
    assert dropped[0].meta["drop_reason"] == "extract_timeout" and dropped[0].meta["extract"]["too_deep"]


def test_time_limit_restores_an_outer_timer():
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with time_limit(0.05) as armed:
            assert armed
            with pytest.raises(ExtractTimeout):
                while True:
                    sum(range(1000))
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 4.0 < remaining <= 5.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []


def test_worker_thread_uses_size_cap():
    """Off the main thread no signal can interrupt extraction: huge pages are given up by size."""
    big = "<html><body>" + "<p>word </p>" * 200_000 + "</body></html>"  # 2.4 M chars
    small = Record(id="s", text=EN_PAGE)
    results: dict[str, object] = {}

    def work():
        stage = Extract(timeout=0.1)  # cap: 0.1 s * 5 M chars/s = 500 k chars
        dropped: list[Record] = []
        stage.bind(dropped.append)
        results["out"] = [r.id for r in stage.run([Record(id="big", text=big), small])]
        results["dropped"] = [(r.id, r.meta["drop_reason"]) for r in dropped]

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert results == {"out": ["s"], "dropped": [("big", "extract_timeout")]}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "benchmarks" / "extract.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_metric_rules():
    bench = _load_benchmark()
    assert bench.page_score("", "") == (1.0, 1.0)
    assert bench.page_score("", "a b") == (0.0, 0.0)
    assert bench.page_score("a a b c", "a b b") == (0.5, 2 / 3)
    result = bench.score({"x": "a b", "y": ""}, {"x": "a b c d", "y": "e"})
    assert (result.precision, result.recall) == (0.5, 0.25)
    assert result.f1 == pytest.approx(1 / 3)


@pytest.mark.skipif(not (SHARED / "ground-truth.json").is_file(), reason="shared benchmark not present")
def test_benchmark_floor_on_ten_pages():
    bench = _load_benchmark()
    pages, truths = bench.load(SHARED)
    keys = sorted(pages)[:10]
    config = ExtractConfig(include_title=False)
    outputs = {key: extract_html(pages[key], config)[0] for key in keys}
    result = bench.score(outputs, {key: truths[key] for key in keys})
    assert result.f1 > 0.95  # measured 0.980 on these ten pages


def _extract_in_worker(html: str) -> tuple[list[str], list[str], float]:
    stage = Extract(timeout=0.3, fallback="none")
    dropped: list[Record] = []
    stage.bind(dropped.append)
    started = time.perf_counter()
    kept = [r.id for r in stage.run([Record(id="w", text=html), Record(id="ok", text=EN_PAGE)])]
    return kept, [r.meta["drop_reason"] for r in dropped], time.perf_counter() - started


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_time_limit_works_in_process_pool_worker():
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        kept, reasons, elapsed = pool.submit(_extract_in_worker, _nested_page(2_000)).result(timeout=60)
    assert kept == ["ok"] and reasons == ["extract_timeout"]
    assert elapsed < 1.5
