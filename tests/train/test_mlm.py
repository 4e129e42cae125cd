"""BERT pretraining data from token shards: word flags, sentence pairs, masking, the objective."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.collect.builtin import corpus_records
from lmforge.config import validate
from lmforge.errors import ConfigError, InputError
from lmforge.models.bert import BertConfig, BertForPretraining
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.tokenize.dataset import TokenDataset
from lmforge.tokenize.shards import encode_texts
from lmforge.tokenize.words import CJK, SENTENCE, WORD, iter_encoded_words
from lmforge.train.mlm import (
    BertPretrainSource,
    MaskedLM,
    MLMConfig,
    ShardPairs,
    eval_source,
    special_ids,
    split_sentences,
    word_starts,
)
from lmforge.train.objectives import IGNORE, BatchSource, Objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    return {
        "zh": [r.text for r in corpus_records("peoples_daily", 250)],
        "en": [r.text for r in corpus_records("python_docs", 150)],
    }


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    """A small WordPiece vocabulary over both languages, as `lmforge tokenizer train` makes it."""
    out = tmp_path_factory.mktemp("wordpiece")
    return train_tokenizer(corpus["zh"] + corpus["en"], TokenizerConfig(kind="wordpiece", vocab_size=2000), out)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def shards(corpus, tok_dir, tmp_path_factory):
    """Token shards per (language, split): the corpus split 9:1 by document, encoded once for the module."""

    @functools.cache
    def make(lang: str = "both", split: str = "train") -> TokenDataset:
        texts = corpus["zh"] + corpus["en"] if lang == "both" else corpus[lang]
        texts = [t for i, t in enumerate(texts) if (i % 10 == 0) == (split == "val")]
        return TokenDataset(encode_texts(texts, tok_dir, tmp_path_factory.mktemp(f"tokens-{lang}-{split}")))

    return make


@pytest.fixture(scope="module")
def pairs(shards, tok):
    """ShardPairs per (sentence_task, whole_word, max_seq_len, language, split, seed)."""

    def make(task: str = "nsp", whole_word: str = "auto", max_seq_len: int = 128, lang: str = "both",
             split: str = "train", seed: int = 0) -> ShardPairs:
        cfg = MLMConfig(sentence_task=task, whole_word=whole_word, max_seq_len=max_seq_len)
        return ShardPairs(shards(lang, split), cfg, special_ids(tok), tok.get_vocab_size(), seed=seed)

    return make


def source(pairs, task: str, batch_size: int, seed: int = 0, **kw) -> tuple[BertPretrainSource, MLMConfig]:
    p = pairs(task, **kw)
    return BertPretrainSource(p, p.cfg, batch_size, seed), p.cfg


# --------------------------------------------------------------------------- config and text


def test_config_validation():
    assert MLMConfig().mask_prob == 0.15
    with pytest.raises(ConfigError, match=r"mask_token_frac \+ random_token_frac must be at most 1 \(got 0.9 \+ 0.2\)"):
        validate(MLMConfig, {"mask_token_frac": 0.9, "random_token_frac": 0.2}, prefix="mlm")
    with pytest.raises(ConfigError, match="mlm.sentence_task: must be one of"):
        validate(MLMConfig, {"sentence_task": "next"}, prefix="mlm")
    with pytest.raises(ConfigError, match="mlm.mask_probability: unknown key"):
        validate(MLMConfig, {"mask_probability": 0.2}, prefix="mlm")
    with pytest.raises(ConfigError, match="mlm.max_seq_len"):
        validate(MLMConfig, {"max_seq_len": 4}, prefix="mlm")


def test_sentences_keep_every_character():
    text = "The value 3.14 is pi. See os.path.join for more!\n新年好。你去哪里？“好的！”他说…… Done"
    parts = split_sentences(text)
    assert "".join("".join(p.split()) for p in parts) == "".join(text.split())
    assert parts[:2] == ["The value 3.14 is pi.", "See os.path.join for more!"] and "新年好。" in parts


def test_special_ids_need_a_wordpiece_tokenizer(tok, corpus, tmp_path):
    sp = special_ids(tok)
    assert [tok.id_to_token(i) for i in (sp.cls, sp.sep, sp.mask, sp.pad)] == ["[CLS]", "[SEP]", "[MASK]", "[PAD]"]
    assert tok.token_to_id("[UNK]") in sp.all and tok.token_to_id("<|endoftext|>") in sp.all
    bpe = load_tokenizer(train_tokenizer(corpus["en"][:20], TokenizerConfig(vocab_size=300), tmp_path))
    with pytest.raises(InputError, match=r"no cls token \(<\|cls\|> or \[CLS\]\).*tokenizer.kind: wordpiece"):
        special_ids(bpe)


# --------------------------------------------------------------------------- word boundaries in the shards


def encoded(tok, text: str) -> tuple[np.ndarray, np.ndarray]:
    """One document's tokens and flags as a shard stores them (the trailing EOS cut off)."""
    [(ids, lengths, flags)] = iter_encoded_words(tok, [text], eos_id(tok), np.dtype("u2"))
    assert lengths.tolist() == [len(ids)] and ids[-1] == eos_id(tok) and flags[-1] == 0
    return ids[:-1], flags[:-1]


