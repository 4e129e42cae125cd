"""The fast quality classifier: its features (C and Python alike), training, saving, and the stage in a run."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.quality import features
from lmforge.quality.fast import QualityModel, train_quality_model
from lmforge.quality.features import Featurizer, _py_features

TEXTS = [
    "Hello World 2024!\nThe quick brown fox jumps.\nThe quick brown fox jumps.\n",
    "今天天气很好。我们去公园散步，看见了１２３只鸟！\nＡＢＣ abc, naïve café — ok?",
    "",
    "\n\n \t\r\n",
    "Home | News » World › Asia\nLogin\nRegister\n© 2024",
    "𠀀𠀁 ext-B characters and emoji 😀 mixed with كلمة عربية",
]


def _row(matrix, i: int) -> dict[int, float]:
    row = matrix.getrow(i)
    return dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))


@pytest.mark.parametrize("ngrams", [1, 2, 3])
def test_the_c_extension_and_python_compute_the_same_features(ngrams):
    pytest.importorskip("lmforge.quality._features")
    m = Featurizer(bits=16, ngrams=ngrams).matrix(TEXTS)
    for i, text in enumerate(TEXTS):
        want = _py_features(text, 16, ngrams, 100_000)
        got = _row(m, i)
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-6 for k in got)


def test_scores_in_c_equal_the_sparse_product():
    f = Featurizer(bits=14)
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(3, f.dim)).astype(np.float32), np.array([0.5, -1, 2], np.float32)
    want = f.matrix(TEXTS) @ weight.T + bias
    assert np.abs(f.scores(TEXTS, weight, bias) - want).max() < 1e-4


def test_without_the_c_extension_python_gives_the_same_scores(monkeypatch):
    pytest.importorskip("lmforge.quality._features")
    f = Featurizer(bits=14)
    weight, bias = np.random.default_rng(1).normal(size=(1, f.dim)).astype(np.float32), np.zeros(1, np.float32)
    compiled = f.scores(TEXTS, weight, bias)
    monkeypatch.setitem(__import__("sys").modules, "lmforge.quality._features", None)  # as if no compiler was there
    features._extension.cache_clear()
    try:
        assert np.allclose(f.scores(TEXTS, weight, bias), compiled, atol=1e-4)
    finally:
        features._extension.cache_clear()


def test_tokens_fold_case_width_and_digits_and_chinese_is_read_by_character():
    f = Featurizer(bits=20, ngrams=2)
    same = f.matrix(["Price 1999 ＡＢＣ", "price 2024 abc", "Price 1999 ABC!"])
    assert _row(same, 0) == _row(same, 1)  # case, full width and digits fold; the "!" is a token of its own
    assert _row(same, 0) != _row(same, 2)
    # Chinese: characters are tokens, so two texts sharing a word share its character bigram
    zh = f.matrix(["我们喜欢北京", "北京很大", "上海很大"])
    a, b, c = (set(_row(zh, i)) for i in range(3))
    assert len(a & b) > len(a & c) - 8 + 1  # 北, 京, 北京 shared beyond the shape slots


def test_shape_features_see_repeated_lines_that_ngrams_cannot():
    text = "First line of a report.\nSecond line, with more words in it.\nThird line ends here."
    doubled = "\n".join(line for line in text.splitlines() for _ in range(2))
    f = Featurizer(bits=20)
    a, b = (_row(f.matrix([t]), 0) for t in (text, doubled))
    shape_a = {k for k, v in a.items() if v == 1.0}
    shape_b = {k for k, v in b.items() if v == 1.0}
    assert shape_a != shape_b  # repeated-line share, line count
    ngram_a = {k: v for k, v in a.items() if k not in shape_a | shape_b}
    ngram_b = {k: v for k, v in b.items() if k not in shape_a | shape_b}
    assert ngram_a.keys() <= ngram_b.keys()  # plus the bigrams across the repeated line breaks


def test_only_max_chars_are_read_so_a_huge_line_costs_what_its_head_costs():
    f = Featurizer(bits=18, max_chars=10_000)
    head = "words and more words " * 500  # 10,500 chars
    huge = head + "x" * 50_000_000
    t0 = time.perf_counter()
    got = f.scores([huge], np.ones((1, f.dim), np.float32), np.zeros(1, np.float32))
    assert time.perf_counter() - t0 < 1.0
    assert got[0, 0] == pytest.approx(f.scores([head[:10_000]], np.ones((1, f.dim), np.float32),
                                               np.zeros(1, np.float32))[0, 0], abs=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="bits 1..30"):
        Featurizer(bits=40)
    ext = pytest.importorskip("lmforge.quality._features")
    with pytest.raises(TypeError, match="list of str"):
        ext.featurize(["ok", b"bytes"], features.char_table(), 10, 2, 100)
    with pytest.raises(ValueError, match="2\\*\\*bits"):
        ext.score(["ok"], features.char_table(), 10, 2, 100, np.zeros(10, np.float32), np.zeros(1, np.float32))


# --------------------------------------------------------------------------- training on real text


def _corpus(n: int = 240) -> tuple[list[str], list[str]]:
    """Good: People's Daily and Python documentation paragraphs; bad: the same with their words shuffled."""
    from lmforge.collect.builtin import corpus_records
    from lmforge.lang import is_chinese, words

    rng = random.Random(0)
    good = [r.text for r in corpus_records("peoples_daily", limit=n // 2)]
    good += [r.text for r in corpus_records("python_docs", limit=n // 2)]
    bad = []
    for text in good:
        parts = words(text) if is_chinese(text) else text.split()
        rng.shuffle(parts)
        bad.append(("" if is_chinese(text) else " ").join(parts))
    return good, bad


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


def test_a_classifier_learns_shuffled_from_real_text_and_survives_save_and_load(corpus, tmp_path):
    good, bad = corpus
    model = train_quality_model(good[::2] + bad[::2], ["good"] * len(good[::2]) + ["bad"] * len(bad[::2]),
                                bits=18, val_fraction=0.2)
    assert model.kind == "classification" and model.labels == ["bad", "good"] and model.positive == "good"
    assert model.metrics["val_accuracy"] >= 0.85
    held_good, held_bad = model.score(good[1::2]), model.score(bad[1::2])
    accuracy = (np.sum(held_good >= 0.5) + np.sum(held_bad < 0.5)) / (len(held_good) + len(held_bad))
    assert accuracy >= 0.85
    loaded = QualityModel.load(model.save(tmp_path / "m"))
    assert np.allclose(loaded.score(good[1::2]), held_good, atol=1e-6)
    assert json.loads((tmp_path / "m" / "quality.json").read_text())["features"] == {
        "bits": 18, "ngrams": 2, "max_chars": 100_000}


def test_numeric_ratings_give_a_regression_and_classes_give_the_expected_value(corpus):
    good, bad = corpus
    rng = random.Random(1)
    texts, ratings = [], []
    for g, b in zip(good, bad, strict=True):  # a rating: how many of three lines are real text
        k = rng.randint(0, 3)
        lines = [g] * k + [b] * (3 - k)
        rng.shuffle(lines)
        texts.append("\n".join(lines))
        ratings.append(k)
    reg = train_quality_model(texts, ratings, bits=18, val_fraction=0.25, seed=0)
    assert reg.kind == "regression" and reg.metrics["val_pearson"] > 0.6
    cls = train_quality_model(texts, ratings, kind="classification", bits=18, val_fraction=0.25)
    assert cls.labels == ["0", "1", "2", "3"] and cls.positive is None
    probs = cls.probabilities(texts[:5])
    assert np.allclose(cls.score(texts[:5]), probs @ np.arange(4), atol=1e-9)


def test_training_errors_say_what_is_wrong():
    from lmforge.errors import ConfigError, InputError

    with pytest.raises(InputError, match="at least 4 labelled texts"):
        train_quality_model(["a", "b"], ["x", "y"])
    with pytest.raises(InputError, match="two labels at least"):
        train_quality_model(["a b", "c d", "e f", "g h"], ["ok"] * 4)
    with pytest.raises(ConfigError, match="which label is good quality"):
        train_quality_model(["a b", "c d", "e f", "g h"], ["spam", "ham", "spam", "ham"], val_fraction=0)


# --------------------------------------------------------------------------- the stage in a run


def _write_jsonl(path: Path, texts: list[str], lang: str | None = None) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"{path.stem}-{i}", "text": t, **({"lang": lang} if lang else {})},
                                ensure_ascii=False) + "\n")
    return path


def test_the_cli_trains_from_good_and_bad_corpora_and_the_stage_filters_a_run(corpus, tmp_path, lmforge_cli):
    from lmforge.flow.recipe import parse_recipe
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.pipeline.runner import collect_stats, iter_output, run_pipeline
    from lmforge.quality.scoring import language_of
    from lmforge.records import read_parquet

    good, bad = corpus
    g = _write_jsonl(tmp_path / "good.jsonl", good[::2])
    b = _write_jsonl(tmp_path / "bad.jsonl", bad[::2])
    done = lmforge_cli("quality", "train", "--good", str(g), "--bad", str(b), "--bits", "18",
                       "--out", str(tmp_path / "model"))
    assert done.returncode == 0, done.stderr
    assert "val_accuracy" in done.stdout + done.stderr
    model = QualityModel.load(tmp_path / "model")

    docs = good[1::2] + bad[1::2]
    data = _write_jsonl(tmp_path / "docs.jsonl", docs)
    recipe = parse_recipe({"input": {"files": {"paths": [str(data)]}, "shard_size": 50},
                           "pipeline": [{"quality_classifier": {"model": str(tmp_path / "model"),
                                                                "top_fraction": {"zh": 0.5, "*": 0.25}}}]})
    out = run_pipeline(tmp_path / "run", recipe.input, recipe.stage_specs(), LocalExecutor(2), tmp_path)
    kept = list(iter_output(out))
    dropped = [r for q in sorted(out.glob("quarantine-*.parquet")) for r in read_parquet(q)]
    assert len(kept) + len(dropped) == len(docs)
    scores = dict(zip(docs, model.score(docs), strict=True))
    assert all(r.meta["quality"]["score"] == pytest.approx(scores[r.text], abs=1e-5) for r in kept + dropped)
    for lang, fraction in (("zh", 0.5), ("und", 0.25)):
        mine = [r for r in kept + dropped if language_of(r) == lang]
        kept_mine = [r.meta["quality"]["score"] for r in kept if language_of(r) == lang]
        dropped_mine = [r.meta["quality"]["score"] for r in dropped if language_of(r) == lang]
        assert len(kept_mine) == math.ceil(fraction * len(mine))  # no ties among real scores
        assert min(kept_mine) > max(dropped_mine)  # the best of each language stay
    assert {r.meta["drop_reason"] for r in dropped} == {"quality_below_cutoff"}
    stage = next(s for s in collect_stats(tmp_path / "run")["stages"] if s["name"] == "quality_classifier")
    assert stage["out"] == len(kept) and stage["dropped"] == {"quality_below_cutoff": len(dropped)}


def test_a_missing_model_is_a_one_line_error_at_validation(tmp_path, lmforge_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {{files: {{paths: [{tmp_path / 'x.jsonl'}]}}}}\n"
                      f"pipeline:\n  - quality_classifier: {{model: {tmp_path / 'nope'}, threshold: 0.5}}\n")
    (tmp_path / "x.jsonl").write_text('{"text": "hello"}\n')
    done = lmforge_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "is not a quality classifier (no quality.json" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "stages").exists()  # refused before the input step
