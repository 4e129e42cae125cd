import pytest

from lmforge.clean import basic
from lmforge.clean.normalize import BoilerplateLines, Normalize, boilerplate_patterns
from lmforge.collect.builtin import corpus_records
from lmforge.errors import ConfigError
from lmforge.pipeline import run_chain
from lmforge.records import Record


def test_normalize_is_one_stage_reachable_from_basic():
    assert basic.Normalize is Normalize and Normalize.name == "normalize"


@pytest.mark.parametrize(("broken", "fixed"), [
    ("你好，世界".encode().decode("latin-1"), "你好，世界"),  # UTF-8 read as Latin-1, C1 bytes and all
    ("ä½\xa0å¥½ï¼Œä¸–ç•Œ", "你好，世界"),  # UTF-8 read as Windows-1252
    ("The Mona Lisa doesnâ€™t have eyebrows.", "The Mona Lisa doesn’t have eyebrows."),
    ("cafÃ© crÃ¨me", "café crème"),
])
def test_mojibake_is_repaired_before_controls_are_removed(broken, fixed):
    assert Normalize().normalize(broken) == fixed
    assert Normalize(fix_mojibake=False).normalize(broken) != fixed


def test_clean_text_is_not_mistaken_for_mojibake_and_normalizing_twice_changes_nothing():
    n, no_ftfy = Normalize(), Normalize(fix_mojibake=False)
    records = [*corpus_records("peoples_daily", 100), *corpus_records("reviews", 100), *corpus_records("python_docs", 100)]
    for record in records:
        once = n.normalize(record.text)
        assert once == no_ftfy.normalize(record.text)
        assert n.normalize(once) == once


def test_width_forms_and_punctuation():
    n = Normalize()
    assert n.normalize("ＧＤＰ增长９．８％，“很好”！ｶﾀｶﾅ｡") == "GDP增长9.8%，“很好”！カタカナ。"
    assert n.normalize("等等……（完）ﬁne") == "等等……（完）fine"
    assert Normalize(cjk_punctuation="normalize").normalize("你好，世界！") == "你好,世界!"
    full = Normalize(cjk_punctuation="fullwidth")
    assert full.normalize("你好,世界!今天是星期五.版本3.5,网址中国.com") == "你好，世界！今天是星期五。版本3.5，网址中国.com"
    assert full.normalize("Hello, world! Version 3.5.") == "Hello, world! Version 3.5."


def test_controls_zero_width_and_line_breaks():
    n = Normalize()
    assert n.normalize("a\x00b\u200bc\ufeffd\u00ade\u200ef\u202eg") == "abcdefg"
    assert n.normalize("第一行\r\n第二行\rthird\x0cfourth\u2028fifth\u2029sixth") == \
        "第一行\n第二行\nthird\nfourth\nfifth\nsixth"
    # a lone C1 character is far more often Windows-1252 read as Latin-1 than a real control
    assert n.normalize("wait\x85 what") == "wait… what"
    assert Normalize(fix_mojibake=False).normalize("line\x85next") == "line\nnext"
    # joiners are noise between ASCII or CJK, but shape emoji and Persian words
    assert n.normalize("a\u200db 中\u200c文") == "ab 中文"
    assert n.normalize("👩\u200d💻 می\u200cخواهم") == "👩\u200d💻 می\u200cخواهم"
    assert n.normalize("  多个   空格\t\t和\u3000全角空格  \n\n\n\n下一段 ") == "多个 空格 和 全角空格\n\n下一段"
    raw = Normalize(collapse_whitespace=False, line_breaks=False, remove_invisible=False)
    assert raw.normalize("a\u200b  b\r\n") == "a\u200b  b\r\n"


def test_traditional_simplified_conversion_is_optional():
    text = "這是一個繁體中文的軟體測試。"
    assert Normalize().normalize(text) == text
    assert Normalize(chinese="simplified").normalize(text) == "这是一个繁体中文的软体测试。"
    assert Normalize(chinese="traditional").normalize("这是简体中文") == "這是簡體中文"


