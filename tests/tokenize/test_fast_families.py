"""The compiled BPE on Llama 3's and Qwen2's tokenizer.json layouts: ids exactly tokenizers', or a refusal.

The tokenizers are trained here on the built-in corpora, then given the pre-tokenizer, normalizer,
decoder, post-processor and added tokens the real families ship, written out as their
tokenizer.json spells them.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lmforge.tokenize import fast
from lmforge.tokenize.bpe import byte_level_chars
from lmforge.tokenize.encode import encode_documents
from lmforge.tokenize.fast import encode_with_tokenizers

from .conftest import MIXED
from .test_fast import EDGES, _compiled, assert_same

pytestmark = pytest.mark.skipif(not _compiled(), reason="lmforge.tokenize._fastbpe was not built (no C compiler)")


def _pre_tokenizer(regex: str, trim_offsets: bool) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": False},
    ]}


def _added(first_id: int, specials: list[str], plain: list[str] = ()) -> list[dict]:
    return [{"id": first_id + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": c in specials} for i, c in enumerate([*specials, *plain])]


def _spelled(text: str) -> str:
    """`text` in the byte-level alphabet, as tokenizer.json vocabularies spell tokens."""
    chars = byte_level_chars()
    return "".join(chars[b] for b in text.encode())


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|vision_pad|>"]
QWEN2_PLAIN = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|repo_name|>", "<think>", "</think>"]
WHOLE_WORD = " lmforge"  # in Llama 3's vocab below, but no merge builds it: only ignore_merges finds it


def _family(texts: list[str], family: str) -> object:
    """A byte-level BPE trained with the family's own pre-tokenizer, in the family's tokenizer.json layout."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    regex = fast.LLAMA3_REGEX if family == "llama3" else fast.QWEN2_REGEX
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if family == "llama3":
        assert _spelled(WHOLE_WORD) not in vocab
        vocab[_spelled(WHOLE_WORD)] = len(vocab)
        spec["model"]["ignore_merges"] = True
        spec["pre_tokenizer"] = _pre_tokenizer(fast.LLAMA3_REGEX, trim_offsets=True)
        spec["added_tokens"] = _added(len(vocab), LLAMA3_SPECIALS)
        bos = {"id": "<|begin_of_text|>", "ids": [len(vocab)], "tokens": ["<|begin_of_text|>"]}
        spec["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": bos}}]}
    else:
        spec["normalizer"] = {"type": "NFC"}
        spec["pre_tokenizer"] = _pre_tokenizer(fast.QWEN2_REGEX, trim_offsets=False)
        spec["added_tokens"] = _added(len(vocab), QWEN2_SPECIALS, QWEN2_PLAIN)
        spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                                  "use_regex": False}
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def llama3(texts):
    return _family(texts, "llama3")


@pytest.fixture(scope="module")
def qwen2(texts):
    return _family(texts, "qwen2")


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def family(request):
    return request.param, request.getfixturevalue(request.param)


def _variant(tok, edit) -> object:
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    edit(spec)
    return Tokenizer.from_str(json.dumps(spec))


FAMILY_EDGES = [
    "IT'S it's It'S we'LL THEY'RE I'VE i'M he'D 'sure 'S ſ'ſ 'ſ x'ſt 'Ll ''s",
    "1 22 333 4444 55555 666666 7777777 88888888 999999999 1234567890 ①②③④ ٣٤٥٦ １２３４５",
    "a\r\nb\r\n\r\n c\n\n\n  d\t\te \t\n\tf   g    \n  h\r\r\n \r x",
    "  leading\n\tTabbed\u3000全角\u00a0nbsp\u2028line\x85next\x0bvt\x0cff ",
    "price: $1,234.56!!! (approx.)\n---\n>>> print('hi')\n",
    "e\u0301 A\u030a\u0323 \u1100\u1161\u11a8 \u0915\u093c \u0d3b\u0d3c \u07fd\u0334 a\u0898\u0334 \U00011935\U00011930",
    "<tool_call>{\"name\": \"f\"}</tool_call><|im_start|>user\nhi<|im_end|><think>\n</think> <tool_call <|fim_prefix|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nx<|eot_id|><|reserved_special_token_0|>",
    "你好，世界！Hello,世界。数据2024年12月31日 😀🎉👩‍👩‍👧 🦄 𠀀字 lmforge lmforge" + WHOLE_WORD,
]


