"""Weak supervision: labelling functions that vote or abstain, and label models that combine them.

A labelling function (LF) encodes one heuristic a person would use (a keyword, a pattern, a
sentiment lexicon, an existing model's confident guesses). Each is noisy and covers part of the
data; combined, they label much of a pool without hand labelling. Two combiners:

- `majority_vote`: each LF's vote counts the same; ties and all-abstain rows stay unlabelled.
- `LabelModel`: learns from how the LFs agree, disagree and abstain on unlabelled data how
  likely each LF's vote (or silence) is under each true class (Dawid–Skene, by
  expectation-maximisation), then weighs the votes accordingly. No gold labels are used.
  snorkel's LabelModel fits a model of the same family by matrix completion; it is not a
  dependency (it pins old library versions).

`lf_summary` reports per function what snorkel's `LFAnalysis` does: polarity, coverage, overlap,
conflict, and with gold labels the empirical accuracy, next to the accuracy the model learned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from lmforge.config import StrictModel, validate
from lmforge.errors import ConfigError, InputError

log = logging.getLogger(__name__)

ABSTAIN = -1


@dataclass(frozen=True)
class LabelingFunction:
    """A named heuristic: `texts -> [label or None]` (None abstains)."""

    name: str
    batch: Callable[[Sequence[str]], list[str | None]]
    kind: str = "custom"

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        return self.batch(texts)


def per_text(name: str, fn: Callable[[str], str | None], kind: str = "custom") -> LabelingFunction:
    """An LF from a function of one text."""
    return LabelingFunction(name, lambda texts: [fn(t) for t in texts], kind)


def keyword_lf(name: str, keywords: Sequence[str], label: str, case_sensitive: bool = False) -> LabelingFunction:
    """Votes `label` when any keyword occurs in the text (a substring: no word boundaries, so Chinese works)."""
    if not keywords:
        raise ConfigError(f"labelling function {name!r}: keywords is empty")
    words = list(keywords) if case_sensitive else [k.lower() for k in keywords]
    return per_text(name, lambda t: label if any(k in (t if case_sensitive else t.lower()) for k in words) else None,
                    "keyword")


def regex_lf(name: str, pattern: str, label: str, ignore_case: bool = True) -> LabelingFunction:
    """Votes `label` when the regular expression matches anywhere in the text."""
    try:
        rx = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ConfigError(f"labelling function {name!r}: bad pattern {pattern!r} ({exc})") from None
    return per_text(name, lambda t: label if rx.search(t) else None, "regex")


def lexicon_lf(name: str, lexicon: Mapping[str, Sequence[str]], negators: Sequence[str] = (),
               flip: Mapping[str, str] | None = None, window: int = 3, min_margin: int = 1) -> LabelingFunction:
    """Counts lexicon hits per label and votes the label with the most, by at least `min_margin`.

    A hit with a negator in the `window` characters before it (不好, "not good") counts for
    `flip[label]` instead, or not at all without a flip. Longer words win over words inside them
    (不错 is one hit, not also 错), because matching goes longest first and consumes the text.
    """
    if not lexicon or not any(lexicon.values()):
        raise ConfigError(f"labelling function {name!r}: the lexicon is empty")
    owner = {w.lower(): label for label, words in lexicon.items() for w in words if w}
    words = sorted(owner, key=len, reverse=True)
    rx = re.compile("|".join(map(re.escape, words)))
    neg = re.compile("(?:" + "|".join(map(re.escape, negators)) + ")$") if negators else None
    flip = dict(flip or {})

    def vote(text: str) -> str | None:
        low = text.lower()
        counts: dict[str, int] = {}
        for m in rx.finditer(low):
            label = owner[m.group()]
            if neg is not None and neg.search(low[max(0, m.start() - window):m.start()]):
                label = flip.get(label)
                if label is None:
                    continue
            counts[label] = counts.get(label, 0) + 1
        if not counts:
            return None
        ranked = sorted(counts.values(), reverse=True) + [0]
        if ranked[0] - ranked[1] < min_margin:
            return None
        return max(counts, key=lambda k: counts[k])

    return per_text(name, vote, "lexicon")


def model_lf(name: str, proba: Callable[[Sequence[str]], np.ndarray], labels: Sequence[str],
             threshold: float = 0.8) -> LabelingFunction:
    """Votes an existing model's top label where its probability reaches `threshold`, else abstains."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"labelling function {name!r}: threshold must be in (0, 1] (got {threshold!r})")

    def batch(texts: Sequence[str]) -> list[str | None]:
        p = np.asarray(proba(list(texts)))
        if p.shape != (len(texts), len(labels)):
            raise InputError(f"labelling function {name!r}: the model gave shape {p.shape} for "
                             f"{len(texts)} texts and {len(labels)} labels")
        best = p.argmax(axis=1)
        return [labels[b] if p[i, b] >= threshold else None for i, b in enumerate(best)]

    return LabelingFunction(name, batch, "model")


