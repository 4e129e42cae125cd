from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.collect.builtin import corpus_records
from lmforge.config import validate
from lmforge.errors import ConfigError, InputError
from lmforge.models.bert import BertConfig, BertForPretraining
from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer
from lmforge.train.mlm import (
    BertPretrainSource,
    Examples,
    MaskedLM,
    MLMConfig,
    _tokenize_document,
    build_examples,
    eval_source,
    special_ids,
    split_sentences,
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
def tok(corpus, tmp_path_factory):
    """A small WordPiece vocabulary over both languages, as `lmforge tokenizer train` makes it."""
    out = tmp_path_factory.mktemp("wordpiece")
    return load_tokenizer(train_tokenizer(corpus["zh"] + corpus["en"], TokenizerConfig(kind="wordpiece", vocab_size=2000), out))


@pytest.fixture(scope="module")
def examples(corpus, tok):
    """Examples per (sentence_task, whole_word, max_seq_len), built once for the module."""

    @functools.cache
    def make(task: str = "nsp", whole_word: str = "auto", max_seq_len: int = 128, lang: str = "both", seed: int = 0):
        texts = corpus["zh"] + corpus["en"] if lang == "both" else corpus[lang]
        cfg = MLMConfig(sentence_task=task, whole_word=whole_word, max_seq_len=max_seq_len)
        return build_examples(texts, tok, cfg, seed=seed), cfg

    return make


def rows_of(ex: Examples, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, e = ex.offsets[i], ex.offsets[i + 1]
    return ex.input_ids[s:e], ex.token_type_ids[s:e], ex.word_ids[s:e]


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
    assert parts == ["The value 3.14 is pi.", "See os.path.join for more!", "新年好。", "你去哪里？", "“好的！”",
                     "他说……", "Done"]
    assert "".join("".join(p.split()) for p in parts) == "".join(text.split())


def test_special_ids_need_a_wordpiece_tokenizer(tok, corpus, tmp_path):
    sp = special_ids(tok)
    assert [tok.id_to_token(i) for i in (sp.cls, sp.sep, sp.mask, sp.pad)] == ["[CLS]", "[SEP]", "[MASK]", "[PAD]"]
    assert tok.token_to_id("[UNK]") in sp.all and tok.token_to_id("<|endoftext|>") in sp.all
    bpe = load_tokenizer(train_tokenizer(corpus["en"][:20], TokenizerConfig(vocab_size=300), tmp_path))
    with pytest.raises(InputError, match=r"no cls token \(<\|cls\|> or \[CLS\]\).*tokenizer.kind: wordpiece"):
        special_ids(bpe)


# --------------------------------------------------------------------------- word boundaries


def test_chinese_words_come_from_jieba(tok):
    import jieba

    sentence = "中国人民银行今天发布了新的货币政策。"
    [(ids, starts)] = _tokenize_document(sentence, tok, "auto")
    assert len(ids) == len(sentence)  # WordPiece gives every Han character its own token
    expected = np.zeros(len(sentence), dtype=bool)
    expected[np.cumsum([0] + [len(w) for w in jieba.lcut(sentence)])[:-1]] = True
    assert starts.tolist() == expected.tolist()
    assert starts.sum() < len(sentence)  # some words span several tokens
    [(_, off)] = _tokenize_document(sentence, tok, "off")
    assert off.all()


def test_english_words_group_wordpiece_continuations(tok):
    text = "Interpreters tokenize unparenthesized expressions."
    pieces = tok.encode(text, add_special_tokens=False).tokens
    assert any(p.startswith("##") for p in pieces)
    [(_, on)] = _tokenize_document(text, tok, "on")
    assert on.tolist() == [not p.startswith("##") for p in pieces]
    [(_, auto)] = _tokenize_document(text, tok, "auto")
    assert auto.all()  # auto: whole words only in Chinese-heavy text


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("task", ["nsp", "sop", "none"])
def test_example_layout(examples, task):
    ex, cfg = examples(task)
    sp = ex.specials
    assert len(ex) > 300
    lengths = ex.lengths()
    assert lengths.max() <= cfg.max_seq_len and lengths.min() >= (5 if task != "none" else 3)
    assert (lengths == cfg.max_seq_len).mean() > 0.2  # most examples fill the window ...
    assert (lengths < cfg.max_seq_len // 2).mean() > 0.05  # ... short ones come from short docs and short_seq_prob
    for i in range(len(ex)):
        ids, types, words = rows_of(ex, i)
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


def _doc_index(texts, tok) -> str:
    """Every document's token ids as one string, documents separated, for contiguity checks."""
    return "|" + "|".join(" " + " ".join(map(str, tok.encode(t, add_special_tokens=False).ids)) + " " for t in texts) + "|"


def _segments(ex: Examples, i: int) -> tuple[str, str]:
    ids, _, _ = rows_of(ex, i)
    sep = int(np.flatnonzero(ids == ex.specials.sep)[0])
    return " ".join(map(str, ids[1:sep])), " ".join(map(str, ids[sep + 1 : -1]))


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_sentence_pairs(examples, corpus, tok, task):
    """Label 0: B continues A in the same document. NSP 1: B is from another document. SOP 1: B precedes A."""
    ex, cfg = examples(task)
    labels = ex.next_sentence_label
    assert 0.42 < labels.mean() < 0.58
    index = _doc_index(corpus["zh"] + corpus["en"], tok)
    untruncated = [i for i in range(len(ex)) if ex.lengths()[i] < cfg.max_seq_len]
    checked = {0: 0, 1: 0}
    for i in untruncated:
        a, b = _segments(ex, i)
        assert f" {a} " in index and f" {b} " in index
        in_order, reversed_ = f" {a} {b} " in index, f" {b} {a} " in index
        if labels[i] == 0:
            assert in_order
        elif task == "sop":
            assert reversed_
        else:
            checked[1] += not in_order
            continue
        checked[labels[i]] += 1
    assert checked[0] > 50 and checked[1] > 50  # NSP: a random B almost never continues A by chance


def test_examples_are_deterministic_and_persist(examples, tmp_path):
    ex, _ = examples("nsp")
    again, _ = examples("nsp", seed=0, whole_word="auto", max_seq_len=128, lang="both")
    other, _ = examples("nsp", seed=1)
    assert np.array_equal(ex.input_ids, again.input_ids)
    assert not np.array_equal(ex.next_sentence_label[:200], other.next_sentence_label[:200])
    loaded = Examples.load(ex.save(tmp_path / "examples.npz"))
    for name in ("input_ids", "token_type_ids", "word_ids", "offsets", "next_sentence_label"):
        assert np.array_equal(getattr(loaded, name), getattr(ex, name)), name
    assert (loaded.vocab_size, loaded.specials) == (ex.vocab_size, ex.specials)
    with pytest.raises(InputError, match="cannot read MLM examples"):
        Examples.load(tmp_path / "missing.npz")


def test_nsp_needs_two_documents(tok):
    with pytest.raises(InputError, match="sentence_task 'nsp' needs at least 2 documents"):
        build_examples(["只有一篇文档。它有两句话。"], tok, MLMConfig(), seed=0)
    sop = build_examples(["只有一篇文档。它有两句话。"], tok, MLMConfig(sentence_task="sop"), seed=0)
    assert len(sop) == 1


# --------------------------------------------------------------------------- masking


def test_masking_statistics(examples):
    ex, _ = examples("nsp", whole_word="off")
    src = BertPretrainSource(ex, MLMConfig(whole_word="off"), batch_size=64, seed=3)
    sp = ex.specials
    n = {"eligible": 0, "selected": 0, "mask": 0, "random": 0, "kept": 0}
    for i in range(4):
        b = src.micro_batch(i)
        original = np.full(b["input_ids"].shape, sp.pad)
        for r, row in enumerate(src.rows(i)):
            ids, _, _ = rows_of(ex, row)
            original[r, : len(ids)] = ids
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


def test_whole_word_masking_on_chinese(examples):
    ex, cfg = examples("nsp", whole_word="auto", lang="zh")
    src = BertPretrainSource(ex, cfg, batch_size=64, seed=0)
    multi, selected_total, eligible_total = 0, 0, 0
    for i in range(3):
        b = src.micro_batch(i)
        for r, row in enumerate(src.rows(i)):
            _, _, words = rows_of(ex, row)
            chosen = (b["labels"][r, : len(words)] != IGNORE).numpy()
            for w in range(words.max() + 1):
                inside = chosen[words == w]
                assert inside.all() or not inside.any()  # a word is masked whole or not at all
                multi += inside.all() and len(inside) > 1
            selected_total += chosen.sum()
            eligible_total += (words >= 0).sum()
    assert multi > 100
    assert abs(selected_total / eligible_total - 0.15) < 0.01


# --------------------------------------------------------------------------- sources


def test_batches_are_a_pure_function_of_seed_and_index(examples, tok, corpus):
    ex, cfg = examples("nsp")
    rebuilt = build_examples(corpus["zh"] + corpus["en"], tok, cfg, seed=0)
    a, b = BertPretrainSource(ex, cfg, 16, seed=7), BertPretrainSource(rebuilt, cfg, 16, seed=7)
    assert isinstance(a, BatchSource)
    late = a.micro_batch(500)  # out of order: no sequential state
    for i in (0, 1, 500):
        x, y = a.micro_batch(i), b.micro_batch(i)
        assert x.keys() == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
        for k in x:
            assert x[k].dtype == torch.int64 and torch.equal(x[k], y[k]), k
    assert all(torch.equal(late[k], a.micro_batch(500)[k]) for k in late)
    assert not torch.equal(a.micro_batch(0)["labels"], a.micro_batch(1)["labels"])
    c = BertPretrainSource(ex, cfg, 16, seed=8)
    assert not torch.equal(a.micro_batch(0)["input_ids"], c.micro_batch(0)["input_ids"])


def test_each_epoch_visits_every_example_once(examples):
    ex, cfg = examples("sop")
    src = BertPretrainSource(ex, cfg, batch_size=50, seed=0)
    n = len(src)
    per_epoch = -(-n // 50)
    seen = np.concatenate([src.rows(i) for i in range(2 * per_epoch)])
    assert sorted(seen[:n]) == list(range(n))
    assert sorted(seen[n : 2 * n]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n : 2 * n])  # a new order each epoch
    assert "next_sentence_label" in src.micro_batch(0)
    none_ex, none_cfg = examples("none")
    assert "next_sentence_label" not in BertPretrainSource(none_ex, none_cfg, 4, 0).micro_batch(0)


def test_eval_source_covers_examples_in_order(examples):
    ex, cfg = examples("nsp")
    ev = eval_source(ex, cfg, batch_size=64)
    rows = np.concatenate([ev.rows(i) for i in range(ev.num_batches)])
    assert rows.tolist() == list(range(len(ex)))
    assert len(ev.rows(ev.num_batches - 1)) == len(ex) - 64 * (ev.num_batches - 1)
    assert torch.equal(ev.micro_batch(2)["input_ids"], eval_source(ex, cfg, 64).micro_batch(2)["input_ids"])


# --------------------------------------------------------------------------- objective and training


def tiny_bert(vocab: int, seed: int = 0) -> BertForPretraining:
    torch.manual_seed(seed)
    return BertForPretraining(BertConfig(vocab_size=vocab, max_position=128, n_layer=2, n_head=2, n_embd=64))


def test_objective_matches_manual_cross_entropy(examples, tok):
    ex, cfg = examples("nsp")
    batch = BertPretrainSource(ex, cfg, 8, seed=0).micro_batch(0)
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


def test_a_tiny_bert_learns(examples, tok):
    """30 AdamW steps on real batches lower the held-out MLM loss well below its log(V) start."""
    ex, cfg = examples("nsp")
    model = tiny_bert(tok.get_vocab_size(), seed=1)
    obj, src = MaskedLM(cfg.sentence_task), BertPretrainSource(ex, cfg, 32, seed=0)
    held_out = eval_source(ex, cfg, 64, seed=99).micro_batch(0)

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