def test_lowercase_and_stopword_removal_keep_negations():
    en = Normalize(lowercase=True, remove_stopwords=True)
    assert en.normalize("The cat sat on the mat, and it was NOT happy.") == "cat sat mat, not happy."
    zh = Normalize(remove_stopwords=True)
    assert zh.normalize("我的书在桌子上，但是它不是你的。") == "书桌子上，不是。"
    extra = Normalize(remove_stopwords=True, extra_stopwords=["Python"])
    assert extra.normalize("I wrote it in Python") == "wrote"
    assert Normalize().normalize("The cat") == "The cat"  # off by default


def test_stage_rewrites_records():
    out, _ = run_chain([Normalize()], [Record(id="1", text="ＡＢＣ\u200b，好 "), Record(id="2", text="plain")])
    assert [r.text for r in out] == ["ABC，好", "plain"]


PAGE = """Skip to main content
Home | About us | Contact | Privacy Policy
We use cookies to improve your experience. By continuing you agree to our use of cookies.
The article starts here and explains why cookies in the kitchen should cool before storing.
Share this article
Facebook Twitter LinkedIn Email
分享到：微信 微博 QQ空间
免费注册 网站导航 宾馆索引 服务说明 关于携程 诚聘英才 代理合作 广告业务 联系我们
正文内容在这里，讲的是共享经济和分享的意义。
版权所有 © 2024 某某网 京ICP备12345678号
Copyright © 2024 Example Inc. All rights reserved.
上一篇：某某新闻
Read more"""


def test_boilerplate_lines_removed_and_counted_by_kind():
    stage = BoilerplateLines()
    text, kinds = stage.clean(PAGE)
    assert text == ("The article starts here and explains why cookies in the kitchen should cool before storing.\n"
                    "正文内容在这里，讲的是共享经济和分享的意义。")
    assert kinds == {"nav": 5, "cookie": 1, "share": 3, "legal": 2}
    (record,) = run_chain([stage], [Record(id="1", text=PAGE)])[0]
    assert record.meta["boilerplate_lines"] == {"removed": 11, "kinds": kinds}


def test_boilerplate_keeps_long_lines_and_clean_records_untouched():
    stage = BoilerplateLines(max_line_chars=40)
    long_banner = "We use cookies to improve your experience on this site and to show you relevant ads."
    assert stage.clean(long_banner) == (long_banner, {})
    record = stage.apply(Record(id="1", text="Just content.\nMore content."))
    assert record.text == "Just content.\nMore content." and "boilerplate_lines" not in record.meta


def test_boilerplate_on_real_review_footer():
    footers = [r for r in corpus_records("reviews", 5000) if r.text.startswith("免费注册 网站导航")]
    assert footers
    out = list(run_chain([BoilerplateLines(languages=["zh"])], footers)[0])
    assert all(r.text == "" and r.meta["boilerplate_lines"]["kinds"] == {"nav": 1} for r in out)


def test_boilerplate_config():
    custom = BoilerplateLines(languages=[], extra_patterns=[r"-- ?sent from my \w+"])
    assert custom.clean("Hello\n-- Sent from my iPhone") == ("Hello", {"custom": 1})
    assert all(kind and pattern for kind, pattern in boilerplate_patterns("en") + boilerplate_patterns("zh"))
    with pytest.raises(ConfigError, match="boilerplate_lines.extra_patterns: pattern .* is not a valid regular expression"):
        BoilerplateLines(extra_patterns=["(unclosed"])
    with pytest.raises(ConfigError, match="boilerplate_lines.languages: no pattern list for 'xx'"):
        BoilerplateLines(languages=["xx"])
    with pytest.raises(ConfigError, match="normalize.chinese: must be one of"):
        Normalize(chinese="hk")
