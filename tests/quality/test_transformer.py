"""The transformer classifier stage against a direct transformers forward pass, on tiny models built offline."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lmforge.errors import ConfigError
from lmforge.pipeline.stage import run_chain
from lmforge.records import Record

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmforge.quality.transformer import TransformerQuality  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZH = ["人民日报讯，新年伊始，各地群众以多种方式欢度元旦佳节。", "这本书的内容很好，印刷清晰，送货也很快，值得推荐给大家。",
      "酒店的位置不错，但是房间的隔音太差了，晚上睡不好觉。", "价格要是能再低点就更好了！快递的服务态度不是很好。"]
EN = ["The Python language reference describes the exact syntax and semantics of the language.",
      "A function definition is an executable statement that binds the function name to a function object.",
      "Names refer to objects and are introduced by name binding operations such as assignment.",
      "Exceptions are a means of breaking out of the normal flow of control of a code block."]


def documents() -> list[Record]:
    """Short and long documents in both languages (the long ones pass max_tokens), and one empty one."""
    rng = random.Random(0)
    docs = []
    for i in range(24):
        pool = ZH if i % 2 else EN
        n = 1 + i % 5
        text = " ".join(rng.choice(pool) for _ in range(n))
        docs.append(Record(id=f"d{i:02d}", text=text, lang="zh" if i % 2 else "en"))
    docs.append(Record(id="empty", text="  ", lang="en"))
    return docs


@pytest.fixture(scope="module")
def wordpiece():
    """A BERT WordPiece tokenizer over the fixtures' characters and words, built without training."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w.strip(".,!").lower() for t in EN for w in t.split()} | {c for t in ZH for c in t})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def save_bert(out, tokenizer, **head) -> str:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                  initializer_range=0.3, **head)  # wide weights: scores spread out
    transformers.BertForSequenceClassification(cfg).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def regression_dir(tmp_path_factory, wordpiece):
    """FineWeb-Edu's layout: a BERT with a one-output regression head, its tokenizer beside it."""
    return save_bert(tmp_path_factory.mktemp("edu"), wordpiece, num_labels=1, problem_type="regression")


def direct_scores(model_dir: str, docs: list[Record], max_tokens: int) -> dict[str, float]:
    """One document at a time through transformers itself: the reference."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    out = {}
    with torch.no_grad():
        for r in docs:
            enc = tok(r.text, truncation=True, max_length=max_tokens, return_tensors="pt")
            out[r.id] = model(**enc).logits[0, 0].item()
    return out


def run(stage: TransformerQuality, docs: list[Record]):
    """Kept records, quarantined records and the stage's counters, as an executor would see them."""
    dropped: list[Record] = []
    out, stats = run_chain([stage], [Record(r.id, r.text, lang=r.lang) for r in docs], dropped.append)
    kept = list(out)
    return kept, dropped, stats[0].counters


def test_scores_equal_a_direct_transformers_forward(regression_dir):
    docs = documents()
    kept, dropped, counters = run(TransformerQuality(model=regression_dir, max_tokens=24, batch_size=10,
                                                     model_batch_size=3), docs)
    expected = direct_scores(regression_dir, [r for r in docs if r.text.strip()], 24)
    got = {r.id: r.meta["quality"]["transformer"] for r in kept}
    assert set(got) == set(expected) and len(set(np.round(list(got.values()), 4))) > 10  # not one constant
    assert max(abs(got[k] - expected[k]) for k in expected) < 1e-5
    assert [(r.id, r.meta["drop_reason"]) for r in dropped] == [("empty", "quality_unscored")]
    assert counters["scored_en"] == 13 and counters["scored_zh"] == 12


def test_scores_do_not_depend_on_batching_or_order(regression_dir):
    docs = [r for r in documents() if r.text.strip()]
    one = {r.id: r.meta["quality"]["transformer"] for r in
           run(TransformerQuality(model=regression_dir, max_tokens=40, batch_size=1, model_batch_size=1), docs)[0]}
    shuffled = docs[:]
    random.Random(3).shuffle(shuffled)
    many = {r.id: r.meta["quality"]["transformer"] for r in
            run(TransformerQuality(model=regression_dir, max_tokens=40, batch_size=9, model_batch_size=4),
                shuffled)[0]}
    assert set(one) == set(many) and max(abs(one[k] - many[k]) for k in one) < 1e-5


def test_truncation_is_counted(regression_dir, wordpiece):
    docs = documents()
    lengths = [len(wordpiece(r.text)["input_ids"]) for r in docs if r.text.strip()]
    _, _, counters = run(TransformerQuality(model=regression_dir, max_tokens=30), docs)
    assert counters["truncated"] == sum(n > 30 for n in lengths) and 0 < counters["truncated"] < len(lengths)
    # a page is cut to max_tokens * 12 characters before tokenizing; one whose head is all whitespace is
    # tokenized whole, and one whose head is text keeps its first tokens: both score as transformers does
    odd = [Record("spaces", " " * 5000 + EN[0] * 3, lang="en"), Record("huge", EN[1] * 2000, lang="en")]
    kept, _, counters = run(TransformerQuality(model=regression_dir, max_tokens=30), odd)
    expected = direct_scores(regression_dir, odd, 30)
    assert all(abs(r.meta["quality"]["transformer"] - expected[r.id]) < 1e-5 for r in kept) and len(kept) == 2
    assert counters["truncated"] == 2


