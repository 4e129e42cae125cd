"""`lmforge augment`: only training examples are augmented, nothing leaks into validation/test, NER stays aligned."""

import json

import pytest

from lmforge.augment.task import AugmentTaskConfig, augment_task, load_labelled, run_augment
from lmforge.config import validate
from lmforge.errors import ConfigError
from lmforge.tasks.examples import ClassificationExample, NerExample
from lmforge.tasks.loaders import load_examples
from lmforge.tasks.spans import repair_bio
from lmforge.tasks.splits import make_task

SMALL = make_task("classification", [ClassificationExample(text=t, label=y) for t, y in [
    ("这家酒店的房间很干净，服务也很热情，下次还会再来。", "pos"), ("房间太小了，空调的声音很大，晚上根本睡不着。", "neg"),
    ("快递很快，包装完好，书的印刷质量也不错。", "pos"), ("价格偏高，早餐的品种太少，不值这个价钱。", "neg")]],
    val_frac=0, test_frac=0)


def config(data, *operations, seed=0):
    return validate(AugmentTaskConfig, {"data": data, "seed": seed, "operations": list(operations)})


def entities(tokens, tags, sep):
    """(text, type) of each BIO entity."""
    out, cur = [], None
    for tok, tag in zip(tokens, tags, strict=True):
        if tag.startswith("B-") or (tag.startswith("I-") and (cur is None or cur[1] != tag[2:])):
            cur = [[tok], tag[2:]]
            out.append(cur)
        elif tag.startswith("I-"):
            cur[0].append(tok)
        else:
            cur = None
    return [(sep.join(t), k) for t, k in out]


def test_only_train_is_augmented_and_evaluation_splits_are_untouched(tmp_path):
    cfg = config({"builtin": "zh_sentiment", "train_limit": 60}, {"eda": {"num_aug": 3}})
    result = run_augment(cfg, tmp_path / "run")
    plain = load_labelled(cfg.data, 0)
    data = result.data
    assert [e.text for e in data.val] == [e.text for e in plain.val]
    assert [e.text for e in data.test] == [e.text for e in plain.test]
    originals = {e.meta["id"]: e for e in data.train if "augmented_from" not in e.meta}
    copies = [e for e in data.train if "augmented_from" in e.meta]
    assert len(originals) == 60 and len(copies) == result.stats["augmented"] > 100
    for c in copies:
        assert c.label == originals[c.meta["augmented_from"]].label
    held_out = {e.text for e in data.val + data.test}
    assert not any(c.text in held_out for c in copies)
    # the file: every split, copies with meta; lmforge finetune's loader keeps the splits
    rows = [json.loads(line) for line in result.path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(data.train) + len(data.val) + len(data.test)
    assert {r["meta"]["augment"]["op"] for r in rows if "meta" in r} >= {"synonym_replacement", "random_swap"}
    task = make_task("classification", load_examples(result.path), seed=1)
    assert (len(task.train), len(task.val), len(task.test)) == (len(data.train), len(data.val), len(data.test))
    stats = result.stats  # the augment step's summary: the runner puts it in RUN/stats.json
    assert stats["operations"]["eda"]["in"] == 60 and stats["source"]["license"] == "MIT"


def test_a_copy_equal_to_a_held_out_text_is_dropped(tmp_path):
    rows = [{"text": "alpha beta", "label": "x", "split": "train"},
            {"text": "gamma delta", "label": "y", "split": "train"},
            {"text": "beta alpha", "label": "x", "split": "val"},
            {"text": "epsilon zeta", "label": "y", "split": "test"}]
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    swap_only = {"eda": {"alpha_sr": 0, "alpha_ri": 0, "p_rd": 0, "alpha_rs": 0.5, "num_aug": 1}}
    result = run_augment(config({"path": str(path)}, swap_only), tmp_path / "run")
    texts = [e.text for e in result.data.train]
    assert result.stats["leak_dropped"] == 1 and "beta alpha" not in texts
    assert texts == ["alpha beta", "gamma delta", "delta gamma"]
    assert [e.text for e in result.data.val] == ["beta alpha"]


def test_ner_labels_stay_aligned_with_their_entities():
    data = load_labelled(validate(AugmentTaskConfig, {"data": {"builtin": "zh_ner", "options": {"max_sentences": 80}},
                                                      "operations": ["eda"]}).data, 0)
    out, report = augment_task(data, config({"builtin": "zh_ner"}, {"eda": {"num_aug": 2}}).operations)
    originals = {e.meta["id"]: e for e in out.train if "augmented_from" not in e.meta}
    copies = [e for e in out.train if "augmented_from" in e.meta]
    assert len(copies) > 60 and report["augmented"] == len(copies)
    for c in copies:
        src = originals[c.meta["augmented_from"]]
        assert len(c.tokens) == len(c.tags) and all(len(t) == 1 for t in c.tokens)  # still one token per character
        assert repair_bio(c.tags) == c.tags
        assert entities(c.tokens, c.tags, "") == entities(src.tokens, src.tags, "")
        assert "".join(c.tokens) != "".join(src.tokens)


def test_word_tokenized_ner_keeps_tokens_as_words():
    first, second = "Alice met Bob in the old town of Paris yesterday", "the New York office opened a small new branch"
    train = [NerExample(tokens=first.split(), tags=["B-PER", "O", "B-PER", "O", "O", "O", "O", "O", "B-LOC", "O"]),
             NerExample(tokens=second.split(), tags=["O", "B-LOC", "I-LOC", "O", "O", "O", "O", "O", "O"])]
    data = make_task("ner", train * 3, seed=0, val_frac=0, test_frac=0, dedupe=False)
    out, _ = augment_task(data, config({"builtin": "zh_ner"}, {"eda": {"num_aug": 4}}).operations)
    copies = [e for e in out.train if "augmented_from" in e.meta]
    assert copies
    for c in copies:
        assert len(c.tokens) == len(c.tags)
        got = entities(c.tokens, c.tags, " ")
        assert got in ([("Alice", "PER"), ("Bob", "PER"), ("Paris", "LOC")], [("New York", "LOC")])


def test_operations_are_typed_and_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"operations\[0\]\.eda\.alpha_sr: Input should be less than or equal to 1"):
        config({"builtin": "zh_sentiment"}, {"eda": {"alpha_sr": 2}})
    with pytest.raises(ConfigError, match="each operation is one of eda, back_translate, contextual_substitute"):
        config({"builtin": "zh_sentiment"}, {"eda": {}, "back_translate": {"forward": "a", "backward": "b"}})
    with pytest.raises(ConfigError, match=r"operations\[0\]\.synonyms: unknown key"):
        config({"builtin": "zh_sentiment"}, {"synonyms": {}})
    twice = config({"builtin": "zh_sentiment"}, {"eda": {"seed": 3}}, {"eda": {"seed": 3}})
    with pytest.raises(ConfigError, match=r"operations\[1\]: another eda already uses seed 3"):
        augment_task(SMALL, twice.operations)
    with pytest.raises(ConfigError, match="augmentation needs a classification or ner task"):
        load_labelled(config({"builtin": "instructions"}, "eda").data, 0)


