import numpy as np
import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.label.weak import (
    ABSTAIN,
    LabelModel,
    WeakConfig,
    apply_lfs,
    build_lfs,
    keyword_lf,
    lexicon_lf,
    lf_summary,
    load_weak_config,
    majority_vote,
    model_lf,
    regex_lf,
    weak_label,
)
from lmforge.tasks.builtin import load_task


def test_keyword_regex_and_lexicon_functions_vote_or_abstain():
    texts = ["房间很干净，服务热情", "房间不干净，很失望", "Great value, RECOMMEND it", "一般般", "不错不错，就是有点吵"]
    assert keyword_lf("kw", ["recommend"], "pos")(texts) == [None, None, "pos", None, None]
    assert regex_lf("rx", r"不(太|很)?干净", "neg")(texts) == [None, "neg", None, None, None]
    lex = lexicon_lf("lex", {"pos": ["干净", "热情", "不错"], "neg": ["失望", "吵", "错"]}, negators=["不"],
                     flip={"pos": "neg"})
    # 不干净 is a negated praise (neg); 不错 is one word, not 错 negated; 2 praises beat 1 complaint
    assert lex(texts) == ["pos", "neg", None, None, "pos"]
    strict = lexicon_lf("lex2", {"pos": ["不错"], "neg": ["吵"]}, min_margin=2)
    assert strict(texts)[4] is None  # 2 vs 1 is not a margin of 2
    with pytest.raises(ConfigError, match="bad pattern"):
        regex_lf("bad", "(", "neg")
    with pytest.raises(ConfigError, match="keywords is empty"):
        keyword_lf("empty", [], "pos")


def test_model_function_votes_only_when_sure():
    proba = lambda texts: np.array([[0.9, 0.1] if "好" in t else [0.4, 0.6] for t in texts])  # noqa: E731
    lf = model_lf("model", proba, ["pos", "neg"], threshold=0.8)
    assert lf(["很好", "还行"]) == ["pos", None]
    with pytest.raises(InputError, match="shape"):
        model_lf("m", lambda t: np.zeros((1, 3)), ["a", "b"])(["x"])


def test_apply_and_summary_on_a_hand_made_matrix():
    lfs = [keyword_lf("a", ["x"], "pos"), keyword_lf("b", ["y"], "neg"), keyword_lf("c", ["z"], "pos")]
    texts = ["x", "xy", "xz", "y", "q"]
    L = apply_lfs(lfs, texts, ["neg", "pos"])
    assert L.tolist() == [[1, -1, -1], [1, 0, -1], [1, -1, 1], [-1, 0, -1], [-1, -1, -1]]
    rows = lf_summary(L, ["a", "b", "c"], ["neg", "pos"], gold=["pos", "neg", "pos", "neg", "pos"])
    a, b, c = rows
    assert a["coverage"] == 0.6 and a["overlap"] == 0.4 and a["conflict"] == 0.2 and a["polarity"] == ["pos"]
    assert (a["correct"], a["incorrect"], a["emp_accuracy"]) == (2, 1, 2 / 3)
    assert b["coverage"] == 0.4 and b["conflict"] == 0.2 and b["emp_accuracy"] == 1.0
    assert c["overlap"] == 0.2 and c["conflict"] == 0.0
    assert majority_vote(L, 2).tolist() == [[0, 1], [0.5, 0.5], [0, 1], [1, 0], [0.5, 0.5]]
    with pytest.raises(ConfigError, match="voted 'maybe', which is not in labels"):
        apply_lfs([keyword_lf("d", ["x"], "maybe")], texts, ["neg", "pos"])


