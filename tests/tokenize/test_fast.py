"""lmforge's compiled byte-level BPE gives tokenizers' ids exactly, or steps aside for tokenizers."""

from __future__ import annotations

import json
import logging
import os
import random

import numpy as np
import pytest

from lmforge.tokenize import fast
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.tokenize.encode import encode_documents
from lmforge.tokenize.fast import clean_text, encode_with_tokenizers

from .conftest import CONTROL, MIXED, write_stage


def _compiled() -> bool:
    try:
        from lmforge.tokenize import _fastbpe  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise  # .ci/run builds the extension (gcc is there), so a missing build is a failure
        return False
    return True


pytestmark = pytest.mark.skipif(not _compiled(), reason="lmforge.tokenize._fastbpe was not built (no C compiler)")

EDGES = [
    "", " ", "   ", "\n", "\n\n\nx", "a  \n b", "x \t\ty", "trailing   ", "\r\n\r\n",
    "it's IT'S we'll they're I've I'm he'd 'x ' '' 'll'",
    "\u3000\u3000全角空格\u3000", "no\u00a0break", "e\u0301 combining", "👩‍👩‍👧 zwj", "nul\x00byte",
    "1234567890" * 30, "１２３ full-width", "①②③ Ⅻ ٣٤ ²", "2024年12月31日", "v1.2.3-rc4",
    "数据" * 200_000, "a" * 100_000, "!" * 50_000 + "?", " " * 10_000 + "x",
    MIXED, CONTROL, CONTROL + MIXED + CONTROL,
]


def assert_same(tok, texts: list[str], eos: int = 0) -> None:
    encoder = fast.encoder_for(tok)
    assert encoder is not None
    ids, lengths = encoder.encode(texts, eos)
    expected = encode_with_tokenizers(tok, texts)
    assert ids.dtype == np.uint32 and lengths.tolist() == [len(d) + 1 for d in expected]
    got = np.split(ids, np.cumsum(lengths)[:-1]) if len(texts) else []
    for text, mine, theirs in zip(texts, got, expected, strict=True):
        assert mine.tolist() == [*theirs, eos], f"ids differ for {text[:60]!r}"


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def tok_8k(tmp_path_factory, texts):
    """A larger vocabulary, so long merge chains (whole Chinese phrases) are exercised."""
    return load_tokenizer(train_tokenizer(texts * 3, TokenizerConfig(vocab_size=8000), tmp_path_factory.mktemp("t8")))