# --------------------------------------------------------------------------- config (YAML)


class KeywordSpec(StrictModel):
    type: Literal["keyword"]
    name: str
    label: str
    keywords: list[str] = Field(min_length=1)


class RegexSpec(StrictModel):
    type: Literal["regex"]
    name: str
    label: str
    pattern: str


class LexiconSpec(StrictModel):
    type: Literal["lexicon"]
    name: str
    lexicon: dict[str, list[str]] = Field(description="label -> words that speak for it")
    negators: list[str] = Field(default_factory=list, description="words that negate a following hit")
    flip: dict[str, str] = Field(default_factory=dict, description="label a negated hit counts for")
    window: int = Field(3, ge=1, description="characters before a hit searched for a negator")
    min_margin: int = Field(1, ge=1)


class ModelSpec(StrictModel):
    type: Literal["model"]
    name: str
    path: str = Field(description="a classifier saved by `lmforge finetune` (or an HF directory)")
    threshold: float = Field(0.8, gt=0, le=1)


LFSpec = Annotated[KeywordSpec | RegexSpec | LexiconSpec | ModelSpec, Field(discriminator="type")]


class WeakConfig(StrictModel):
    """A set of labelling functions over a fixed label set (the YAML of `lmforge label weak --lfs`)."""

    labels: list[str] = Field(min_length=2)
    functions: list[LFSpec] = Field(min_length=1)


BUILTIN_LF_SETS = {"zh_sentiment": "zh_sentiment_lfs.yaml"}


def load_weak_config(source: str | Path) -> WeakConfig:
    """A WeakConfig from a YAML file, or a built-in set by name (`zh_sentiment`)."""
    from lmforge.config import load_yaml_file

    path = Path(__file__).parent / "data" / BUILTIN_LF_SETS[str(source)] if str(source) in BUILTIN_LF_SETS \
        else Path(source)
    if not path.is_file():
        raise InputError(f"labelling functions not found: {source} (a YAML file, or one of "
                         f"{', '.join(BUILTIN_LF_SETS)})")
    data = load_yaml_file(path, "labelling functions")
    return validate(WeakConfig, data, where=str(path))


def build_lfs(config: WeakConfig) -> list[LabelingFunction]:
    """The labelling functions of a config; every label they vote must be in `config.labels`."""
    out, names = [], set()
    for spec in config.functions:
        if spec.name in names:
            raise ConfigError(f"functions: two labelling functions are named {spec.name!r}")
        names.add(spec.name)
        used = {spec.label} if isinstance(spec, KeywordSpec | RegexSpec) else \
            set(spec.lexicon) | set(spec.flip.values()) if isinstance(spec, LexiconSpec) else set()
        unknown = sorted(used - set(config.labels))
        if unknown:
            raise ConfigError(f"functions.{spec.name}: label {unknown[0]!r} is not in labels {config.labels}")
        if isinstance(spec, KeywordSpec):
            out.append(keyword_lf(spec.name, spec.keywords, spec.label))
        elif isinstance(spec, RegexSpec):
            out.append(regex_lf(spec.name, spec.pattern, spec.label))
        elif isinstance(spec, LexiconSpec):
            out.append(lexicon_lf(spec.name, spec.lexicon, spec.negators, spec.flip, spec.window, spec.min_margin))
        else:
            from lmforge.label.classifier import finetuned_proba

            proba, model_labels = finetuned_proba(spec.path)
            if model_labels != config.labels:
                raise ConfigError(f"functions.{spec.name}: the model's labels {model_labels} differ from "
                                  f"labels {config.labels}")
            out.append(model_lf(spec.name, proba, model_labels, spec.threshold))
    return out


# --------------------------------------------------------------------------- applying and combining


