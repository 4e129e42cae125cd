import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.label.quality import agreement_report, cohen_kappa, find_label_issues, fleiss_kappa
from lmforge.tasks.builtin import load_task


def test_cohen_kappa_equals_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    for k, n in ((2, 50), (3, 200), (5, 31)):
        a = rng.integers(0, k, n)
        b = np.where(rng.random(n) < 0.6, a, rng.integers(0, k, n))
        assert cohen_kappa([str(x) for x in a], [str(x) for x in b]) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(["a"] * 4, ["a"] * 4) == 1.0
    with pytest.raises(InputError, match="labelled 2 and 3 items"):
        cohen_kappa(["a", "b"], ["a", "b", "c"])


def test_fleiss_kappa_on_the_published_example():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories, kappa 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, n in enumerate(row) for _ in range(n)] for row in counts]
    assert fleiss_kappa(ratings) == pytest.approx(0.2099, abs=1e-4)
    # with two raters per item, Fleiss' kappa is Scott's pi: pooled label shares
    a, b = list("aabbbab"), list("abbbbaa")
    pooled = {x: (a + b).count(x) / 14 for x in "ab"}
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / 7
    expected = sum(v * v for v in pooled.values())
    assert fleiss_kappa(list(zip(a, b, strict=True))) == pytest.approx((observed - expected) / (1 - expected))
    with pytest.raises(InputError, match="at least two labels each"):
        fleiss_kappa([["a"]])


def test_agreement_report_names_pairs_and_the_most_split_items():
    by_item = [{"ann": "pos", "bo": "pos", "cy": "pos"}, {"ann": "neg", "bo": "pos", "cy": "neg"},
               {"ann": "pos", "bo": "neg"}, {"ann": "neg", "bo": "neg", "cy": "neg"}, {"cy": "pos"}]
    report = agreement_report(by_item, item_ids=["a", "b", "c", "d", "e"], texts=["t1", "t2", "t3", "t4", "t5"])
    assert report["annotators"] == ["ann", "bo", "cy"] and report["items_with_2plus"] == 4
    assert report["pairwise"]["ann vs bo"]["items"] == 4 and report["pairwise"]["ann vs bo"]["agreement"] == 0.5
    assert report["pairwise"]["ann vs cy"]["kappa"] == 1.0
    assert [d["item"] for d in report["disagreement_examples"]] == ["c", "b"]  # 1:1 split before 2:1
    assert report["fleiss_kappa"] == pytest.approx(fleiss_kappa([list(r.values()) for r in by_item[:4]]))
    # NER answers are compared token by token
    ner = agreement_report([{"x": ["B-PER", "I-PER", "O"], "y": ["B-PER", "O", "O"]}])
    assert ner["pairwise"]["x vs y"]["items"] == 3 and ner["disagreements"] == 1
    with pytest.raises(InputError, match="different lengths"):
        agreement_report([{"x": ["O"], "y": ["O", "O"]}])


def test_confident_learning_finds_flipped_review_labels():
    from lmforge.label.classifier import cross_val_proba

    rows = load_task("zh_sentiment", max_per_class=1000).train
    rng = np.random.default_rng(0)
    flipped = set(rng.choice(len(rows), len(rows) // 20, replace=False).tolist())
    noisy = [("pos" if e.label == "neg" else "neg") if i in flipped else e.label for i, e in enumerate(rows)]
    probs = cross_val_proba([e.text for e in rows], noisy, ["neg", "pos"], k=5)
    issues = find_label_issues(noisy, probs, ["neg", "pos"])
    found = {r["index"] for r in issues}
    precision, recall = len(found & flipped) / len(found), len(found & flipped) / len(flipped)
    assert recall >= 0.45 and precision >= 3 * len(flipped) / len(rows), (precision, recall)
    assert all(r["given"] != r["suggested"] and r["suggested_prob"] > r["given_prob"] for r in issues)
    assert [r["given_prob"] for r in issues] == sorted(r["given_prob"] for r in issues)
    with pytest.raises(InputError, match="pred_probs has shape"):
        find_label_issues(noisy, probs[:5], ["neg", "pos"])