def test_chinese_words_come_from_jieba(tok):
    import jieba

    sentence = "中国人民银行今天发布了新的货币政策。"
    ids, flags = encoded(tok, sentence)
    assert len(ids) == len(sentence)  # WordPiece gives every Han character its own token
    expected = np.zeros(len(sentence), dtype=bool)
    expected[np.cumsum([0] + [len(w) for w in jieba.lcut(sentence)])[:-1]] = True
    starts = word_starts(flags, "auto")
    assert starts.tolist() == expected.tolist() == word_starts(flags, "on").tolist()
    assert starts.sum() < len(sentence) and (flags & CJK).all()  # some words span several tokens
    assert flags[0] & SENTENCE and not (flags[1:] & SENTENCE).any()
    assert word_starts(flags, "off").all()


def test_english_words_group_wordpiece_continuations(tok):
    text = "Interpreters tokenize unparenthesized expressions. A second sentence."
    ids, flags = encoded(tok, text)
    pieces = [tok.id_to_token(int(i)) for i in ids]
    assert any(p.startswith("##") for p in pieces) and not (flags & CJK).any()
    assert word_starts(flags, "on").tolist() == [not p.startswith("##") for p in pieces]
    assert word_starts(flags, "auto").all()  # auto: whole words only in Chinese-like text
    assert np.flatnonzero(flags & SENTENCE).tolist() == [0, pieces.index(".") + 1]
    assert (flags & WORD)[np.flatnonzero(flags & SENTENCE)].all()


# --------------------------------------------------------------------------- pairs from shards


@pytest.mark.parametrize("task", ["nsp", "sop", "none"])
def test_example_layout(pairs, task):
    p = pairs(task)
    sp, lengths = p.specials, []
    for i in range(400):
        ids, types, words, _ = p.example(i)
        lengths.append(len(ids))
        seps = np.flatnonzero(ids == sp.sep)
        assert ids[0] == sp.cls and ids[-1] == sp.sep
        assert np.array_equal(words < 0, np.isin(ids, sp.all))  # [UNK] included
        if task == "none":
            assert len(seps) == 1 and not types.any()
        else:
            assert len(seps) == 2 and seps[0] >= 2 and seps[1] - seps[0] >= 2  # both segments non-empty
            assert types.tolist() == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        real = words[words >= 0]
        assert real[0] == 0 and np.all(np.diff(real) >= 0) and np.all(np.diff(real) <= 1)
    lengths = np.array(lengths)
    assert lengths.max() <= 128 and lengths.min() >= (5 if task != "none" else 3)
    assert (lengths == 128).mean() > 0.2  # most examples fill the window ...
    assert (lengths < 64).mean() > 0.03  # ... short ones come from short documents and short_seq_prob


def _doc_string(data: TokenDataset, doc: int) -> str:
    shard, start, stop = data.document(doc)
    return " " + " ".join(map(str, data.shard_tokens(shard)[start:stop])) + " "


def _ids(segment) -> str:
    return " " + " ".join(map(str, segment[0])) + " "


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_sentence_pairs_stay_in_their_document(pairs, task):
    """Label 0: B continues A in A's document. NSP 1: B is from another document. SOP 1: B precedes A."""
    p = pairs(task)
    labels, checked = [], {0: 0, 1: 0}
    for i in range(600):
        pair = p.pair(i)
        labels.append(pair.label)
        a_doc, b_doc = _doc_string(p.data, pair.a_doc), _doc_string(p.data, pair.b_doc)
        assert _ids(pair.a) in a_doc and _ids(pair.b) in b_doc  # each segment is a stretch of one document
        whole = len(pair.a[0]) + len(pair.b[0]) < p.max_tokens  # not trimmed between A and B
        if pair.label == 1 and task == "nsp":
            assert pair.b_doc != pair.a_doc  # only an NSP negative leaves A's document
            checked[1] += 1
            continue
        assert pair.b_doc == pair.a_doc
        if whole:
            first, second = (pair.a, pair.b) if pair.label == 0 else (pair.b, pair.a)  # SOP 1: swapped
            assert _ids((np.concatenate([first[0], second[0]]),)) in a_doc
            checked[pair.label] += 1
    assert 0.42 < np.mean(labels) < 0.58
    assert checked[0] > 40 and checked[1] > 40