def test_the_real_layouts_are_taken_by_the_compiled_path(family):
    name, tok = family
    encoder, why = fast.status(tok)
    assert encoder is not None, why
    assert why.startswith("lmforge's compiled")
    assert (encoder.prepare is not None) == (name == "qwen2")  # NFC and Qwen's non-special added tokens


def test_every_code_point_below_0x40000_encodes_as_tokenizers_does(family):
    _, tok = family
    chars = [chr(c) for c in [*range(0x40000), *range(0xE0000, 0xE0200), 0x10FFFF] if not 0xD800 <= c <= 0xDFFF]
    # each character leading a word, after an apostrophe, doubled, after a space, before a digit and a
    # newline, after one, and before a combining mark (NFC)
    texts = ["".join(f"{c}x'{c}{c} {c}1\r\n{c}\u0301\t" for c in chars[i : i + 256]) for i in range(0, len(chars), 256)]
    assert_same(tok, texts)


def assert_same_pieces(family: tuple[str, object], texts: list[str]) -> None:
    """The regex's pieces themselves: ids show a wrong cut only where some merge spans it, and merges
    learned with the right regex never span one."""
    from tokenizers import Regex, pre_tokenizers

    name, tok = family
    split = pre_tokenizers.Split(Regex(fast.LLAMA3_REGEX if name == "llama3" else fast.QWEN2_REGEX), "isolated")
    encoder = fast.encoder_for(tok).encoder
    for text in texts:
        assert encoder.split(text) == [end for _, (_, end) in split.pre_tokenize_str(text)], text[:80]


# The two regexes differ only in how many numbers one match takes, which the other tests cover for Qwen.
@pytest.mark.parametrize("name", ["llama3", pytest.param("qwen2", marks=pytest.mark.slow)])
def test_every_code_point_is_cut_where_tokenizers_cuts(name, request):
    chars = [chr(c) for c in range(0x40000) if not 0xD800 <= c <= 0xDFFF]
    assert_same_pieces((name, request.getfixturevalue(name)), ["".join(f"{c}x'{c}{c} {c}1\r\n{c}\u0301\tx\n{c}" for c in chars[i : i + 256])
                                for i in range(0, len(chars), 256)])


@pytest.mark.slow
def test_every_code_point_in_more_contexts(family):
    _, tok = family
    chars = [chr(c) for c in range(0x40000) if not 0xD800 <= c <= 0xDFFF]
    texts = ["".join(f"a{c}{c} {c}1'{c}\n{c}  '{c}e\t{c}x\r\n{c}\n 1{c}22{c}" for c in chars[i : i + 256])
             for i in range(0, len(chars), 256)]
    assert_same(tok, texts)


def test_mixed_chinese_and_english_and_edge_cases(family, texts):
    _, tok = family
    assert_same(tok, texts + EDGES + FAMILY_EDGES + [MIXED * 50], eos=3)
    assert_same_pieces(family, texts[:100] + EDGES[:20] + FAMILY_EDGES)


def test_random_strings_encode_as_tokenizers_does(family):
    _, tok = family
    alphabet = [*"aZéſSsLlTtDdMmRrEeVv ' \t\n\r\u3000\u00a0\u2028\x85中文数据的了，。！1２٣①Ⅻ😀👍-_.,:;/\\\"#@%&*()[]{}<>?",
                "\u0301", "\u0323", "\u0898", "\u1100", "\u1161", "'s", "'LL", " 'd", "\r\n", "  ", "123456",
                "<tool_call>", "</tool_call", "<|im_start|>", "<think>", "<|begin_of_text|>", WHOLE_WORD]
    rng = random.Random(11)
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 50))) for _ in range(4000)]
    assert_same(tok, docs)
    assert_same_pieces(family, docs)


def test_qwen_added_tokens_split_the_text_and_special_ones_stay_text(qwen2):
    text = "a<tool_call>b<|im_start|>c"
    ids = encode_documents(qwen2, [text], 0).tolist()
    assert qwen2.token_to_id("<tool_call>") in ids  # non-special: its own id, as tokenizers gives it
    assert qwen2.token_to_id("<|im_start|>") not in ids  # special: read as text when shards are encoded
    assert ids == [*encode_with_tokenizers(qwen2, [text])[0], 0]