def test_top_fraction_keeps_the_best_half_of_each_language(regression_dir):
    docs = [r for r in documents() if r.text.strip()]
    expected = direct_scores(regression_dir, docs, 128)  # the stage reads no more than the model's 128 positions
    kept, dropped, _ = run(TransformerQuality(model=regression_dir, top_fraction=0.5), docs)
    for lang in ("en", "zh"):
        mine = sorted((r for r in docs if r.lang == lang), key=lambda r: -expected[r.id])
        assert {r.id for r in kept if r.lang == lang} == {r.id for r in mine[: len(mine) // 2]}
    assert {r.meta["drop_reason"] for r in dropped} == {"quality_below_cutoff"} and len(dropped) == 12
    cut = dropped[0].meta["transformer_quality"]["cutoff"]
    assert all(r.meta["quality"]["transformer"] >= cut - 1e-4 for r in kept if r.lang == dropped[0].meta[
        "transformer_quality"]["lang"])


def test_ordinal_labels_score_the_expected_class(tmp_path, wordpiece):
    model_dir = save_bert(tmp_path / "stars", wordpiece, num_labels=3, id2label={0: "1", 1: "2", 2: "3"},
                          label2id={"1": 0, "2": 1, "3": 2})
    docs = [r for r in documents() if r.text.strip()][:6]
    kept, _, _ = run(TransformerQuality(model=model_dir, max_tokens=64), docs)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for r in kept:
            enc = wordpiece(r.text, truncation=True, max_length=64, return_tensors="pt")
            p = torch.softmax(model(**enc).logits[0], -1)
            assert r.meta["quality"]["transformer"] == pytest.approx(float(p @ torch.tensor([1.0, 2.0, 3.0])),
                                                                      abs=1e-5)


def test_an_lmforge_fine_tuned_classifier_scores_like_finetuned_proba(tmp_path):
    from lmforge.label.classifier import finetuned_proba
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.heads import SequenceClassifier, save_task_model
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    tok_dir = train_tokenizer(ZH + EN, TokenizerConfig(vocab_size=300), tmp_path / "tok")
    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    model = SequenceClassifier(GPT(GPTConfig(vocab_size=300, block_size=128, n_layer=1, n_head=2, n_embd=32)), 2,
                               pool="last")
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a visible spread of probabilities
    out = save_task_model(model.eval(), tmp_path / "clf", {"kind": "classification", "labels": ["bad", "good"]},
                          tokenizer=tok)
    docs = [r for r in documents() if r.text.strip()]
    kept, _, _ = run(TransformerQuality(model=str(out), positive="good", max_tokens=48, model_batch_size=4), docs)
    proba, labels = finetuned_proba(out, max_len=48)
    expected = proba([r.text for r in docs])[:, labels.index("good")]
    got = {r.id: r.meta["quality"]["transformer"] for r in kept}
    assert np.allclose([got[r.id] for r in docs], expected, atol=1e-5)
    assert expected.std() > 0.01
    with pytest.raises(ConfigError, match=r"labels \['bad', 'good'\] are not numbers; set positive"):
        TransformerQuality(model=str(out))


def test_pickled_and_missing_models_are_refused_by_name(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    (tmp_path / "old" / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    with pytest.raises(ConfigError, match=r"transformer_quality.*pickled weights only \(pytorch_model.bin\)"):
        TransformerQuality(model=str(tmp_path / "old"))
    with pytest.raises(ConfigError, match=r"transformer_quality\.model: .*does not exist"):
        TransformerQuality(model=str(tmp_path / "nowhere"))


def test_bad_score_choices_are_config_errors(regression_dir):
    with pytest.raises(ConfigError, match="score: expected needs labels that are numbers"):
        TransformerQuality(model=regression_dir, score="expected")
    with pytest.raises(ConfigError, match=r"positive: 'good' is not one of the model's labels \['LABEL_0'\]"):
        TransformerQuality(model=regression_dir, score="probability", positive="good")


def test_a_recipe_runs_it_through_the_local_executor(regression_dir, wordpiece, tmp_path):
    from lmforge.flow.recipe import parse_recipe
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.pipeline.runner import collect_stats, iter_output, run_pipeline

    corpus = tmp_path / "docs.jsonl"
    docs = [r for r in documents() if r.text.strip()]
    corpus.write_text("".join(json.dumps({"text": r.text, "lang": r.lang}, ensure_ascii=False) + "\n" for r in docs),
                      encoding="utf-8")
    expected = direct_scores(regression_dir, docs, 30)
    line = float(np.median([expected[r.id] for r in docs if r.lang == "en"]))
    recipe = parse_recipe({"input": {"files": [str(corpus)], "shard_size": 7}, "pipeline": [
        {"transformer_quality": {"model": regression_dir, "max_tokens": 30, "threshold": {"en": line, "*": -1e9}}}]})
    out = run_pipeline(tmp_path / "run", recipe.input, recipe.stage_specs(), LocalExecutor(1), tmp_path)
    kept = list(iter_output(out))
    wanted = [r.text for r in docs if r.lang == "zh" or expected[r.id] >= line]
    assert sorted(r.text for r in kept) == sorted(wanted) and len(wanted) < len(docs)
    stage = collect_stats(tmp_path / "run")["stages"][-1]
    assert stage["name"] == "transformer_quality" and stage["shards"] == 4
    assert stage["counters"]["truncated"] == sum(len(wordpiece(r.text)["input_ids"]) > 30 for r in docs)
    assert stage["dropped"] == {"quality_below_cutoff": len(docs) - len(kept)}
