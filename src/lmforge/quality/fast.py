"""The fast quality classifier: hashed n-grams (`quality.features`) and a linear model, trained by
scikit-learn and applied in C.

Why this shape: the classifier scores every document of a corpus, so it must cost about what a
heuristic filter costs; the model that rates documents well (an LLM, a BERT) costs a thousand times
more and rates only a sample. A linear model over hashed n-grams learns those ratings well enough
(FineWeb-Edu and DCLM filter with one of this kind) and scores a 2 kB document in microseconds.

Training uses scikit-learn (maintained, NumPy-2 ready, exact solvers for sparse input):
LogisticRegression for classes, Ridge for a numeric rating (0-5 annotations). fastText would do the
same job, but its Python package is unmaintained and breaks with NumPy 2. Scoring does not need
scikit-learn: the weights (K, 2**bits) and biases are saved as safetensors and the C extension takes
the dot product while it hashes, without building a sparse row.

The score of a document (`QualityModel.score`): the predicted rating (regression), the expected
label value when every class is a number (classes 0-5 from an annotation), else the probability of
the `positive` class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from lmforge.errors import ConfigError, InputError, require
from lmforge.quality.features import Featurizer
from lmforge.quality.scoring import KeepConfig, ScoreStage
from lmforge.records import Record

log = logging.getLogger(__name__)

MODEL_FILE, INFO_FILE = "model.safetensors", "quality.json"
POSITIVE_NAMES = ("good", "high", "pos", "positive", "keep", "1", "true", "yes")


def _numeric(labels: Sequence[str]) -> np.ndarray | None:
    try:
        return np.asarray([float(x) for x in labels], dtype=np.float64)
    except ValueError:
        return None


@dataclass
class QualityModel:
    """A trained classifier: featuriser settings, labels, weights; what `quality.json` describes."""

    kind: Literal["classification", "regression"]
    featurizer: Featurizer
    weight: np.ndarray  # (K, 2**bits) float32: K = 1 for regression and for two classes
    bias: np.ndarray  # (K,)
    labels: list[str] = field(default_factory=list)  # classification: the classes, in weight order
    positive: str | None = None  # classification with non-numeric labels: the class whose probability scores
    metrics: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, classes) for a classifier."""
        logits = self.featurizer.scores(texts, self.weight, self.bias).astype(np.float64)  # (N, K)
        if len(self.labels) == 2:  # one logit: P(labels[1])
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """One score per text (see the module docstring), higher is better."""
        if self.kind == "regression":
            return self.featurizer.scores(texts, self.weight, self.bias)[:, 0].astype(np.float64)
        probs = self.probabilities(texts)
        values = _numeric(self.labels)
        if values is not None and self.positive is None:
            return probs @ values
        return probs[:, self.labels.index(self.positive)]

    def save(self, out: str | Path) -> Path:
        from safetensors.numpy import save_file

        from lmforge.records import atomic_path, write_json_atomic

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / MODEL_FILE) as tmp:
            save_file({"weight": np.ascontiguousarray(self.weight, np.float32),
                       "bias": np.ascontiguousarray(self.bias, np.float32)}, str(tmp))
        f = self.featurizer
        write_json_atomic(out / INFO_FILE, {
            "format": "lmforge-quality-1", "kind": self.kind, "labels": self.labels, "positive": self.positive,
            "features": {"bits": f.bits, "ngrams": f.ngrams, "max_chars": f.max_chars}, "metrics": self.metrics})
        return out

    @classmethod
    def load(cls, path: str | Path) -> QualityModel:
        from safetensors.numpy import load_file

        from lmforge.records import read_json

        path = Path(path)
        if not (path / INFO_FILE).is_file() or not (path / MODEL_FILE).is_file():
            raise InputError(f"{path}: not a quality classifier (expected {INFO_FILE} and {MODEL_FILE}; "
                             "make one with `lmforge quality train`)")
        info = read_json(path / INFO_FILE)
        if not isinstance(info, dict) or info.get("format") != "lmforge-quality-1":
            raise InputError(f"{path / INFO_FILE}: unknown format {info.get('format') if isinstance(info, dict) else info!r}")
        tensors = load_file(str(path / MODEL_FILE))
        feats = Featurizer(**info["features"])
        weight, bias = tensors["weight"], tensors["bias"]
        if weight.shape != (len(bias), feats.dim):
            raise InputError(f"{path / MODEL_FILE}: weight {weight.shape} does not fit {len(bias)} outputs of "
                             f"2**{feats.bits} features")
        return cls(info["kind"], feats, weight, bias, info.get("labels") or [], info.get("positive"),
                   info.get("metrics") or {})


# --------------------------------------------------------------------------- training


def _positive(labels: list[str], positive: str | None) -> str | None:
    """The class whose probability is the score, or None when the labels are numbers (expected value)."""
    if positive is not None:
        if positive not in labels:
            raise ConfigError(f"positive: {positive!r} is not a label; labels: {', '.join(labels)}")
        return positive
    if _numeric(labels) is not None:
        return None
    named = [x for x in labels if x.lower() in POSITIVE_NAMES]
    if len(named) == 1:
        return named[0]
    raise ConfigError(f"positive: which label is good quality? labels: {', '.join(labels)} (pass --positive)")