def _variant(tok, edit) -> object:
    """`tok` with its tokenizer.json changed by `edit(spec)`."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    edit(spec)
    return Tokenizer.from_str(json.dumps(spec))


def test_every_code_point_below_0x40000_and_beyond_encodes_as_tokenizers_does(tok):
    points = [*range(0x40000), *range(0xE0000, 0xE0200), 0xF0000, 0x10FFFD, 0x10FFFF]
    chars = [chr(c) for c in points if not 0xD800 <= c <= 0xDFFF]
    # each character between letters, after a space, before a digit, after an apostrophe, around newlines
    texts = ["".join(f"a{c}{c} {c}1'{c}\n{c}  " for c in chars[i : i + 256]) for i in range(0, len(chars), 256)]
    assert_same(tok, texts)


@pytest.mark.parametrize("name", ["tok", "tok_8k"])
def test_corpus_and_edge_cases_encode_as_tokenizers_does(name, request, texts):
    assert_same(request.getfixturevalue(name), texts + EDGES, eos=7)


def test_random_strings_encode_as_tokenizers_does(tok_8k):
    alphabet = list("aZé ' \t\n\r\u3000\u00a0中文数据的了，。！1２٣①Ⅻ😀👍-_.,:;/\\\"#@%&*()[]{}<>?") + ["'s", "'ll", " 'd"]
    rng = random.Random(7)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(3000)]
    assert_same(tok_8k, texts)


def test_lone_surrogates_go_through_tokenizers_with_the_same_rule(tok):
    texts = ["ok", "bad \ud800 here", "中文 \udfff", "end", "pair \ud83d\ude00 joined"]
    encoder = fast.encoder_for(tok)
    ids, lengths = encoder.encode(texts, 0)
    expected = encode_with_tokenizers(tok, [clean_text(t) for t in texts])
    assert lengths.tolist() == [len(d) + 1 for d in expected]
    assert ids.tolist() == [i for doc in expected for i in (*doc, 0)]


def test_gpt2_layout_without_the_digit_split(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    gpt2 = Tokenizer(models.BPE())
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ))
    assert_same(gpt2, texts[:200] + EDGES)


def test_merges_in_the_old_string_format_and_duplicate_merges(tok):
    def old_format(spec):
        merges = spec["model"]["merges"]
        spec["model"]["merges"] = [" ".join(m) for m in merges] + [" ".join(merges[3])]

    assert_same(_variant(tok, old_format), EDGES[:25] + [MIXED])


def test_ignore_merges_and_plain_added_tokens_encode_as_tokenizers_does(tok_8k, texts):
    """Whole-word lookups (Llama 3's ignore_merges) and non-special added tokens, cut out before the BPE."""
    def edit(spec):
        spec["model"]["ignore_merges"] = True
        size = len(spec["model"]["vocab"])
        for i, content in enumerate(["数据", "<tool>", "<tool", "'s"]):
            spec["added_tokens"].append({"id": size + i, "content": content, "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": False, "special": False})

    other = _variant(tok_8k, edit)
    assert_same(other, texts[:300] + EDGES + ["<tool><tool>x<toolbox it's 数据数", "<|endoftext|><tool"])
    ids, _ = fast.encoder_for(other).encode(["a<tool>b"], 0)
    assert len(other.get_vocab(with_added_tokens=False)) + 1 in ids.tolist()  # the added token's own id


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda s: s.update(normalizer={"type": "NFKC"}), "normalizer"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "add_prefix_space=False"),
    (lambda s: s["model"].update(dropout=0.1), "dropout"),
    (lambda s: s["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda s: s["added_tokens"].append({"id": 5, "content": "数据", "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": True, "special": False}), "non-special"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer"),
], ids=["normalizer", "prefix-space", "dropout", "byte-fallback", "normalized-added-token", "other-pre-tokenizer"])
def test_layouts_it_cannot_reproduce_fall_back_to_tokenizers(tok, edit, reason):
    other = _variant(tok, edit)
    encoder, why = fast.status(other)
    assert encoder is None and why.startswith("tokenizers (") and reason in why
    docs = [MIXED, "数据 and 数据", "Hello world 123"]
    if json.loads(other.to_str())["model"].get("dropout"):
        return  # random merges: two encodings differ, so only the refusal is checked
    expected = [i for doc in encode_with_tokenizers(other, docs) for i in (*doc, 0)]
    assert encode_documents(other, docs, 0).tolist() == expected


def test_unigram_falls_back(texts, tmp_path):
    uni = load_tokenizer(train_tokenizer(texts, TokenizerConfig(kind="unigram", vocab_size=800), tmp_path))
    assert fast.status(uni) == (None, "tokenizers (model is Unigram, not BPE)")


def test_without_the_built_extension_tokenizers_encodes(tokenizer_dir, monkeypatch):
    import sys

    tok = load_tokenizer(tokenizer_dir)  # its own object: what is decided for it is cached with it
    monkeypatch.setitem(sys.modules, "lmforge.tokenize._fastbpe", None)  # as if no C compiler was there
    assert fast._build(tok)[0] is None
    assert encode_documents(tok, [MIXED], 0).tolist() == [*encode_with_tokenizers(tok, [MIXED])[0], 0]


