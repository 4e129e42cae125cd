import pytest

from lmforge.clean.pii import PiiConfig, PiiRedact, luhn, redact, valid_bank_card, valid_cn_id
from lmforge.errors import ConfigError
from lmforge.pipeline import run_chain
from lmforge.records import Record

# (text, expected redacted text, counts)
POSITIVES = [
    ("联系邮箱：zhang.san@example.com。", "联系邮箱：<EMAIL>。", {"email": 1}),
    ("Mail john_doe+news@mail.co.uk or ops@lab-1.example.org!", "Mail <EMAIL> or <EMAIL>!", {"email": 2}),
    ("电话13812345678", "电话<PHONE>", {"phone": 1}),
    ("手机：+86 138-1234-5678，欢迎来电", "手机：<PHONE>，欢迎来电", {"phone": 1}),
    ("请拨 0086 139 1234 5678", "请拨 <PHONE>", {"phone": 1}),
    ("(+86)15912345678", "<PHONE>", {"phone": 1}),
    ("客服热线 010-12345678 转 8001", "客服热线 <PHONE> 转 8001", {"phone": 1}),
    ("深圳办公室 (0755) 8888 8888", "深圳办公室 <PHONE>", {"phone": 1}),
    ("Call (415) 555-2671 now, or 415-555-2671.", "Call <PHONE> now, or <PHONE>.", {"phone": 2}),
    ("London: +44 20 7946 0958", "London: <PHONE>", {"phone": 1}),
    ("US office +1 (415) 555-2671", "US office <PHONE>", {"phone": 1}),
    ("服务器IP是192.168.1.10。", "服务器IP是<IP>。", {"ip": 1}),
    ("ping 8.8.8.8.", "ping <IP>.", {"ip": 1}),
    ("address 2001:db8::8a2e:370:7334 is v6", "address <IP> is v6", {"ip": 1}),
    ("link-local fe80::1ff:fe23:4567:890a, mapped ::ffff:192.0.2.128", "link-local <IP>, mapped <IP>", {"ip": 2}),
    ("身份证号11010519491231002X", "身份证号<CN_ID>", {"cn_id": 1}),
    ("身份证 440304 19900307 123X 已登记", "身份证 <CN_ID> 已登记", {"cn_id": 1}),
    ("ID 510107200012310011.", "ID <CN_ID>.", {"cn_id": 1}),
    ("卡号6222 0212 3456 7890 128", "卡号<BANK_CARD>", {"bank_card": 1}),
    ("银行卡：6217000001234567891", "银行卡：<BANK_CARD>", {"bank_card": 1}),
    ("Visa test card 4111 1111 1111 1111 expires", "Visa test card <BANK_CARD> expires", {"bank_card": 1}),
    ("MC 5500-0000-0000-0004", "MC <BANK_CARD>", {"bank_card": 1}),
    ("Amex 3782 822463 10005", "Amex <BANK_CARD>", {"bank_card": 1}),
    ("东券要的加qq 673946022", "东券要的加qq <QQ>", {"qq": 1}),
    ("QQ号：12345678", "QQ号：<QQ>", {"qq": 1}),
]

# Ordinary numbers that must survive untouched.
NEGATIVES = [
    "会议定于2024-01-15召开，2024年1月15日报到。",
    "Deadline 2024/01/15 12:30:45, or 15.01.2024 at 08:30.",
    "比分 3:2，画面比例 16:9，时间 23:59:59。",
    "价格 ¥1,299.00，优惠后 12999 元；US$1299.99.",
    "Python 3.12.1 and version 1.2.3.4 and v10.0.0.1 and build 2.0.0.1",
    "1998年，我国经济增长8.8%，物价涨幅回落到0.8%。",
    "订单号 6222021234567890127 已发货",  # fails Luhn
    "Order 1234567812345678 shipped",  # starts with 1: no card network
    "编号 110105194912310021 不是有效身份证",  # wrong check character
    "编号 110105194913310028",  # no 13th month
    "ISBN 978-7-111-12345-6, ISBN 9787111123456, ISBN 0-306-40615-2",
    "Timestamp 1705312345 and 1705312345678 ms.",
    "邮编100871，第12345678号文件，共12345678901人次",
    "MAC 00:1A:2B:3C:4D:5E; C++ std::vector; IPv4 999.1.1.1; section 1.2.3",
    "Write to user@localhost or @someone on the forum.",
    "金额 13,812,345,678 元",
    "tracking 0000 0000 0000 0000 and 4444444444444444",
    "The Luhn-valid 18-digit 622202123456789013 is neither card length nor ID.",
]


@pytest.mark.parametrize(("text", "expected", "counts"), POSITIVES)
def test_redacts_each_kind_with_typed_placeholders(text, expected, counts):
    assert redact(text) == (expected, counts)


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_numbers_dates_and_versions_are_kept(text):
    assert redact(text) == (text, {})


def test_validators():
    assert valid_cn_id("11010519491231002X") and valid_cn_id("11010519491231002x")
    assert not valid_cn_id("110105194912310021")  # check character
    assert not valid_cn_id("110105299912310021")  # born in the future
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert valid_bank_card("6222 0212 3456 7890 128") and not valid_bank_card("1234567812345670")


def test_mixed_document_counts_every_kind_once_and_keeps_the_rest():
    text = ("张先生，手机13812345678，邮箱zhang@example.cn，身份证11010519491231002X，"
            "工资卡6217000001234567891，服务器10.0.0.8。2024年1月15日入职，月薪12000元。")
    out, counts = redact(text)
    assert counts == {"phone": 1, "email": 1, "cn_id": 1, "bank_card": 1, "ip": 1}
    assert out == ("张先生，手机<PHONE>，邮箱<EMAIL>，身份证<CN_ID>，工资卡<BANK_CARD>，服务器<IP>。"
                   "2024年1月15日入职，月薪12000元。")


def test_an_email_wins_over_the_phone_number_inside_it():
    assert redact("13812345678@163.com") == ("<EMAIL>", {"email": 1})


def test_config_chooses_kinds_placeholders_and_phone_styles():
    text = "Tel 13812345678, 010-12345678, +44 20 7946 0958, mail a@b.io"
    assert redact(text, {"kinds": ["email"]}) == ("Tel 13812345678, 010-12345678, +44 20 7946 0958, mail <EMAIL>",
                                                  {"email": 1})
    out, counts = redact(text, PiiConfig(landlines=False, international=False, placeholders={"phone": "[TEL]"}))
    assert out == "Tel [TEL], 010-12345678, +44 20 7946 0958, mail <EMAIL>"
    assert counts == {"phone": 1, "email": 1}


def test_stage_records_counts_in_meta_and_leaves_clean_records_alone():
    recs = [Record(id="1", text="联系人王女士 13912345678，邮箱 help@shop.cn"),
            Record(id="2", text="The price rose 12% in 2023 to $1,299.")]
    out, stats = run_chain([PiiRedact()], recs)
    out = list(out)
    assert out[0].text == "联系人王女士 <PHONE>，邮箱 <EMAIL>"
    assert out[0].meta["pii"] == {"phone": 1, "email": 1}
    assert out[1].text == "The price rose 12% in 2023 to $1,299." and "pii" not in out[1].meta
    assert stats[0].records_out == 2 and stats[0].bytes_out < stats[0].bytes_in


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"pii.kinds\[0\]: must be one of"):
        PiiRedact(kinds=["passport"])
    with pytest.raises(ConfigError, match="pii.placeholders: unknown PII kind"):
        PiiRedact(placeholders={"ssn": "<SSN>"})
