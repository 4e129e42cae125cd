"""Active learning: which unlabelled items to label next, and learning curves that show what it saves.

Uncertainty sampling asks for the items the current model is least sure about:

- entropy: -sum p log p over all classes;
- margin: 1 - (p_top - p_second), only the two best classes count;
- least_confidence: 1 - p_top.

For two classes all three rank items the same way in exact arithmetic (each is a function of
|p - 0.5|); in floating point entropy is flat near p = 0.5 (quadratic there), so among the most
uncertain items its near-ties break by index where margin still orders them. From three classes
up they differ outright. Diversity sampling ignores the model and covers the data: greedy k-centre
(farthest-first) on embeddings, picking each item farthest from everything labelled or already
picked. `entropy+diversity` takes the most uncertain `pool_factor * k` items and picks k of them
by k-centre, so one batch does not spend its labels on ten near-copies of the same hard review.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lmforge.errors import ConfigError, InputError

Strategy = Literal["random", "entropy", "margin", "least_confidence", "diversity", "entropy+diversity"]
STRATEGIES: tuple[str, ...] = ("random", "entropy", "margin", "least_confidence", "diversity", "entropy+diversity")
UNCERTAINTY = ("entropy", "margin", "least_confidence")


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 - (best - second best): high when the two top classes are close."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return 1.0 - (p[:, -1] - (p[:, -2] if p.shape[1] > 1 else 0.0))


def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """Per row, how unsure the model is (higher: ask a person sooner)."""
    scores = {"entropy": entropy, "margin": margin, "least_confidence": least_confidence}
    if strategy not in scores:
        raise ConfigError(f"uncertainty must be one of {', '.join(scores)} (got {strategy!r})")
    return scores[strategy](probs)


def distances_to(embeddings: np.ndarray, rows: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Per row, the cosine distance to the nearest anchor (rows and anchors index `embeddings`)."""
    Z, A = embeddings[np.asarray(rows)], embeddings[np.asarray(anchors)]
    dist = np.full(len(Z), np.inf)
    for lo in range(0, len(A), 2048):  # bounded memory: rows x 2048 similarities at a time
        dist = np.minimum(dist, 1.0 - (Z @ A[lo:lo + 2048].T).max(axis=1))
    return dist


def kcenter(embeddings: np.ndarray, labelled: np.ndarray, candidates: np.ndarray, k: int,
            distances: np.ndarray | None = None) -> np.ndarray:
    """k candidates chosen farthest-first: each is the one farthest (cosine) from all labelled and chosen items.

    `embeddings` rows should be L2-normalised; with nothing labelled the first pick is the
    candidate farthest from the mean. `distances` (per candidate, to the labelled items) may be
    passed in when the caller keeps them up to date, which saves recomputing them every round.
    """
    candidates = np.asarray(candidates)
    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    Z = embeddings[candidates]
    if distances is not None:
        dist = np.asarray(distances, dtype=np.float64).copy()
    elif np.any(labelled):
        dist = distances_to(embeddings, candidates, np.flatnonzero(labelled))
    else:
        dist = 1.0 - Z @ embeddings.mean(axis=0)
    chosen = []
    for _ in range(k):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, 1.0 - Z @ Z[i])
        dist[i] = -np.inf
    return candidates[np.array(chosen)]


