"""The three tokenizer kinds on real mixed text: round trips, transformers parity, chat template, jieba."""

from __future__ import annotations

import json
import re

import pytest

from lmforge.tokenize.bpe import TokenizerConfig, eos_id, jieba_pieces, load_tokenizer, train_tokenizer
from lmforge.tokenize.encode import encode_documents
from lmforge.tokenize.fast import clean_text

from .conftest import CONTROL, MIXED

KINDS = ("byte_bpe", "unigram", "wordpiece")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, texts):
    return {
        kind: train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=1500), tmp_path_factory.mktemp(kind))
        for kind in KINDS
    }


@pytest.mark.parametrize("kind", ["byte_bpe", "unigram"])
def test_lossless_kinds_round_trip_mixed_text_emoji_and_control_characters(trained, texts, kind):
    tok = load_tokenizer(trained[kind])
    for text in [MIXED, CONTROL, "", " ", "  two  spaces ", "<0x41> <|endoftext|> literal", *texts[:60]]:
        ids = encode_documents(tok, [text], eos_id(tok))[:-1].tolist()
        assert tok.decode(ids) == text, (kind, text[:40])


@pytest.mark.parametrize("kind", KINDS)
def test_lone_surrogates_are_replaced_not_fatal(trained, kind):
    tok = load_tokenizer(trained[kind])
    eos = eos_id(tok)
    arr = encode_documents(tok, ["ok", "a\ud800b\udfff", "\ud83d\ude00 joined"], eos)
    assert int((arr == eos).sum()) == 3
    assert clean_text("a\ud800b") == "a\ufffdb"
    assert clean_text("\ud83d\ude00") == "😀"  # a surrogate pair is one character again
    if kind != "wordpiece":
        docs = tok.decode(arr.tolist(), skip_special_tokens=False).split("<|endoftext|>")
        assert docs[:3] == ["ok", "a\ufffdb\ufffd", "😀 joined"]


def test_unigram_falls_back_to_bytes_and_wordpiece_to_unknown(trained):
    uni = load_tokenizer(trained["unigram"])
    pieces = uni.encode("𠀀🦄", add_special_tokens=False).tokens
    assert pieces and all(p.startswith("<0x") for p in pieces)
    wp = load_tokenizer(trained["wordpiece"])
    enc = wp.encode("𠀀 hello 世界")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert "[UNK]" in enc.tokens
    assert "世" in enc.tokens and "界" in enc.tokens  # every Han character on its own, as in BERT-Chinese


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_size_and_special_tokens(trained, kind):
    tok = load_tokenizer(trained[kind])
    assert tok.get_vocab_size() <= 1500
    assert tok.token_to_id("<|endoftext|>") == 0
    specials = TokenizerConfig(kind=kind).resolved_special_tokens()
    assert [tok.token_to_id(t) for t in specials] == list(range(len(specials)))
    assert {"<|im_start|>", "<|im_end|>"} <= set(specials)


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_autotokenizer_loads_and_encodes_identically(trained, texts, kind):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(trained[kind])
    tok = load_tokenizer(trained[kind])
    for text in [MIXED, CONTROL, *texts[:40]]:
        assert hf(text)["input_ids"] == tok.encode(text).ids
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False).ids
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0
    assert hf.pad_token_id is not None and hf.unk_token_id is not None
    if kind == "wordpiece":
        assert (hf.cls_token, hf.sep_token, hf.mask_token) == ("[CLS]", "[SEP]", "[MASK]")
    else:
        assert hf.decode(hf(MIXED)["input_ids"]) == MIXED


def test_chat_template_is_saved_and_renders_with_transformers(trained):
    transformers = pytest.importorskip("transformers")
    config = json.loads((trained["byte_bpe"] / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    hf = transformers.AutoTokenizer.from_pretrained(trained["byte_bpe"])
    messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "Hello 世界"}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\n你是助手。<|im_end|>\n<|im_start|>user\nHello 世界<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding, 4.x a plain list
        ids = ids["input_ids"]
    im_start = hf.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 3  # each role marker is one special id, not spelled out in bytes


def test_no_chat_template_when_disabled(tmp_path, texts):
    out = train_tokenizer(texts[:100], TokenizerConfig(vocab_size=400, chat_template=False), tmp_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    assert load_tokenizer(out).token_to_id("<|im_start|>") is None


def test_jieba_pieces_cut_chinese_at_word_boundaries_and_keep_english_whole():
    pytest.importorskip("jieba")
    pieces = list(jieba_pieces(["我们今天去北京开会 and then hello world", "plain English only"]))
    assert "".join(pieces) == "我们今天去北京开会 and then hello world" + "plain English only"
    assert "北京" in pieces and " and then hello world" in pieces and "plain English only" in pieces


def _whole_word_share(tok) -> float:
    """Share of the multi-character Chinese tokens that jieba, cutting the token alone, keeps whole."""
    import jieba

    han = [w for w in (tok.decode([i]) for i in range(tok.get_vocab_size())) if re.fullmatch(r"[一-鿿]{2,}", w)]
    return sum(len(jieba.lcut(w, HMM=False)) == 1 for w in han) / len(han)


def test_jieba_option_learns_word_tokens_and_still_round_trips(tmp_path, texts):
    pytest.importorskip("jieba")
    zh = [t for t in texts if not t.isascii()]
    plain = load_tokenizer(train_tokenizer(zh, TokenizerConfig(vocab_size=1500), tmp_path / "plain"))
    cut = load_tokenizer(train_tokenizer(zh, TokenizerConfig(vocab_size=1500, jieba=True), tmp_path / "jieba"))
    # Without jieba BPE learns cross-word pieces such as "的一" or "了一"; with it, tokens are words
    # (measured here: about 80% against 97%).
    assert _whole_word_share(cut) > 0.9 > _whole_word_share(plain)
    for text in zh[:30] + [MIXED]:
        assert cut.decode(cut.encode(text, add_special_tokens=False).ids) == text