def apply_lfs(lfs: Sequence[LabelingFunction], texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """The label matrix L: (texts, functions), the voted label's index or ABSTAIN (-1)."""
    index = {label: i for i, label in enumerate(labels)}
    L = np.full((len(texts), len(lfs)), ABSTAIN, dtype=np.int64)
    for j, lf in enumerate(lfs):
        votes = lf(texts)
        if len(votes) != len(texts):
            raise InputError(f"labelling function {lf.name!r} gave {len(votes)} votes for {len(texts)} texts")
        for i, v in enumerate(votes):
            if v is None:
                continue
            if v not in index:
                raise ConfigError(f"labelling function {lf.name!r} voted {v!r}, which is not in labels {list(labels)}")
            L[i, j] = index[v]
    return L


def majority_vote(L: np.ndarray, k: int) -> np.ndarray:
    """(n, k) vote shares per row; rows without votes get the uniform distribution."""
    counts = np.zeros((L.shape[0], k))
    for c in range(k):
        counts[:, c] = np.equal(L, c).sum(axis=1)
    total = counts.sum(axis=1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1), 1.0 / k)


def decide(probs: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Label index per row, ABSTAIN where no function voted or the top classes tie."""
    top = probs.argmax(axis=1)
    ordered = np.sort(probs, axis=1)
    tie = np.isclose(ordered[:, -1], ordered[:, -2]) if probs.shape[1] > 1 else np.zeros(len(top), bool)
    return np.where((L != ABSTAIN).any(axis=1) & ~tie, top, ABSTAIN)


class LabelModel:
    """Dawid–Skene with abstains: per function and true class, the chance of each vote (or of abstaining).

    Learned by EM from the label matrix alone, starting from the majority vote. Modelling the
    abstain matters: most functions vote for one label only (a complaint lexicon never says
    "pos"), and for those it is *how often they fire* under each class that carries the signal;
    a one-coin model (one accuracy per function, abstains ignored) drifts to calling every
    one-sided function perfect or useless. The model is fitted on rows with at least one vote,
    so the class balance it learns is that of the covered rows; `class_balance` fixes it instead.
    `smoothing` adds that many pseudo-counts to every cell, so no vote is ever impossible.
    `accuracy[j]` is the learned chance that function j is right when it votes.
    """

    def __init__(self, k: int, class_balance: Sequence[float] | None = None, smoothing: float = 1.0,
                 max_iter: int = 200, tol: float = 1e-6) -> None:
        if k < 2:
            raise ConfigError(f"a label model needs at least 2 classes (got {k})")
        self.k, self.smoothing, self.max_iter, self.tol = k, smoothing, max_iter, tol
        self.fixed_prior = None if class_balance is None else np.asarray(class_balance, dtype=np.float64)
        if self.fixed_prior is not None and (len(self.fixed_prior) != k or not np.isclose(self.fixed_prior.sum(), 1)):
            raise ConfigError(f"class_balance must be {k} proportions summing to 1 (got {list(class_balance)})")
        self.prior = self.fixed_prior if self.fixed_prior is not None else np.full(k, 1.0 / k)
        self.table: np.ndarray | None = None  # (functions, true class, vote incl. abstain as index k)
        self.iterations = 0

    def _posterior(self, L: np.ndarray) -> np.ndarray:
        votes = np.where(L == ABSTAIN, self.k, L)
        logp = np.tile(np.log(self.prior), (L.shape[0], 1))
        for j in range(L.shape[1]):
            logp += np.log(self.table[j][:, votes[:, j]]).T
        logp -= logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        return p / p.sum(axis=1, keepdims=True)

    def _tables(self, votes: np.ndarray, q: np.ndarray) -> np.ndarray:
        table = np.empty((votes.shape[1], self.k, self.k + 1))
        for j in range(votes.shape[1]):
            for v in range(self.k + 1):
                table[j, :, v] = q[votes[:, j] == v].sum(axis=0) + self.smoothing
        return table / table.sum(axis=2, keepdims=True)

    def fit(self, L: np.ndarray) -> LabelModel:
        L = np.asarray(L)
        if L.size and (L.max() >= self.k or L.min() < ABSTAIN):
            raise InputError(f"label matrix values must be -1 (abstain) or a class index below {self.k}")
        covered = (L != ABSTAIN).any(axis=1)
        if not covered.any():
            raise InputError("no labelling function voted on any text; nothing to learn from")
        Lc = L[covered]
        votes = np.where(Lc == ABSTAIN, self.k, Lc)
        q = majority_vote(Lc, self.k)
        for it in range(1, self.max_iter + 1):
            if self.fixed_prior is None:
                self.prior = np.clip(q.mean(axis=0), 1e-3, None) / np.clip(q.mean(axis=0), 1e-3, None).sum()
            self.table = self._tables(votes, q)
            new = self._posterior(Lc)
            change, q = float(np.abs(new - q).max()), new
            self.iterations = it
            if change < self.tol:
                break
        return self

    @property
    def accuracy(self) -> np.ndarray | None:
        """Per function: P(true class = its vote | it votes) under the fitted model."""
        if self.table is None:
            return None
        k = self.k
        right = (self.prior[None, :] * self.table[:, np.arange(k), np.arange(k)]).sum(axis=1)
        fires = (self.prior[None, :] * (1 - self.table[:, :, k])).sum(axis=1)
        return right / np.maximum(fires, 1e-12)

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        if self.table is None:
            raise RuntimeError("fit the label model first")
        return self._posterior(np.asarray(L))

    def predict(self, L: np.ndarray) -> np.ndarray:
        """Label index per row, ABSTAIN where no function voted (or the evidence is a perfect tie)."""
        return decide(self.predict_proba(L), np.asarray(L))


# --------------------------------------------------------------------------- analysis


def lf_summary(L: np.ndarray, names: Sequence[str], labels: Sequence[str], gold: Sequence[str] | None = None,
               model: LabelModel | None = None) -> list[dict[str, Any]]:
    """Per function: polarity, coverage, overlap, conflict; with gold labels, empirical accuracy.

    coverage: share of rows it votes on; overlap: share of rows where it and another function
    vote; conflict: share of rows where another function votes a different label. Empirical
    accuracy counts only rows it votes on (and that have a gold label).
    """
    voted = L != ABSTAIN
    y = None if gold is None else np.array([labels.index(g) if g in labels else ABSTAIN for g in gold])
    rows = []
    for j, name in enumerate(names):
        mine, others = voted[:, j], np.delete(voted, j, axis=1).any(axis=1)
        other_votes = np.delete(L, j, axis=1)
        conflict = mine & ((other_votes != ABSTAIN) & (other_votes != L[:, [j]])).any(axis=1)
        row: dict[str, Any] = {"name": name, "polarity": [labels[c] for c in np.unique(L[mine, j])],
                               "coverage": float(mine.mean()), "overlap": float((mine & others).mean()),
                               "conflict": float(conflict.mean())}
        if y is not None:
            judged = mine & (y != ABSTAIN)
            row.update({"correct": int((L[judged, j] == y[judged]).sum()),
                        "incorrect": int((L[judged, j] != y[judged]).sum()),
                        "emp_accuracy": float((L[judged, j] == y[judged]).mean()) if judged.any() else None})
        if model is not None and model.accuracy is not None:
            row["learned_accuracy"] = float(model.accuracy[j])
        rows.append(row)
    return rows


@dataclass
class WeakResult:
    """Everything `weak_label` found: the matrix, the combined labels and how good they are."""

    L: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray
    labels: list[str]
    summary: list[dict[str, Any]]
    metrics: dict[str, float]

    def label_of(self, i: int) -> str | None:
        return None if self.predicted[i] == ABSTAIN else self.labels[int(self.predicted[i])]


def weak_label(texts: Sequence[str], lfs: Sequence[LabelingFunction], labels: Sequence[str],
               gold: Sequence[str | None] | None = None, method: Literal["label_model", "majority"] = "label_model",
               class_balance: Sequence[float] | None = None) -> WeakResult:
    """Apply the functions, combine their votes, and measure coverage (and accuracy, given gold labels)."""
    if method not in ("label_model", "majority"):
        raise ConfigError(f"method must be label_model or majority (got {method!r})")
    labels = list(labels)
    L = apply_lfs(lfs, texts, labels)
    model = None
    if method == "label_model":
        model = LabelModel(len(labels), class_balance).fit(L)
        probs = model.predict_proba(L)
    else:
        probs = majority_vote(L, len(labels))
    predicted = decide(probs, L)
    metrics = {"texts": float(len(texts)), "coverage": float((predicted != ABSTAIN).mean()) if len(texts) else 0.0}
    if gold is not None:
        y = np.array([labels.index(g) if g in labels else ABSTAIN for g in gold])
        done = (predicted != ABSTAIN) & (y != ABSTAIN)
        metrics["accuracy"] = float((predicted[done] == y[done]).mean()) if done.any() else float("nan")
    summary = lf_summary(L, [lf.name for lf in lfs], labels, None if gold is None else list(gold), model)
    return WeakResult(L, probs, predicted, labels, summary, metrics)
