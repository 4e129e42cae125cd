"""lmforge.lang: script counts, the Chinese rule, sentences, and jieba loaded once per process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge import lang
from lmforge.lang import cjk_lang, is_chinese, is_cjk, script_counts, sentences

# Letters of every script the rule looks at, digits, spaces and the punctuation sentences end at.
ALPHABET = st.sampled_from(list(
    "abcXYZ019 \t\n.,!?;:'\"()…。！？，；：“”‘’「」『』）"
    "中文字國語言〇𠀀ひらがなカタカナー・한국어"
))
TEXTS = st.text(ALPHABET, max_size=300)


@given(TEXTS, TEXTS)
def test_script_counts_add_up_and_the_share_is_a_fraction(a, b):
    assert script_counts(a) + script_counts(b) == script_counts(a + b)
    for text in (a, b, a + b):
        assert 0.0 <= lang.cjk_share(text) <= 1.0
    whole, left, right = script_counts(a + b), script_counts(a), script_counts(b)
    if whole.nonspace:  # the share of a concatenation is the mean of the parts' shares, weighted by size
        mixed = (left.cjk_share * left.nonspace + right.cjk_share * right.nonspace) / whole.nonspace
        assert whole.cjk_share == pytest.approx(mixed)


def test_script_counts_tell_the_scripts_apart():
    assert script_counts("中文 ひらがな 한국어 abc。") == (2, 4, 3, 13)
    assert script_counts("〇𠀀") == (2, 0, 0, 2)  # the ideographic zero and Extension B are Han
    assert script_counts("・") == (0, 0, 0, 1)  # the middle dot Chinese uses between names is not kana
    assert lang.cjk_share("   ") == 0.0


@pytest.mark.parametrize(("text", "expected"), [
    ("我们今天去北京看了很多地方，晚上回家。", "zh"),  # simplified
    ("我們今天去臺灣看了很多地方，晚上回家。", "zh"),  # traditional
    ("今日は東京に行って、たくさんの場所を見ました。", "ja"),  # kana make it Japanese
    ("東京都知事選挙の結果が発表された", "ja"),  # mostly kanji: five kana in sixteen are enough
    ("The quick brown fox jumps over the lazy dog.", None),
    ("The city of 北京 is large and very old.", None),  # a Chinese name in English
    ("我们使用 PyTorch 和 TensorFlow 训练模型。", "zh"),  # English terms in Chinese
    ("한국어는 띄어쓰기를 합니다.", None),  # hangul is written with spaces
    ("", None),
])
def test_the_chinese_rule_on_known_samples(text, expected):
    assert cjk_lang(text) == expected
    assert is_chinese(text) == (expected == "zh")
    assert is_cjk(text) == (expected is not None)


def test_a_lang_hint_decides_alone():
    assert cjk_lang("English text", "zh-Hant") == "zh" and cjk_lang("English text", "yue") == "zh"
    assert cjk_lang("中文的句子。", "en") is None
    assert cjk_lang("中文的句子。", "ja") == "ja" and not is_chinese("中文的句子。", "ja_JP")
    assert cjk_lang("中文的句子。", "") == "zh"  # an empty hint is no hint


def test_only_the_first_2000_characters_decide():
    assert is_chinese("中" * 1000 + "x" * 5000)
    assert not is_cjk("x" * 2000 + "中" * 5000)


# --------------------------------------------------------------------------- sentences


@given(TEXTS)
def test_splitting_keeps_every_non_space_character(text):
    parts = sentences(text)
    assert all(p and p == p.strip() for p in parts)
    assert "".join("".join(p.split()) for p in parts) == "".join(text.split())


NUMBERS = st.one_of(
    st.builds("{}.{}".format, st.integers(0, 10**6), st.integers(0, 10**6)),  # 3.14
    st.builds("{:,}.{}".format, st.integers(1000, 10**9), st.integers(0, 99)),  # 1,000.5
    st.builds("v{}.{}".format, st.integers(0, 99), st.integers(0, 99)),  # v2.0
)
WORDS = st.sampled_from(["The price is", "it rose to", "价格是", "增长了", "Version", "He said!", "好。"])


@given(WORDS, NUMBERS, WORDS)
@settings(max_examples=200)
def test_numbers_are_never_split(before, number, after):
    for text in (f"{before} {number} {after}", f"{before}{number}{after}", f"{number}. {after}"):
        assert any(number in s for s in sentences(text)), (text, sentences(text))


def test_sentences_in_both_languages():
    text = "The value 3.14 is pi. See os.path.join for more!\n新年好。你去哪里？“好的！”他说…… Done"
    assert sentences(text) == ["The value 3.14 is pi.", "See os.path.join for more!", "新年好。", "你去哪里？",
                               "“好的！”", "他说……", "Done"]
    assert sentences("Version 3.5 of the U.S. report, e.g. the appendix, came out. Dr. Smith paid $1,000.5 "
                     'for v2.0. He said "Stop." Then he left') == [
        "Version 3.5 of the U.S. report, e.g. the appendix, came out.", "Dr. Smith paid $1,000.5 for v2.0.",
        'He said "Stop."', "Then he left"]
    assert sentences("价格是3.5元。太好了!我们走吧「真的？」他问。") == ["价格是3.5元。", "太好了!", "我们走吧「真的？」", "他问。"]
    assert sentences("  \n ") == []


# --------------------------------------------------------------------------- jieba

needs_jieba = pytest.mark.skipif(importlib.util.find_spec("jieba") is None, reason="needs jieba")

_ONE_PROCESS = textwrap.dedent("""
    import multiprocessing, threading
    import jieba
    from lmforge import lang

    def child(queue):
        queue.put((lang.cut("我爱北京天安门"), lang.jieba_loads))

    # a thread holds jieba's lock while the process forks, as a load in progress would
    held, release = threading.Event(), threading.Event()
    def hold():
        with jieba.dt.lock:
            held.set()
            release.wait()
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    early = ctx.Process(target=child, args=(queue,), daemon=True)
    early.start()
    early.join(60)
    if early.is_alive():  # hung on the inherited lock
        early.kill()
    print("early", early.exitcode, queue.get(timeout=5) if early.exitcode == 0 else None)
    release.set()
    holder.join()

    threads = [threading.Thread(target=lang.words, args=("今天天气很好",)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("words", lang.words("今天天气很好，我们去公园。"), lang.words("It's a fine day."))
    print("loads", lang.jieba_loads)
    late = ctx.Process(target=child, args=(queue,))
    late.start()
    late.join(60)
    print("late", late.exitcode, queue.get(timeout=5))
""")


@needs_jieba
def test_jieba_loads_once_per_process_and_works_after_fork():
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _ONE_PROCESS], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # a child forked while the parent's lock was held loads its own dictionary instead of hanging
    assert lines[0] == "early 0 (['我', '爱', '北京', '天安门'], 1)"
    assert lines[1] == """words ['今天天气', '很', '好', '我们', '去', '公园'] ["It's", 'a', 'fine', 'day']"""
    assert lines[2] == "loads 1"  # five threads, several calls: one load
    assert lines[3] == "late 0 (['我', '爱', '北京', '天安门'], 1)"  # a later child reuses the parent's dictionary


@needs_jieba
def test_jieba_options():
    assert lang.cut("他来到了网易杭研大厦", hmm=True) != lang.cut("他来到了网易杭研大厦", hmm=False)
    text = "北京大学的学生"
    spans = lang.word_spans(text)
    assert "".join(w for w, _, _ in spans) == text and all(text[s:e] == w for w, s, e in spans)
    assert lang.pos_tags()["北京"] == "ns"