def test_a_tokenizer_changed_after_its_first_encode_is_checked_again(tokenizer_dir):
    from tokenizers import normalizers

    changed = load_tokenizer(tokenizer_dir)
    assert fast.encoder_for(changed) is not None
    changed.normalizer = normalizers.Lowercase()
    assert fast.encoder_for(changed) is None
    assert encode_documents(changed, ["ABC Def"], 0).tolist() == [*encode_with_tokenizers(changed, ["abc def"])[0], 0]


def test_switched_off_by_environment(tok, monkeypatch):
    monkeypatch.setenv("LMFORGE_FAST_BPE", "0")
    assert fast.encoder_for(tok) is None


def test_a_unicode_table_that_disagrees_with_tokenizers_is_refused(tok, monkeypatch, caplog):
    table = bytearray(fast.class_table())
    table[ord("e")] = 4  # a table that classes a letter as a space: words then split where tokenizers merges
    monkeypatch.setattr(fast, "class_table", lambda: bytes(table))
    with caplog.at_level(logging.WARNING, logger="lmforge.tokenize.fast"):
        assert fast._build(tok)[0] is None
    assert "disagrees with tokenizers" in caplog.text


def test_oniguruma_classes_are_read_exactly():
    onig = fast.onig_table()
    expected = {"a": 1, "Z": 1, "中": 1, "\U00020000": 1, "1": 3, "٣": 3, "１": 3, "①": 2, "Ⅻ": 2, "²": 2,
                " ": 4, "\t": 4, "\x85": 4, "\u3000": 4, "\u2028": 4, ",": 0, "\x1c": 0, "\u200b": 0, "😀": 0}
    assert {c: onig[ord(c)] for c in expected} == expected
    if fast.same_unicode_version():
        assert fast.unicodedata_table() == onig  # so the fast table is exact, for every code point
    else:
        assert fast.class_table() == onig


def test_a_newer_unicodedata_than_oniguruma_uses_oniguruma_classes(monkeypatch):
    import unicodedata

    class Newer:  # knows a letter (CJK Extension J, Unicode 17) that Oniguruma here does not
        unidata_version = "17.0.0"

        @staticmethod
        def category(c: str) -> str:
            return "Lo" if c == "\U000323b0" else unicodedata.category(c)

    monkeypatch.setattr(fast, "unicodedata", Newer)
    fast.class_table.cache_clear()
    try:
        assert fast.class_table() == fast.onig_table()
    finally:
        fast.class_table.cache_clear()


def test_shards_are_byte_identical_with_and_without_the_compiled_path(tmp_path, records, tokenizer_dir, monkeypatch):
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.tokenize.shards import encode_shards

    stage = write_stage(tmp_path / "stage", records[:300], shard_size=100)
    outs = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("LMFORGE_FAST_BPE", switch)
        outs[switch] = tmp_path / f"tokens-{switch}"
        encode_shards(stage, tokenizer_dir, outs[switch], LocalExecutor(1))
    files = sorted(p.name for p in outs["1"].iterdir() if p.suffix in (".tok", ".idx"))
    assert len(files) == 6
    for name in files:
        assert (outs["1"] / name).read_bytes() == (outs["0"] / name).read_bytes(), name


def test_eos_and_dtype_through_encode_documents(tok):
    eos = eos_id(tok)
    arr = encode_documents(tok, ["a", "数据", ""], eos)
    assert arr.dtype == np.uint16
    assert arr.tolist() == [*tok.encode("a").ids, eos, *tok.encode("数据").ids, eos, eos]



def test_bad_arguments_are_refused_with_a_clear_error(tok):
    encoder = fast.encoder_for(tok).encoder
    with pytest.raises(ValueError, match=r"eos must be a token id in \[0, 2\*\*32\) \(got -1\)"):
        encoder.encode_batch(["a"], -1)
    with pytest.raises(TypeError, match="texts\\[1\\] is NoneType, not str"):
        encoder.encode_batch(["a", None], 0)
    with pytest.raises(RuntimeError, match="not initialised"):
        type(encoder).__new__(type(encoder)).encode_batch(["a"], 0)
