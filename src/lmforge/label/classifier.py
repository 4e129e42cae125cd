"""Small, fast text classifiers for labelling work: suggestions, active learning, noise detection.

Labelling loops retrain after every few answers, so the model must fit in well under a second:
TF-IDF over character 1-2-grams (words need no segmenter, and Chinese is read character by
character) and logistic regression, from scikit-learn (`pip install 'lmforge[label]'`). The
vectoriser is fitted once on every text of the pool (no labels involved), so a refit only
touches the rows that are labelled.

A fine-tuned lmforge or Hugging Face classifier can stand in where a better model exists
(`finetuned_proba`), e.g. as a labelling function or as the suggestion source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lmforge.errors import InputError, require

ProbaFn = Callable[[Sequence[str]], np.ndarray]


class TextClassifier:
    """TF-IDF (char n-grams) + logistic regression over a fixed pool of texts, refit on any labelled subset.

    `C` is the inverse regularisation strength; 4 suits a few dozen to a few thousand labels on
    the built-in reviews (the full 13,891-review training split gives 0.84 test accuracy).
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[str], *, ngram_range: tuple[int, int] = (1, 2),
                 min_df: int = 1, C: float = 4.0, max_features: int | None = 200_000, seed: int = 0) -> None:
        require("sklearn", "label")
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not labels:
            raise InputError("a classifier needs at least one label")
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.C, self.seed = C, seed
        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=ngram_range, min_df=min_df,
                                          sublinear_tf=True, max_features=max_features, dtype=np.float32)
        self.X = self.vectorizer.fit_transform(list(texts)) if len(texts) else None
        self.model = None

    def transform(self, texts: Sequence[str]):
        return self.vectorizer.transform(list(texts))

    def fit(self, rows: Sequence[int], y: Sequence[str]) -> TextClassifier:
        """Fit on pool rows `rows` with labels `y`; needs two different labels among them."""
        from sklearn.linear_model import LogisticRegression

        target = np.array([self.index[v] for v in y])
        if len(set(target.tolist())) < 2:
            raise InputError("fitting a classifier needs at least two different labels")
        # saga: 5-10x faster than lbfgs on sparse TF-IDF here, same accuracy; seeded, so reproducible
        self.model = LogisticRegression(C=self.C, solver="saga", max_iter=2000, random_state=self.seed)
        self.model.fit(self.X[np.asarray(rows)], target)
        return self

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def proba(self, rows: Sequence[int] | None = None, X=None) -> np.ndarray:
        """(n, len(labels)) probabilities of pool rows (all by default) or of vectors `X`.

        Labels the model has not seen in training get probability 0.
        """
        if self.model is None:
            raise RuntimeError("fit the classifier first")
        X = X if X is not None else (self.X if rows is None else self.X[np.asarray(rows)])
        seen = self.model.predict_proba(X)
        out = np.zeros((seen.shape[0], len(self.labels)), dtype=np.float64)
        out[:, self.model.classes_] = seen
        return out

    def proba_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.proba(X=self.transform(texts))

    def embeddings(self, dims: int = 128) -> np.ndarray:
        """Dense L2-normalised (n, dims) vectors of the pool (truncated SVD of the TF-IDF), for diversity."""
        from sklearn.decomposition import TruncatedSVD

        dims = max(1, min(dims, self.X.shape[1] - 1, self.X.shape[0] - 1))
        Z = TruncatedSVD(n_components=dims, random_state=self.seed).fit_transform(self.X)
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def cross_val_proba(texts: Sequence[str], labels: Sequence[str], label_set: Sequence[str] | None = None,
                    k: int = 5, seed: int = 0, **options) -> np.ndarray:
    """Out-of-fold probabilities: each text scored by a model that never saw its label (stratified k-fold).

    Confident learning needs exactly this; in-sample probabilities would agree with every label,
    wrong ones included.
    """
    label_set = list(label_set or sorted(set(labels)))
    model = TextClassifier(texts, label_set, seed=seed, **options)
    y = np.array([model.index[v] for v in labels])
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        fold[rows[rng.permutation(len(rows))]] = np.arange(len(rows)) % k
    out = np.zeros((len(y), len(label_set)))
    for f in range(k):
        train, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(held):
            model.fit(train, [label_set[i] for i in y[train]])
            out[held] = model.proba(held)
    return out


def finetuned_proba(model_dir: str | Path, tokenizer: str | Path | None = None, batch_size: int = 32,
                    max_len: int = 256) -> tuple[ProbaFn, list[str]]:
    """(texts → probabilities, labels) of a classifier saved by `lmforge finetune` (or an HF directory)."""
    import torch
    from transformers import AutoTokenizer

    from lmforge.finetune import tasks
    from lmforge.models.source import load_saved_model
    from lmforge.tasks.examples import ClassificationExample

    model, kind, labels = load_saved_model(model_dir)
    if kind != "classification":
        raise InputError(f"{model_dir} is a {kind} model; a text classifier is needed here")
    tok = AutoTokenizer.from_pretrained(str(tokenizer or model_dir))

    def proba(texts: Sequence[str]) -> np.ndarray:
        enc = tasks.encode_classification([ClassificationExample(text=t, label=labels[0]) for t in texts], tok, labels, max_len)
        source = tasks.ExampleSource(enc, batch_size, 0, shuffle=False)
        parts = []
        with torch.no_grad():
            for i in range(source.num_batches):
                batch = source.micro_batch(i)
                logits = tasks.logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
                parts.append(torch.softmax(logits.float(), -1).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(labels)))

    return proba, list(labels)
