import itertools

import pytest

from lmforge.collect.builtin import BuiltinConfig, builtin_records
from lmforge.collect.encoding import decode_bytes, detect_encoding, looks_binary
from lmforge.collect.html import declared_charset, decode_html, header_charset

SIMPLIFIED = "这是一个简体中文的测试文件，包含常用汉字。人民日报报道了新年讲话。"
TRADITIONAL = "中華民國憲法第一條規定，臺北市是臺灣的首都，這家餐廳的服務態度很好。"
RARE = "GB18030 覆盖了罕见字𠀀、𪚥和欧元符号€。"


@pytest.mark.parametrize("length", [2, 4, 8, 16, None])
@pytest.mark.parametrize(("text", "codec"), [(SIMPLIFIED, "gbk"), (SIMPLIFIED, "gb2312"), (TRADITIONAL, "big5"),
                                             (RARE, "gb18030"), (SIMPLIFIED + "mixed English", "utf-8"),
                                             (TRADITIONAL, "utf-8-sig"), (SIMPLIFIED, "utf-16")])
def test_short_and_long_chinese_decode_exactly(text, codec, length):
    piece = text[:length] if length else text
    data = piece.encode(codec)
    decoded = decode_bytes(data)
    assert decoded is not None and decoded[0] == piece


def test_real_corpus_lines_in_gbk_decode_exactly():
    docs = itertools.islice(builtin_records(BuiltinConfig(corpora=["peoples_daily", "reviews"])), 600)
    wrong = [d.text for d in docs if decode_bytes(d.text.encode("gb18030"))[0] != d.text]
    assert wrong == []


def test_declared_charset_wins_and_aliases_to_supersets():
    data = "中文的测试，欢迎。".encode("gbk")
    assert detect_encoding(data, declared="gb2312") == "gb18030"
    assert detect_encoding("臺灣".encode("big5"), declared="big5") == "big5hkscs"
    # a wrong declaration on valid UTF-8 (common server misconfiguration) is overridden
    assert detect_encoding("中文".encode(), declared="iso-8859-1") == "utf-8"


def test_western_text_and_binary():
    assert decode_bytes("Café déjà vu, naïve façade".encode("cp1252")) == ("Café déjà vu, naïve façade", "cp1252")
    assert looks_binary(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert decode_bytes(bytes(range(256)) * 4) is None
    assert decode_bytes("日本語のテキストです".encode("shift_jis")) is None  # not guessed into mojibake


def test_html_charset_sources():
    page = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=GBK"></head><body>中文网页</body>'
    data = page.encode("gbk")
    assert declared_charset(data) == "GBK"
    assert header_charset('text/html; charset="big5"') == "big5"
    assert decode_html(data, "text/html")[0] == page
    assert decode_html('<meta charset="utf-8"><p>你好</p>'.encode(), None)[0].endswith("你好</p>")