def test_a_special_token_hides_the_added_tokens_inside_it(qwen2):
    """tokenizers matches special and plain added tokens together (leftmost-longest), then reads the
    special ones as text: a plain token inside a special one's text is not cut out."""
    other = _variant(qwen2, lambda s: s["added_tokens"].extend(
        _added(1 + max(t["id"] for t in s["added_tokens"]), [], ["im_start", "start|>"])))
    assert_same(other, ["<|im_start|>", "x<|im_start|>y im_start <|im_startz start|>", "<|im_end|>im_start"])
    ids = encode_documents(other, ["<|im_start|> im_start"], 0).tolist()
    assert ids.count(other.token_to_id("im_start")) == 1


def test_llama3_ignore_merges_takes_a_whole_vocabulary_entry(llama3):
    whole = llama3.token_to_id(_spelled(WHOLE_WORD))
    ids, _ = fast.encoder_for(llama3).encode([WHOLE_WORD, "x" + WHOLE_WORD], 0)
    assert ids.tolist() == [whole, 0, *encode_with_tokenizers(llama3, ["x"])[0], whole, 0]
    without = _variant(llama3, lambda s: s["model"].update(ignore_merges=False))
    assert whole not in encode_documents(without, [WHOLE_WORD], 0).tolist()  # the merges alone never build it


def test_nfc_is_tokenizers_nfc(qwen2):
    from tokenizers import normalizers

    differ = sorted(fast.nfc_differences())
    marks = ["\u0301", "\u0323", "\u0334", "\u0345", "\u302a", "\u05b0", "\u093c", *differ[:40]]
    bases = ["a", "A", "e", "o", "\u1100", "\u1161", "\u11a8", "\uac00", "\u0915", "\u0d4a", "中", " ", *differ[-20:]]
    rng = random.Random(5)
    docs = ["".join(rng.choice(rng.choice([marks, bases])) for _ in range(rng.randrange(1, 12))) for _ in range(3000)]
    assert [fast.nfc(d) for d in docs] == [normalizers.NFC().normalize_str(d) for d in docs]
    assert_same(qwen2, docs)


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\p{N}{1,3}| ?\p{L}+|\s+"),
     "not Llama 3's or Qwen2's regex"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed"), "behavior Removed"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(invert=True), "invert True"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(use_regex=True), "use_regex=False"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"].reverse(), "pre-tokenizer is neither"),
    (lambda s: s.update(normalizer={"type": "NFKC"}), "normalizer other than NFC (NFKC)"),
    (lambda s: s["added_tokens"][-1].update(lstrip=True), "'</think>' sets normalized, lstrip"),
], ids=["other-regex", "removed", "inverted", "byte-level-regex", "reversed", "nfkc", "lstrip-added-token"])
def test_other_layouts_fall_back_to_tokenizers_with_the_reason(qwen2, edit, reason):
    other = _variant(qwen2, edit)
    encoder, why = fast.status(other)
    assert encoder is None and why.startswith("tokenizers (") and reason in why, why
    docs = FAMILY_EDGES + [MIXED]
    expected = [i for doc in encode_with_tokenizers(other, docs) for i in (*doc, 0)]
    assert encode_documents(other, docs, 0).tolist() == expected


def test_documents_given_as_pieces_and_ids_are_checked(llama3):
    encoder = fast.encoder_for(llama3).encoder
    raw, lengths, skipped = encoder.encode_batch([("a", 7, "b"), ("\ud800", 7), ()], 9)
    a, b = encode_with_tokenizers(llama3, ["a", "b"])
    assert np.frombuffer(raw, dtype=np.uint32).tolist() == [*a, 7, *b, 9, 9]
    assert skipped == [1] and np.frombuffer(lengths, dtype=np.int64).tolist() == [len(a) + len(b) + 2, 0, 1]
    with pytest.raises(ValueError, match=r"texts\[0\]\[1\] is not a token id"):
        encoder.encode_batch([("a", -1)], 0)
    with pytest.raises(TypeError, match=r"texts\[0\]\[0\] is NoneType, not str or int"):
        encoder.encode_batch([(None,)], 0)
