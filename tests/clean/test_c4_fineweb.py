"""C4 and FineWeb filters: hand-made English and Chinese documents on both sides of every threshold.

C4 rewrites the text (bad lines go, the page stays), so its tests check the text that is left.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmforge.clean.filters.c4 import C4Filter
from lmforge.clean.filters.common import count_sentences
from lmforge.clean.filters.fineweb import FineWebFilter
from lmforge.pipeline.stage import Keep, run_chain
from lmforge.records import Record

sys.path.insert(0, str(Path(__file__).parent))
from filter_texts import EN, LANGS, PROSE, WORD, repeated, verdict  # noqa: E402

# --------------------------------------------------------------------------- C4


def c4_text(stage: C4Filter, text: str, lang: str = "") -> tuple[str, str]:
    record = Record(id="c", text=text, lang=lang)
    v = stage.decide(record)
    return ("keep" if isinstance(v, Keep) else v.reason), record.text


@pytest.mark.parametrize(("lang", "bad_line"), [
    ("en", "Share this article"),                 # no terminal punctuation
    ("en", "Read more about it..."),             # an ellipsis is no terminal punctuation
    ("en", "Two words."),                         # fewer than three words
    ("en", "Please enable JavaScript to view the comments."),
    ("en", "This site uses cookies to improve your experience."),
    ("en", "Read our Privacy Policy for details."),
    ("zh", "分享到微信"),                          # no terminal punctuation
    ("zh", "你好。"),                              # one jieba word
    ("zh", "请启用JavaScript以查看评论。"),
    ("zh", "请阅读我们的隐私政策了解详情。"),
])
def test_c4_removes_bad_lines_and_keeps_the_rest(lang, bad_line):
    s = PROSE[lang]
    text = "\n".join([s[0], bad_line, s[1], s[2]])
    verdict_, new_text = c4_text(C4Filter(), text)
    assert verdict_ == "keep"
    assert new_text == "\n".join([s[0], s[1], s[2]])


def test_c4_accepts_chinese_sentence_endings():
    lines = ["我们今天学习了很多东西；", "他说：“明天再来吧。”", "事情就是这样……", "车站附近一家安静的咖啡馆一直营业到深夜！"]
    assert c4_text(C4Filter(), "\n".join(lines)) == ("keep", "\n".join(lines))


def test_c4_keeps_lines_without_punctuation_when_that_rule_is_off():
    text = "\n".join([EN[0], "Share this article with friends", EN[1], EN[2]])
    assert c4_text(C4Filter(filter_no_terminal_punct=False), text) == ("keep", text)


def test_c4_removes_citation_marks_and_long_words():
    long_word = "x" * 1001
    text = "\n".join([EN[0] + "[1]", f"A line with {long_word} inside.", EN[1] + "[citation needed]", EN[2]])
    verdict_, new_text = c4_text(C4Filter(), text)
    assert verdict_ == "keep"
    assert new_text == "\n".join(EN[:3])
    kept_long = f"A line with {'x' * 1000} inside."
    assert c4_text(C4Filter(), "\n".join([kept_long, *EN[:2]]))[1].startswith(kept_long)


def test_c4_records_removed_lines():
    record = Record(id="c", text="\n".join([EN[0], "Menu", EN[1], "Home", EN[2]]))
    C4Filter().decide(record)
    assert record.meta["c4"] == {"lines_removed": 2}


@pytest.mark.parametrize(("lang", "line", "reason"), [
    ("en", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_lorem_ipsum"),
    ("en", "The template prints {name} for each reader.", "c4_curly_bracket"),
    ("zh", "模板会为每位读者打印{name}这个变量。", "c4_curly_bracket"),
])
def test_c4_drops_pages_with_placeholder_text_or_code(lang, line, reason):
    text = "\n".join([*PROSE[lang][:4], line])
    assert c4_text(C4Filter(), text)[0] == reason


def test_c4_page_rules_only_look_at_lines_that_survive():
    text = "\n".join([*EN[:4], "{ }"])  # the brace line has too few words: removed, not fatal
    assert c4_text(C4Filter(), text) == ("keep", "\n".join(EN[:4]))


@pytest.mark.parametrize(("lang", "three", "two"), [
    ("en", "The rain stopped. The sun came out. We went for a walk.", "The rain stopped. The sun came out."),
    ("zh", "雨停了。太阳出来了。我们去散步。", "雨停了。太阳出来了。"),
])
def test_c4_minimum_sentences(lang, three, two):
    assert c4_text(C4Filter(), three)[0] == "keep"
    assert c4_text(C4Filter(), two)[0] == "c4_too_few_sentences"


def test_sentence_count_ignores_marks_inside_tokens():
    assert count_sentences("Version 3.5 of the U.S. report, e.g. the appendix, came out.") == 1
    assert count_sentences("Prof. Smith spoke. Then “we left.” Done") == 3
    assert count_sentences("第一句。第二句！第三句？") == 3


# --------------------------------------------------------------------------- FineWeb

FW_OFF = {"line_punct_thr": 0.0, "short_line_thr": 1.0, "char_duplicates_ratio": 1.0, "new_line_ratio": 1e9}


def fineweb_only(field: str) -> FineWebFilter:
    return FineWebFilter({**FW_OFF, field: getattr(FineWebFilter().config, field)})


@pytest.mark.parametrize("lang", LANGS)
def test_lines_ending_in_punctuation(lang):
    s = PROSE[lang]
    bare = [line[:-1] for line in (s * 3)[:25]]
    stage = fineweb_only("line_punct_thr")
    keep = list(s[:3]) + bare[3:25]  # 3 of 25 = 0.12
    drop = list(s[:2]) + bare[2:25]  # 2 of 25 = 0.08
    assert verdict(stage, "\n".join(keep)) == "keep"
    assert verdict(stage, "\n".join(drop)) == "fineweb_line_punct_ratio"


def test_chinese_line_endings_count_as_punctuation():
    stage = fineweb_only("line_punct_thr")
    text = "\n".join(["他说：“明天再来吧。”", "事情就是这样……", "我们今天学习了很多东西；", "分享到微信"] * 2)
    assert verdict(stage, text) == "keep"
    assert verdict(stage, text, lang="en") == "fineweb_line_punct_ratio"  # none ends in . ! ? for English


@pytest.mark.parametrize(("lang", "short"), [("en", "Short line of text, 27 char"), ("zh", "这是一个短行。")])
def test_short_lines(lang, short):
    long = PROSE[lang][0]
    stage = fineweb_only("short_line_thr")
    assert verdict(stage, "\n".join([short, short, long])) == "keep"  # 2 of 3 = 0.667
    assert verdict(stage, "\n".join([short, short, short, long])) == "fineweb_short_line_ratio"  # 0.75


def test_short_line_length_is_per_language():
    stage = fineweb_only("short_line_thr")
    lines = ["这一行有十一个汉字在这里。", "这一行也有十一个汉字的。", "第三行同样有十一个汉字。"]
    assert all(len(line) > 10 for line in lines)
    assert verdict(stage, "\n".join(lines)) == "keep"  # long for Chinese (> 10 characters)
    assert verdict(stage, "\n".join(lines), lang="en") == "fineweb_short_line_ratio"  # short for English (<= 30)


@pytest.mark.parametrize("lang", LANGS)
def test_duplicated_line_characters(lang):
    unit = "一" if lang == "zh" else "a"
    lines = [f"{i:02d}" + unit * 198 for i in range(10)]  # ten distinct lines of 200 characters
    stage = fineweb_only("char_duplicates_ratio")
    dup20, dup22 = unit * 20, unit * 22
    assert verdict(stage, "\n".join([*lines, dup20, dup20])) == "keep"  # 20 / 2040 = 0.0098
    assert verdict(stage, "\n".join([*lines, dup22, dup22])) == "fineweb_char_dup_ratio"  # 22 / 2044 = 0.0108


@pytest.mark.parametrize("lang", LANGS)
def test_newlines_per_word(lang):
    w = WORD[lang]
    stage = fineweb_only("new_line_ratio")
    keep = "\n".join([repeated(w, 4)] * 7)  # 6 newlines / 28 words = 0.21
    drop = "\n".join([repeated(w, 3)] * 10)  # 9 newlines / 30 words = 0.30 is allowed ...
    drop2 = "\n".join([repeated(w, 2)] * 10)  # ... 9 / 20 = 0.45 is not
    assert verdict(stage, keep) == "keep"
    assert verdict(stage, drop) == "keep"
    assert verdict(stage, drop2) == "fineweb_list_ratio"


def test_fineweb_drops_blank_documents():
    assert verdict(FineWebFilter(), " \n\n ") == "fineweb_empty"


def test_c4_rewrite_is_what_fineweb_measures():
    # after C4 removes the short menu lines, FineWeb must see the cleaned text (no stale analysis)
    menu = ["Home", "News", "Sport", "Weather", "Contact"] * 3
    text = "\n".join([*menu, *EN[:4]])
    stages = [C4Filter(), FineWebFilter()]
    out, stats = run_chain(stages, [Record(id="m", text=text)])
    assert [r.text for r in out] == ["\n".join(EN[:4])]
    assert verdict(FineWebFilter(), text) == "fineweb_short_line_ratio"