def train_quality_model(texts: Sequence[str], targets: Sequence[Any], *, kind: Literal["auto", "classification",
                        "regression"] = "auto", positive: str | None = None, bits: int = 20, ngrams: int = 2,
                        max_chars: int = 100_000, c: float = 4.0, val_fraction: float = 0.1,
                        seed: int = 0) -> QualityModel:
    """Fit on (text, target) pairs; a seeded `val_fraction` is held out for the metrics, then the final
    model is fitted on everything. `auto` is regression for more than two numeric values, else classes."""
    require("sklearn", "quality")
    if len(texts) != len(targets) or len(texts) < 4:
        raise InputError(f"training needs at least 4 labelled texts; got {len(texts)} texts, {len(targets)} labels")
    values = _numeric([str(t) for t in targets])
    if kind == "auto":
        kind = "regression" if values is not None and len(np.unique(values)) > 2 else "classification"
    if kind == "regression" and values is None:
        raise InputError("regression needs numeric labels; got e.g. " + ", ".join(map(repr, list(targets)[:3])))
    featurizer = Featurizer(bits, ngrams, max_chars)
    t0 = time.perf_counter()
    x = featurizer.matrix(texts)
    log.info("featurised %d texts in %.1f s (%d features per text on average)", len(texts),
             time.perf_counter() - t0, x.nnz // max(1, len(texts)))
    if kind == "regression":
        y = values
        labels: list[str] = []
    else:
        names = [_label_name(t) for t in targets]
        labels = sorted(set(names), key=lambda s: (_numeric([s]) is None, float(s) if _numeric([s]) is not None else 0, s))
        if len(labels) < 2:
            raise InputError(f"classification needs two labels at least; all {len(names)} texts are {labels[0]!r}")
        y = np.asarray([labels.index(n) for n in names])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_val = int(round(val_fraction * len(texts)))
    metrics: dict[str, Any] = {"train_texts": len(texts) - n_val, "val_texts": n_val}
    if n_val >= 2:
        val, train = order[:n_val], order[n_val:]
        metrics.update(_metrics(kind, _Fitted(kind, x[train], y[train], c), x[val], y[val]))
    weight, bias = _Fitted(kind, x, y, c).linear(featurizer.dim)
    result = QualityModel(kind, featurizer, weight, bias, labels,
                          _positive(labels, positive) if kind == "classification" else None, metrics)
    log.info("quality %s: %s", kind, ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return result


def _label_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class _Fitted:
    """A linear model fitted on the columns the texts use, its weights spread back over every slot.

    Of 2**20 slots a few ten thousand occur in a training set; the solvers' cost grows with the
    width, so fitting on the used columns alone is 2-3x faster and gives the same model (an unused
    slot's weight is 0 under L2 regularisation either way)."""

    def __init__(self, kind: str, x, y: np.ndarray, c: float) -> None:
        self.columns = np.unique(x.indices)
        x = x[:, self.columns]
        if kind == "regression":
            from sklearn.linear_model import Ridge

            self.model = Ridge(alpha=1.0 / c, solver="sparse_cg").fit(x, y)
        else:
            from sklearn.linear_model import LogisticRegression

            self.model = LogisticRegression(C=c, max_iter=2000).fit(x, y)

    def predict(self, x) -> np.ndarray:
        return self.model.predict(x[:, self.columns])

    def linear(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        coef = np.asarray(self.model.coef_, dtype=np.float32).reshape(-1, len(self.columns))  # (K, used)
        weight = np.zeros((coef.shape[0], dim), dtype=np.float32)  # (K, 2**bits)
        weight[:, self.columns] = coef
        return weight, np.atleast_1d(np.asarray(self.model.intercept_, dtype=np.float32))


def _metrics(kind: str, model, x, y: np.ndarray) -> dict[str, float]:
    pred = model.predict(x)
    if kind == "regression":
        rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
        corr = float(np.corrcoef(pred, y)[0, 1]) if np.std(pred) > 0 and np.std(y) > 0 else 0.0
        within = float(np.mean(np.abs(np.clip(np.round(pred), y.min(), y.max()) - y) == 0))
        return {"val_rmse": round(rmse, 4), "val_pearson": round(corr, 4), "val_rounded_accuracy": round(within, 4)}
    return {"val_accuracy": round(float(np.mean(pred == y)), 4)}


# --------------------------------------------------------------------------- the stage


class QualityClassifierConfig(KeepConfig):
    model: str = Field(description="directory of a classifier from `lmforge quality train` (quality.json + "
                                   "model.safetensors)")

    @field_validator("model")
    @classmethod
    def _is_a_model(cls, value: str) -> str:  # before any step runs, not in a worker hours later
        if not (Path(value) / INFO_FILE).is_file():
            raise ValueError(f"{value} is not a quality classifier (no {INFO_FILE}; make one with "
                             "`lmforge quality train`)")
        return value


_LOADED: dict[str, QualityModel] = {}


class QualityClassifier(ScoreStage):
    """Scores documents with a fast quality classifier into meta.quality.<key>; keeps by threshold or top fraction."""

    name = "quality_classifier"
    Config = QualityClassifierConfig

    def __init__(self, config=None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.model  # noqa: B018 - a missing or broken model is a config error now, not in a worker later

    @property
    def model(self) -> QualityModel:
        """Loaded once per process (workers get the stage pickled, not the weights)."""
        path = str(Path(self.config.model).resolve())
        if path not in _LOADED:
            _LOADED[path] = QualityModel.load(path)
        return _LOADED[path]

    def score_batch(self, records: list[Record]) -> np.ndarray:
        return self.model.score([r.text for r in records])