def select(k: int, strategy: Strategy, *, labelled: np.ndarray, probs: np.ndarray | None = None,
           embeddings: np.ndarray | None = None, seed: int = 0, pool_factor: int = 5,
           distances: np.ndarray | None = None) -> np.ndarray:
    """Indices of the next k items to label, among those not `labelled` (a boolean mask over the pool).

    `probs` (pool x classes) is needed for uncertainty strategies, `embeddings` for diversity;
    `distances` (per pool item, to the nearest labelled one) spares diversity recomputing them.
    Ties in uncertainty go to the lower index, so a run is reproducible.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r})")
    labelled = np.asarray(labelled, dtype=bool)
    pool = np.flatnonzero(~labelled)
    k = min(k, len(pool))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if strategy == "random":
        return np.sort(np.random.default_rng(seed).choice(pool, k, replace=False))
    if strategy == "diversity":
        if embeddings is None:
            raise InputError("diversity sampling needs embeddings of the pool")
        return kcenter(embeddings, labelled, pool, k, None if distances is None else distances[pool])
    if probs is None:
        raise InputError(f"{strategy} sampling needs the model's probabilities for the pool")
    score = uncertainty(probs[pool], "entropy" if strategy == "entropy+diversity" else strategy)
    order = pool[np.lexsort((pool, -score))]
    if strategy != "entropy+diversity":
        return order[:k]
    if embeddings is None:
        raise InputError("entropy+diversity sampling needs embeddings of the pool")
    short = order[: pool_factor * k]
    return kcenter(embeddings, labelled, short, k, None if distances is None else distances[short])


# --------------------------------------------------------------------------- learning curves


def schedule(start: int, pool: int, growth: float = 0.15, min_batch: int = 50) -> list[int]:
    """Label counts at which a curve is measured: start, then +max(min_batch, growth * n), up to the pool."""
    if start < 1 or growth < 0 or min_batch < 1:
        raise ConfigError("schedule needs start >= 1, growth >= 0 and min_batch >= 1")
    out, n = [], min(start, pool)
    while True:
        out.append(n)
        if n >= pool:
            return out
        n = min(pool, n + max(min_batch, math.ceil(growth * n)))


@dataclass
class Curve:
    """Accuracy on a fixed test set after each round of labelling, for one strategy and seed."""

    strategy: str
    seed: int
    points: list[tuple[int, float]] = field(default_factory=list)

    def labels_to_reach(self, target: float) -> int | None:
        return next((n for n, acc in self.points if acc >= target), None)


def learning_curve(model: Any, pool_labels: Sequence[str], test_X: Any, test_labels: Sequence[str],
                   strategy: Strategy, seed: int = 0, start: int = 100, growth: float = 0.15, min_batch: int = 50,
                   stop_at: float | None = None, embeddings: np.ndarray | None = None) -> Curve:
    """Simulate labelling with `strategy`: the pool's labels are revealed only for the items it picks.

    `model` is a `classifier.TextClassifier` over the pool. The first `start` labels are random
    (the same for every strategy with the same seed); each round refits, scores the test set
    and picks the next batch. With `stop_at`, the run ends once test accuracy reaches it.
    """
    y = np.asarray(pool_labels)
    gold = np.asarray(test_labels)
    labelled = np.zeros(len(y), dtype=bool)
    labelled[np.random.default_rng([seed, 1]).choice(len(y), min(start, len(y)), replace=False)] = True
    curve = Curve(strategy, seed)
    counts = schedule(start, len(y), growth, min_batch)
    dist = None
    if embeddings is not None and "diversity" in strategy:  # kept up to date instead of recomputed
        dist = distances_to(embeddings, np.arange(len(y)), np.flatnonzero(labelled))
    for target in counts:
        if labelled.sum() < target:
            uses_model = strategy not in ("random", "diversity")
            now = strategy if model.fitted or not uses_model else "random"  # no model yet: random
            probs = model.proba() if uses_model and model.fitted else None
            picked = select(target - int(labelled.sum()), now, labelled=labelled, probs=probs,
                            embeddings=embeddings, seed=seed * 100_003 + target, distances=dist)
            labelled[picked] = True
            if dist is not None:
                dist = np.minimum(dist, distances_to(embeddings, np.arange(len(y)), picked))
        rows = np.flatnonzero(labelled)
        if len(set(y[rows].tolist())) < 2:  # cannot fit yet: every label so far is one class
            curve.points.append((int(labelled.sum()), float((gold == y[rows][0]).mean())))
            model.model = None
            continue
        model.fit(rows, y[rows])
        predicted = np.asarray(model.labels)[model.proba(X=test_X).argmax(axis=1)]
        acc = float((predicted == gold).mean())
        curve.points.append((int(labelled.sum()), acc))
        if stop_at is not None and acc >= stop_at:
            break
    return curve


def mean_curves(curves: Sequence[Curve]) -> dict[str, list[tuple[int, float, int]]]:
    """Per strategy: (labels, mean accuracy, seeds measured) at each label count any seed reached."""
    out: dict[str, list[tuple[int, float, int]]] = {}
    for name in dict.fromkeys(c.strategy for c in curves):
        at: dict[int, list[float]] = {}
        for c in curves:
            if c.strategy == name:
                for n, acc in c.points:
                    at.setdefault(n, []).append(acc)
        out[name] = [(n, float(np.mean(v)), len(v)) for n, v in sorted(at.items())]
    return out
