from __future__ import annotations

import json
import os
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from lmforge.config import validate
from lmforge.errors import ConfigError, InputError
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer

CHINESE = [
    "今天天气很好，我们一起去公园散步吧。",
    "机器学习是人工智能的一个分支，它让计算机从数据中自动学习规律。",
    "北京是中国的首都，有三千多年的历史。2024年，北京的人口约为2185万。",
    "他说：“语言模型需要大量的文本数据来训练。”",
]
MIXED = "Hello 世界! 价格是 12345 元 😀🎉 in 2024年。\n\tTabs,  spaces and 𠀀 rare 字; café ŉ 🦄"


def corpus() -> list[str]:
    return list(pydoc_data.topics.topics.values())[:40] + CHINESE * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, TokenizerConfig]:
    config = TokenizerConfig(vocab_size=600)
    out = train_tokenizer(corpus(), config, tmp_path_factory.mktemp("tok"))
    return out, config


def test_round_trip_on_mixed_chinese_english_digits_and_emoji(trained):
    tok = load_tokenizer(trained[0])
    for text in [MIXED, *CHINESE, "", " ", "\n\n", "<tag> & ~`|"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text


def test_never_emits_unknown_tokens_for_unseen_characters(trained):
    tok = load_tokenizer(trained[0])
    enc = tok.encode("🦄𠀀ŉ\x00\x7f", add_special_tokens=False)
    assert len(enc.ids) > 0
    assert all(0 <= i < tok.get_vocab_size() for i in enc.ids)
    assert tok.decode(enc.ids) == "🦄𠀀ŉ\x00\x7f"


def test_each_digit_is_its_own_token(trained):
    tok = load_tokenizer(trained[0])
    # The corpus is full of numbers such as "2024", so BPE would merge digits without the split.
    ids = tok.encode("In 2024 there were 1234567 and 00 and 2185万", add_special_tokens=False).ids
    pieces = [tok.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert "".join(digit_pieces) == "202412345670021" + "85"
    assert all(len(p) == 1 for p in digit_pieces), digit_pieces


def test_vocab_size_respected_and_special_tokens_first(trained):
    out, config = trained
    tok = load_tokenizer(out)
    assert tok.get_vocab_size() == config.vocab_size  # the corpus is big enough to fill it
    assert eos_id(tok) == 0
    assert tok.token_to_id("<|pad|>") == 1

    small = train_tokenizer(corpus(), TokenizerConfig(vocab_size=300), out.parent / "small")
    assert load_tokenizer(small).get_vocab_size() == 300


def test_saved_directory_is_loadable_by_transformers(trained):
    out, config = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "lmforge_tokenizer.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tc["eos_token"] == tc["bos_token"] == tc["unk_token"] == "<|endoftext|>"
    assert tc["pad_token"] == "<|pad|>"
    assert tc["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert "<|im_start|>" in tc["chat_template"]
    assert isinstance(tc["model_max_length"], int) and tc["model_max_length"] > 0
    sm = json.loads((out / "special_tokens_map.json").read_text())
    assert sm["eos_token"] == "<|endoftext|>" and sm["pad_token"] == "<|pad|>"
    saved = TokenizerConfig.model_validate(json.loads((out / "lmforge_tokenizer.json").read_text()))
    assert saved == config
    # tokenizer.json declares the pieces the brief asks for
    spec = json.loads((out / "tokenizer.json").read_text())
    assert spec["normalizer"] is None
    assert spec["decoder"]["type"] == "ByteLevel"
    kinds = [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]]
    assert kinds == ["Split", "ByteLevel"]


def test_max_training_chars_caps_the_training_text(tmp_path):
    capped = train_tokenizer(
        corpus(), TokenizerConfig(vocab_size=2000, max_training_chars=300), tmp_path / "a"
    )
    full = train_tokenizer(corpus(), TokenizerConfig(vocab_size=2000), tmp_path / "b")
    # 300 characters cannot produce many merges; the full corpus fills the vocabulary.
    assert load_tokenizer(capped).get_vocab_size() < 256 + 2 + 300
    assert load_tokenizer(full).get_vocab_size() == 2000


def test_training_leaves_no_temporary_files(trained):
    assert not [p for p in trained[0].iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"vocab_size": 257}, "vocab_size"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"max_training_chars": 0}, "max_training_chars"),
        ({"kind": "sentencepiece"}, "kind"),
        ({"kind": "wordpiece", "jieba": True}, "jieba"),
        ({"vocab_sise": 1000}, "vocab_sise"),
        ({"special_tokens": ["<|pad|>"]}, "special_tokens"),
    ],
)
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ValidationError):
        TokenizerConfig(**data)
    with pytest.raises(ConfigError, match=field):
        validate(TokenizerConfig, data, where="tokenizer")


def test_vocab_floor_counts_special_tokens():
    # <|endoftext|>, <|pad|> and the two chat tokens
    TokenizerConfig(vocab_size=260)
    TokenizerConfig(vocab_size=258, chat_template=False)
    with pytest.raises(ValidationError, match="261"):
        TokenizerConfig(vocab_size=260, special_tokens=["<|endoftext|>", "<|pad|>", "<|mask|>"])
    # Unigram reserves its 256 byte pieces, room for 100 characters and an unknown token
    with pytest.raises(ValidationError, match="361"):
        TokenizerConfig(kind="unigram", vocab_size=360)
    TokenizerConfig(kind="unigram", vocab_size=361)


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="bad"):
        load_tokenizer(bad)


def test_load_tokenizer_accepts_the_json_file_itself(trained):
    tok = load_tokenizer(trained[0] / "tokenizer.json")
    assert tok.decode(tok.encode(MIXED, add_special_tokens=False).ids) == MIXED


def test_importing_the_tokenize_modules_does_not_import_tokenizers_or_torch():
    code = (
        "import sys, lmforge.tokenize.bpe, lmforge.tokenize.encode, lmforge.tokenize.shards, "
        "lmforge.tokenize.dataset, lmforge.tokenize.report, lmforge.cli.tokenizer; "
        "print(sorted(m for m in ('tokenizers', 'torch', 'transformers', 'tiktoken', 'jieba', 'pyarrow') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
