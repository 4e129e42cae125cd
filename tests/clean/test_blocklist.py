"""URL block list and bad-words filters: shipped lists, matching rules, config and list files."""

from __future__ import annotations

import pytest

from lmforge.clean.filters.blocklist import BadWords, UrlBlocklist
from lmforge.clean.filters.common import builtin_list
from lmforge.errors import ConfigError
from lmforge.pipeline.stage import Keep, run_chain
from lmforge.records import Record


def url_verdict(stage: UrlBlocklist, url: str) -> str:
    v = stage.decide(Record(id="u", text="", url=url))
    return "keep" if isinstance(v, Keep) else v.reason


@pytest.mark.parametrize(("url", "matched"), [
    ("https://www.pornhub.com/view_video.php?viewkey=1", "domain:pornhub.com"),
    ("http://fr.xhamster.com/videos", "domain:xhamster.com"),       # subdomains are blocked too
    ("https://BET365.com./sports", "domain:bet365.com"),            # case and a trailing dot do not hide it
    ("pokerstars.com/poker", "domain:pokerstars.com"),              # no scheme
    ("https://example.com/free-porn-videos", "word:porn"),          # a whole word of the URL
    ("https://example.com/tag/xxx/", "word:xxx"),
    ("https://example.cn/赌场/index.html", "substring:赌场"),
    ("https://example.cn/%E8%B5%8C%E5%9C%BA/index.html", "substring:赌场"),  # percent-encoded
])
def test_blocked_urls(url, matched):
    record = Record(id="u", text="", url=url)
    v = UrlBlocklist().decide(record)
    assert v.reason == "url_blocklist"
    assert record.meta["url_blocklist"]["matched"] == matched


@pytest.mark.parametrize("url", [
    "https://en.wikipedia.org/wiki/Casino_Royale_(novel)",    # gambling words are not on the word list
    "https://example.com/pornography-law-reform",               # a word containing a listed word is not it
    "https://notpornhub.com.example.org/page",                  # only a real parent domain blocks
    "https://example.com/pornhub.com-review",                   # a domain in the path is not the host
    "https://news.example.com.cn/2024/颜色/",
    "http://[::1]:99999/bad-port",                              # malformed: still judged on its words
])
def test_allowed_urls(url):
    assert url_verdict(UrlBlocklist(), url) == "keep"


def test_url_lists_are_configurable(tmp_path):
    listed = tmp_path / "domains.txt"
    listed.write_text("# my list\nexample.net\n\n", encoding="utf-8")
    stage = UrlBlocklist(use_builtin=False, domains_file=str(listed), extra_words=["spam"])
    assert url_verdict(stage, "https://shop.example.net/") == "url_blocklist"
    assert url_verdict(stage, "https://example.org/spam/1") == "url_blocklist"
    assert url_verdict(stage, "https://www.pornhub.com/") == "keep"  # shipped list switched off


def test_missing_url_policy():
    assert url_verdict(UrlBlocklist(), "") == "keep"
    assert url_verdict(UrlBlocklist(missing_url="drop"), "") == "url_missing"


def test_missing_list_file_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="url_blocklist.domains_file"):
        UrlBlocklist(domains_file=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="missing_url"):
        UrlBlocklist(missing_url="maybe")


def bad_verdict(stage: BadWords, text: str, lang: str = "") -> str:
    v = stage.decide(Record(id="b", text=text, lang=lang))
    return "keep" if isinstance(v, Keep) else v.reason


@pytest.mark.parametrize(("text", "lang", "expected"), [
    ("Free porn videos every day.", "", "bad_words"),
    ("FREE PORN VIDEOS.", "", "bad_words"),                         # case-insensitive
    ("Visit Scunthorpe and Essex this summer.", "", "keep"),      # whole words only in English
    ("The pornography law was debated in parliament.", "en", "bad_words"),
    ("这个网站有大量色情内容。", "", "bad_words"),                  # Chinese: substrings
    ("这里提供成人视频下载。", "zh-Hans", "bad_words"),
    ("这是一篇关于颜色和情绪的文章。", "", "keep"),                 # 色 and 情 apart are harmless
    ("今天的天气很好，我们去公园散步。", "", "keep"),
    ("Un article sur la porn industrie.", "fr", "keep"),          # no list for French: kept
])
def test_bad_words_per_language(text, lang, expected):
    assert bad_verdict(BadWords(), text, lang) == expected


def test_bad_words_record_what_matched():
    record = Record(id="b", text="porn and more porn, xxx")
    assert BadWords().decide(record).reason == "bad_words"
    assert record.meta["bad_words"]["matched"] == ["porn", "xxx"]


def test_bad_words_threshold_and_extra_words(tmp_path):
    assert bad_verdict(BadWords(min_matches=2), "Free porn here.") == "keep"
    assert bad_verdict(BadWords(min_matches=2), "Free porn here, more porn there.") == "bad_words"
    assert bad_verdict(BadWords(extra_words={"en": ["durian"]}), "A durian smells strong.") == "bad_words"
    assert bad_verdict(BadWords(extra_words={"fr": ["merde"]}), "Quelle merde !", "fr") == "bad_words"
    own = tmp_path / "en.txt"
    own.write_text("kumquat\n", encoding="utf-8")
    stage = BadWords(files={"en": str(own)})
    assert bad_verdict(stage, "A kumquat is small.") == "bad_words"
    assert bad_verdict(stage, "Free porn here.") == "keep"  # a file replaces the shipped list


def test_bad_words_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="bad_words.files.en"):
        BadWords(files={"en": str(tmp_path / "missing.txt")})
    with pytest.raises(ConfigError, match="min_matches"):
        BadWords(min_matches=0)


def test_odd_language_codes_never_reach_the_file_system():
    assert bad_verdict(BadWords(), "porn", "../../etc") == "keep"


def test_shipped_lists_load():
    for name in ("stop_words/en.txt", "stop_words/zh.txt", "bad_words/en.txt", "bad_words/zh.txt",
                 "url_blocklist/domains.txt", "url_blocklist/words.txt", "url_blocklist/substrings.txt"):
        entries = builtin_list(name)
        assert entries and not any(e.startswith("#") for e in entries), name
    assert builtin_list("stop_words/en.txt") == ("the", "be", "to", "of", "and", "that", "have", "with")


def test_blocklists_run_as_stages():
    records = [Record(id="1", text="A fine article about gardens.", url="https://example.org/garden"),
               Record(id="2", text="A fine article.", url="https://www.xvideos.com/x"),
               Record(id="3", text="Free porn.", url="https://example.org/p")]
    out, stats = run_chain([UrlBlocklist(), BadWords()], records)
    assert [r.id for r in out] == ["1"]
    assert stats[0].dropped == {"url_blocklist": 1} and stats[1].dropped == {"bad_words": 1}