def test_segments_never_hold_a_document_boundary(pairs, tok):
    p, eos = pairs("nsp", max_seq_len=512), eos_id(tok)
    for i in range(200):
        ids, _, _, _ = p.example(i)
        assert eos not in ids.tolist()


def test_pairs_are_deterministic_and_the_shards_reproducible(pairs, corpus, tok_dir, tmp_path):
    p = pairs("nsp")
    rebuilt = TokenDataset(encode_texts([t for i, t in enumerate(corpus["zh"] + corpus["en"]) if i % 10],
                                        tok_dir, tmp_path / "again"))
    for name in ("shard-00000.tok", "shard-00000.idx", "shard-00000.wrd"):
        assert (rebuilt.path / name).read_bytes() == (p.data.path / name).read_bytes(), name
    again = ShardPairs(rebuilt, p.cfg, p.specials, p.vocab_size, seed=0)
    other = pairs("nsp", seed=1)
    for i in (0, 7, 5000):
        assert all(np.array_equal(x, y) for x, y in zip(p.example(i)[:3], again.example(i)[:3], strict=True))
    assert [p.pair(i).a_doc for i in range(20)] != [other.pair(i).a_doc for i in range(20)]


def test_nsp_needs_two_documents_and_shards_need_word_flags(tok, tok_dir, tmp_path, corpus):
    one = TokenDataset(encode_texts(["只有一篇文档。它有两句话。"], tok_dir, tmp_path / "one"))
    sp, vocab = special_ids(tok), tok.get_vocab_size()
    with pytest.raises(InputError, match="sentence_task 'nsp' needs at least 2 documents"):
        ShardPairs(one, MLMConfig(), sp, vocab, seed=0)
    sop = ShardPairs(one, MLMConfig(sentence_task="sop"), sp, vocab, seed=0)
    assert sop.pair(0).a_doc == sop.pair(0).b_doc == 0
    bpe_dir = train_tokenizer(corpus["en"][:20], TokenizerConfig(vocab_size=300), tmp_path / "bpe")
    gpt = TokenDataset(encode_texts(corpus["en"][:5], bpe_dir, tmp_path / "gpt"))
    with pytest.raises(InputError, match=r"shard-00000.wrd does not exist.*WordPiece"):
        ShardPairs(gpt, MLMConfig(), sp, vocab, seed=0)


# --------------------------------------------------------------------------- masking