def test_two_operations_of_one_kind_make_different_copies():
    out, report = augment_task(SMALL, config({"builtin": "zh_sentiment"}, "eda", "eda").operations)
    copies = [e for e in out.train if "augmented_from" in e.meta]
    ids = [e.meta["id"] for e in copies]
    assert len(ids) == len(set(ids)) == report["augmented"] > 4
    assert set(report["operations"]) == {"eda[0]", "eda[1]"}
    assert len({e.text for e in copies}) > 0.8 * len(copies)  # the same seed twice would repeat every copy


def test_augment_command_writes_the_file_and_reports_errors(tmp_path, lmforge_cli):
    recipe = tmp_path / "aug.yaml"
    recipe.write_text("name: t\naugment:\n  data: {builtin: zh_sentiment, train_limit: 20}\n"
                      "  operations:\n    - eda: {num_aug: 2}\n", encoding="utf-8")
    done = lmforge_cli("augment", str(recipe), "--out", str(tmp_path / "run"), "--preview", "2")
    assert done.returncode == 0, done.stderr
    assert "train 20 +" in done.stdout and done.stdout.count("\n  - ") == 2 and (tmp_path / "run" / "augmented.jsonl").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment:\n  data: {builtin: zh_sentiment}\n  operations: [{eda: {p_rd: -1}}]\n", encoding="utf-8")
    failed = lmforge_cli("augment", str(bad))
    assert failed.returncode == 2 and "augment.operations[0].eda.p_rd: Input should be greater than or equal to 0" in failed.stdout + failed.stderr
    other = tmp_path / "other.yaml"
    other.write_text("input: {builtin: {}}\n", encoding="utf-8")
    failed = lmforge_cli("augment", str(other))
    assert failed.returncode == 2 and "needs an 'augment:' section" in failed.stdout + failed.stderr