def _simulate(n=6000, seed=0):
    """Gold labels and votes of functions with known behaviour, conditionally independent given the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # (P(vote | y=0), P(vote | y=1)) as [P(vote 0), P(vote 1)], abstaining otherwise
    specs = [([0.60, 0.05], [0.05, 0.60]),   # good, both ways
             ([0.30, 0.20], [0.20, 0.30]),   # weak, both ways
             ([0.30, 0.20], [0.20, 0.30]),   # another weak one
             ([0.50, 0.00], [0.10, 0.00]),   # one-sided: votes 0 only
             ([0.00, 0.05], [0.00, 0.40])]   # one-sided: votes 1 only
    L = np.full((n, len(specs)), ABSTAIN)
    true_acc = []
    for j, (given0, given1) in enumerate(specs):
        u = rng.random(n)
        for cls, probs in ((0, given0), (1, given1)):
            rows = y == cls
            L[rows & (u < probs[0]), j] = 0
            L[rows & (u >= probs[0]) & (u < probs[0] + probs[1]), j] = 1
        right = 0.5 * given0[0] + 0.5 * given1[1]
        true_acc.append(right / (0.5 * sum(given0) + 0.5 * sum(given1)))
    return y, L, np.array(true_acc)


def test_label_model_learns_each_functions_accuracy_without_gold_labels():
    y, L, true_acc = _simulate()
    model = LabelModel(2).fit(L)
    assert np.abs(model.accuracy - true_acc).max() < 0.05, (model.accuracy, true_acc)
    pred, mv = model.predict(L), np.where(majority_vote(L, 2)[:, 1] > 0.5, 1, 0)
    covered = pred != ABSTAIN
    acc_model = (pred[covered] == y[covered]).mean()
    acc_mv = (mv[covered] == y[covered]).mean()
    assert acc_model > acc_mv + 0.03  # weighing the good function above the weak ones pays
    assert np.allclose(model.prior, [0.5, 0.5], atol=0.05)
    with pytest.raises(InputError, match="no labelling function voted"):
        LabelModel(2).fit(np.full((3, 2), ABSTAIN))
    with pytest.raises(ConfigError, match="class_balance must be 2 proportions"):
        LabelModel(2, class_balance=[0.7, 0.7])


def test_config_errors_name_the_function_and_the_label(tmp_path):
    with pytest.raises(ConfigError, match="functions.kw: label 'maybe' is not in labels"):
        build_lfs(WeakConfig.model_validate({"labels": ["neg", "pos"], "functions": [
            {"type": "keyword", "name": "kw", "label": "maybe", "keywords": ["x"]}]}))
    with pytest.raises(ConfigError, match="two labelling functions are named 'a'"):
        build_lfs(WeakConfig.model_validate({"labels": ["neg", "pos"], "functions": [
            {"type": "regex", "name": "a", "label": "neg", "pattern": "x"},
            {"type": "regex", "name": "a", "label": "pos", "pattern": "y"}]}))
    bad = tmp_path / "lfs.yaml"
    bad.write_text("labels: [neg, pos]\nfunctions:\n  - {type: lexicon, name: l, lexicn: {pos: [好]}}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r"functions\[0\]\.lexicon\.lexicn: unknown key|lexicon: Field required"):
        load_weak_config(bad)
    with pytest.raises(InputError, match="labelling functions not found: nope.yaml"):
        load_weak_config("nope.yaml")


def test_builtin_sentiment_functions_label_half_the_reviews_with_over_80_percent_accuracy():
    task = load_task("zh_sentiment")
    config = load_weak_config("zh_sentiment")
    lfs = build_lfs(config)
    assert len(lfs) >= 5 and {lf.kind for lf in lfs} == {"lexicon", "regex", "keyword"}
    rows = task.val
    for method in ("majority", "label_model"):
        result = weak_label([e.text for e in rows], lfs, config.labels, gold=[e.label for e in rows], method=method)
        assert result.metrics["coverage"] > 0.5 and result.metrics["accuracy"] > 0.8, (method, result.metrics)
    by_name = {s["name"]: s for s in result.summary}
    assert all(0 < s["coverage"] < 1 and s["emp_accuracy"] > 0.6 for s in result.summary)
    assert by_name["praise_lexicon"]["polarity"] == ["neg", "pos"]  # negated praise counts as a complaint
    assert all(0.5 < s["learned_accuracy"] < 1 for s in result.summary)


def test_a_fine_tuned_model_as_a_labelling_function(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from lmforge.label.classifier import finetuned_proba
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    rows = load_task("zh_sentiment", max_per_class=60).train
    texts = [e.text for e in rows]
    model_dir = train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=400), tmp_path / "model")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=256, num_labels=2,
                                  id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
                                  pad_token_id=tok.pad_token_id or 0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(str(model_dir))
    proba, labels = finetuned_proba(model_dir, batch_size=8)
    assert labels == ["neg", "pos"]
    batch = proba(texts[:20])
    assert batch.shape == (20, 2) and np.allclose(batch.sum(axis=1), 1.0)
    one_by_one = np.concatenate([proba([t]) for t in texts[:20]])
    assert np.allclose(batch, one_by_one, atol=1e-5)  # padding in a batch changes nothing
    config = WeakConfig.model_validate({"labels": ["neg", "pos"], "functions": [
        {"type": "model", "name": "bert", "path": str(model_dir), "threshold": 0.5}]})
    (lf,) = build_lfs(config)
    assert lf(texts[:20]) == [labels[i] for i in batch.argmax(axis=1)]
    config.labels = ["pos", "neg"]
    with pytest.raises(ConfigError, match=r"functions.bert: the model's labels \['neg', 'pos'\] differ"):
        build_lfs(config)