def _originals(src: BertPretrainSource, index: int, shape: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The unmasked ids of micro-batch `index` (padded) and each row's word ids."""
    original = np.full(shape, src.pairs.specials.pad)
    words = []
    for r in range(shape[0]):
        ids, _, w, _ = src.pairs.example(index * src.batch_size + r)
        original[r, : len(ids)] = ids
        words.append(w)
    return original, words


def test_masks_at_the_expected_rate(pairs):
    src, _ = source(pairs, "nsp", 64, seed=3, whole_word="off")
    sp = src.pairs.specials
    n = {"eligible": 0, "selected": 0, "mask": 0, "random": 0, "kept": 0}
    for i in range(4):
        b = src.micro_batch(i)
        original, _ = _originals(src, i, tuple(b["input_ids"].shape))
        labels, inputs = b["labels"].numpy(), b["input_ids"].numpy()
        selected = labels != IGNORE
        special = np.isin(original, sp.all)
        assert not (selected & special).any()  # specials and padding are never chosen
        assert np.array_equal(labels[selected], original[selected])
        assert np.array_equal(inputs[~selected], original[~selected])  # only chosen tokens change
        assert np.array_equal(b["attention_mask"].numpy() == 0, original == sp.pad)
        n["eligible"] += (~special).sum()
        n["selected"] += selected.sum()
        n["mask"] += (inputs[selected] == sp.mask).sum()
        n["kept"] += (inputs[selected] == original[selected]).sum()
        n["random"] += ((inputs[selected] != original[selected]) & (inputs[selected] != sp.mask)).sum()
        assert not np.isin(inputs[selected & (inputs != sp.mask)], sp.all).any()  # random tokens are ordinary
    assert n["eligible"] > 20_000
    assert abs(n["selected"] / n["eligible"] - 0.15) < 0.005
    assert abs(n["mask"] / n["selected"] - 0.8) < 0.03
    assert abs(n["random"] / n["selected"] - 0.1) < 0.02
    assert abs(n["kept"] / n["selected"] - 0.1) < 0.02


def test_whole_word_masking_on_chinese(pairs):
    src, _ = source(pairs, "nsp", 64, lang="zh")
    multi, selected_total, eligible_total = 0, 0, 0
    for i in range(3):
        b = src.micro_batch(i)
        _, words = _originals(src, i, tuple(b["input_ids"].shape))
        for r, w_ids in enumerate(words):
            chosen = (b["labels"][r, : len(w_ids)] != IGNORE).numpy()
            for w in range(w_ids.max() + 1):
                inside = chosen[w_ids == w]
                assert inside.all() or not inside.any()  # a word is masked whole or not at all
                multi += inside.all() and len(inside) > 1
            selected_total += chosen.sum()
            eligible_total += (w_ids >= 0).sum()
    assert multi > 100
    assert abs(selected_total / eligible_total - 0.15) < 0.01


# --------------------------------------------------------------------------- sources


def test_batches_are_a_pure_function_of_seed_and_index(pairs):
    a, cfg = source(pairs, "nsp", 16, seed=7)
    b = BertPretrainSource(pairs("nsp"), cfg, 16, seed=7)
    assert isinstance(a, BatchSource)
    late = a.micro_batch(500)  # out of order: no sequential state
    for i in (0, 1, 500):
        x, y = a.micro_batch(i), b.micro_batch(i)
        assert x.keys() == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
        for k in x:
            assert x[k].dtype == torch.int64 and torch.equal(x[k], y[k]), k
    assert all(torch.equal(late[k], a.micro_batch(500)[k]) for k in late)
    assert not torch.equal(a.micro_batch(0)["labels"], a.micro_batch(1)["labels"])
    c = BertPretrainSource(a.pairs, cfg, 16, seed=8)  # same examples, other masks
    assert not torch.equal(a.micro_batch(0)["input_ids"], c.micro_batch(0)["input_ids"])
    assert torch.equal(a.micro_batch(0)["token_type_ids"], c.micro_batch(0)["token_type_ids"])
    none, _ = source(pairs, "none", 4)
    assert "next_sentence_label" not in none.micro_batch(0)


def test_eval_source_repeats_the_same_batches(pairs):
    p = pairs("nsp", split="val")
    first = eval_source(p, p.cfg, 64, seed=1).micro_batch(2)
    again = eval_source(pairs("nsp", split="val"), p.cfg, 64, seed=1).micro_batch(2)
    assert all(torch.equal(first[k], again[k]) for k in first)


# --------------------------------------------------------------------------- objective and training


def tiny_bert(vocab: int, seed: int = 0) -> BertForPretraining:
    torch.manual_seed(seed)
    return BertForPretraining(BertConfig(vocab_size=vocab, max_position=128, n_layer=2, n_head=2, n_embd=64))


def test_objective_matches_manual_cross_entropy(pairs, tok):
    src, cfg = source(pairs, "nsp", 8)
    batch = src.micro_batch(0)
    model = tiny_bert(tok.get_vocab_size()).eval()
    obj = MaskedLM("nsp")
    assert isinstance(obj, Objective) and obj.terms == ("mlm", "nsp")
    counts = obj.counts(batch)
    assert counts == {"mlm": int((batch["labels"] != IGNORE).sum()), "nsp": 8}
    assert counts["mlm"] > 50
    sums = obj.sums(model, batch)
    mlm, nsp = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    expected_mlm = F.cross_entropy(mlm.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
    expected_nsp = F.cross_entropy(nsp, batch["next_sentence_label"])
    assert sums["mlm"].dtype == torch.float32 and sums["mlm"].shape == ()
    assert torch.allclose(sums["mlm"] / counts["mlm"], expected_mlm, atol=1e-5)
    assert torch.allclose(sums["nsp"] / counts["nsp"], expected_nsp, atol=1e-6)
    assert MaskedLM(cfg).terms == ("mlm", "nsp") and MaskedLM(MLMConfig(sentence_task="none")).terms == ("mlm",)
    none = MaskedLM("none")
    assert none.terms == ("mlm",) and set(none.sums(model, batch)) == {"mlm"}
    with pytest.raises(ConfigError, match="sentence_task must be one of"):
        MaskedLM("mlm")


def test_a_tiny_bert_learns(pairs, tok):
    """30 AdamW steps on real batches lower the MLM loss on other examples well below its log(V) start."""
    src, cfg = source(pairs, "nsp", 32)
    model = tiny_bert(tok.get_vocab_size(), seed=1)
    obj = MaskedLM(cfg.sentence_task)
    held_out = eval_source(pairs("nsp", seed=99), cfg, 64, seed=99).micro_batch(0)  # other examples and masks

    def mlm_loss() -> float:
        model.eval()
        with torch.no_grad():
            return (obj.sums(model, held_out)["mlm"] / obj.counts(held_out)["mlm"]).item()

    before = mlm_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    for step in range(30):
        batch = src.micro_batch(step)
        counts, sums = obj.counts(batch), obj.sums(model, batch)
        loss = sum(sums[t] / counts[t] for t in obj.terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mlm_loss()
    assert before > 7.0  # about log(2000) = 7.6
    assert after < before - 1.0, (before, after)
