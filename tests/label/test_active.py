import numpy as np
import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.label.active import (
    Curve,
    distances_to,
    entropy,
    kcenter,
    learning_curve,
    least_confidence,
    margin,
    mean_curves,
    schedule,
    select,
)
from lmforge.label.classifier import TextClassifier
from lmforge.tasks.builtin import load_task

pytest.importorskip("sklearn")


def test_uncertainty_scores_by_hand():
    p = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])
    assert np.allclose(entropy(p), [np.log(2), -(0.9 * np.log(0.9) + 0.1 * np.log(0.05)), -(0.4 * np.log(0.4) + 0.6 * np.log(0.3))])
    assert np.allclose(margin(p), [1.0, 0.15, 0.9])
    assert np.allclose(least_confidence(p), [0.5, 0.1, 0.6])
    # three classes: entropy prefers the spread-out row, margin the tied top two
    labelled = np.zeros(3, bool)
    assert select(1, "entropy", labelled=labelled, probs=p)[0] == 2
    assert select(1, "margin", labelled=labelled, probs=p)[0] == 0


def test_two_classes_entropy_margin_and_least_confidence_agree():
    rng = np.random.default_rng(0)
    q = rng.random(500)
    p = np.stack([q, 1 - q], axis=1)
    labelled = rng.random(500) < 0.3
    picks = {s: select(40, s, labelled=labelled, probs=p).tolist() for s in ("entropy", "margin", "least_confidence")}
    assert picks["entropy"] == picks["margin"] == picks["least_confidence"]
    assert not labelled[picks["entropy"]].any()
    assert np.abs(q[picks["entropy"]] - 0.5).max() <= np.sort(np.abs(q[~labelled] - 0.5))[39] + 1e-12


def test_kcenter_picks_far_apart_items_first():
    # two tight clusters and one outlier on the unit circle; one item of cluster A is labelled
    angles = np.array([0.0, 0.01, 0.02, 1.5, 1.51, 1.52, 3.0])
    Z = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labelled = np.zeros(7, bool)
    labelled[0] = True
    picked = kcenter(Z, labelled, np.flatnonzero(~labelled), 2)
    assert picked.tolist() == [6, 3]  # the outlier (farthest from A), then cluster B
    pool = np.flatnonzero(~labelled)
    assert kcenter(Z, labelled, pool, 2, distances_to(Z, pool, np.array([0]))).tolist() == [6, 3]
    assert select(7, "diversity", labelled=labelled, embeddings=Z).shape == (6,)
    with pytest.raises(InputError, match="diversity sampling needs embeddings"):
        select(1, "diversity", labelled=labelled)
    with pytest.raises(InputError, match="margin sampling needs the model's probabilities"):
        select(1, "margin", labelled=labelled)
    with pytest.raises(ConfigError, match="strategy must be one of"):
        select(1, "loudest", labelled=labelled)


def test_schedule_and_random_selection_are_reproducible():
    assert schedule(100, 400, growth=0.5, min_batch=50) == [100, 150, 225, 338, 400]
    labelled = np.zeros(50, bool)
    assert select(5, "random", labelled=labelled, seed=3).tolist() == select(5, "random", labelled=labelled, seed=3).tolist()
    assert len(select(99, "random", labelled=labelled)) == 50


def test_learning_curves_on_real_reviews():
    task = load_task("zh_sentiment", max_per_class=400)
    pool, test = task.train, task.val + task.test
    model = TextClassifier([e.text for e in pool], ["neg", "pos"])
    X = model.transform([e.text for e in test])
    y, gold = [e.label for e in pool], [e.label for e in test]
    curves = [learning_curve(model, y, X, gold, s, seed=0, start=40, growth=0.5, min_batch=40)
              for s in ("random", "entropy")]
    for c in curves:
        assert [n for n, _ in c.points] == schedule(40, len(pool), 0.5, 40)
        assert c.points[-1][1] == curves[0].points[-1][1]  # all labels: the same model
        assert c.points[-1][1] > c.points[0][1] + 0.1  # more labels help
    assert curves[0].points[0] == curves[1].points[0]  # the same random start
    stopped = learning_curve(model, y, X, gold, "entropy", seed=0, start=40, growth=0.5, min_batch=40,
                             stop_at=curves[1].points[2][1])
    assert stopped.points == curves[1].points[:3] and stopped.labels_to_reach(stopped.points[-1][1]) == stopped.points[2][0]
    means = mean_curves(curves + [Curve("random", 1, [(40, 0.5)])])
    assert means["random"][0] == (40, (curves[0].points[0][1] + 0.5) / 2, 2)


@pytest.mark.slow
def test_uncertainty_sampling_reaches_full_data_accuracy_with_fewer_labels_than_random():
    task = load_task("zh_sentiment")
    model = TextClassifier([e.text for e in task.train], task.labels)
    X = model.transform([e.text for e in task.test])
    y, gold = [e.label for e in task.train], [e.label for e in task.test]
    model.fit(np.arange(len(y)), y)
    full = float((np.asarray(task.labels)[model.proba(X=X).argmax(axis=1)] == np.asarray(gold)).mean())
    for seed in (0, 1):  # the benchmark's schedule; labels to reach full accuracy differ by seed, not the order
        needed = {s: learning_curve(model, y, X, gold, s, seed=seed, growth=0.2, stop_at=full).labels_to_reach(full)
                  for s in ("random", "entropy")}
        assert needed["entropy"] is not None and needed["entropy"] < 0.8 * (needed["random"] or len(y)), needed
