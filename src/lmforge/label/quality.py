"""Label quality: agreement between annotators, where they disagree, and labels that look wrong.

Agreement is corrected for chance: two annotators who both call 90% of reviews positive agree
on 82% of items by luck alone, so raw agreement flatters. Cohen's kappa compares two annotators
(each with their own label distribution); Fleiss' kappa any number of annotators per item (here
in its general form, which allows a different number of annotators per item). Landis & Koch's
words for kappa: < 0 poor, 0-0.2 slight, 0.2-0.4 fair, 0.4-0.6 moderate, 0.6-0.8 substantial,
0.8-1 almost perfect.

Label noise, confident-learning style (Northcutt, Jiang & Chuang, 2021, the method behind
cleanlab; cleanlab itself is not a dependency): with out-of-sample probabilities, each class gets
a threshold, the mean probability the model gives that class on the items labelled with it. An
item is suspect when its probability for another class reaches that class's threshold and beats
its probability for the given label (an off-diagonal entry of the "confident joint"). Suspects
are ranked by how little the model believes the given label.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from lmforge.errors import InputError


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators' labels for the same items (1 if both agree and never vary)."""
    if len(a) != len(b):
        raise InputError(f"the two annotators labelled {len(a)} and {len(b)} items; pair the same items")
    n = len(a)
    if n == 0:
        raise InputError("no items labelled by both annotators")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa from each item's labels (one per annotator; items with fewer than 2 are skipped).

    With the same number of annotators on every item this is Fleiss (1971); otherwise each item's
    agreement is over its own annotator pairs and the label shares are pooled over all labels.
    """
    items = [list(r) for r in ratings if len(r) >= 2]
    if not items:
        raise InputError("Fleiss' kappa needs items with at least two labels each")
    totals: Counter = Counter()
    agreement = []
    for labels in items:
        counts = Counter(labels)
        m = len(labels)
        totals.update(counts)
        agreement.append((sum(c * c for c in counts.values()) - m) / (m * (m - 1)))
    p_bar = float(np.mean(agreement))
    n_labels = sum(totals.values())
    p_e = sum((c / n_labels) ** 2 for c in totals.values())
    if p_e == 1.0:
        return 1.0 if p_bar == 1.0 else 0.0
    return (p_bar - p_e) / (1 - p_e)


def _units(answer: Any) -> list[Hashable]:
    """An answer as the units agreement is counted over: one class, or one tag per token (NER)."""
    return list(answer) if isinstance(answer, list | tuple) else [answer]


def agreement_report(by_item: Sequence[Mapping[str, Any]], item_ids: Sequence[Any] | None = None,
                     texts: Sequence[str] | None = None, max_disagreements: int = 50) -> dict[str, Any]:
    """Fleiss' kappa, Cohen's kappa for every annotator pair, and the items where annotators disagree.

    `by_item[i]` maps annotator → answer (a class, or a list of BIO tags for NER, compared token
    by token). Disagreements are sorted with the most split items first.
    """
    ids = list(item_ids) if item_ids is not None else list(range(len(by_item)))
    units = []  # one entry per (item, token): annotator -> label
    for answers in by_item:
        lengths = {len(_units(v)) for v in answers.values()}
        if len(lengths) > 1:
            raise InputError(f"annotators gave answers of different lengths {sorted(lengths)} for one item")
        n = lengths.pop() if lengths else 0
        units += [{who: _units(v)[t] for who, v in answers.items()} for t in range(n)]
    annotators = sorted({who for answers in by_item for who in answers})
    pairs = {}
    for x, y in itertools.combinations(annotators, 2):
        both = [u for u in units if x in u and y in u]
        if both:
            pairs[f"{x} vs {y}"] = {"items": len(both), "kappa": cohen_kappa([u[x] for u in both], [u[y] for u in both]),
                                    "agreement": sum(u[x] == u[y] for u in both) / len(both)}
    multi = [list(u.values()) for u in units if len(u) >= 2]
    disagreements = []
    for i, answers in enumerate(by_item):
        flat = {who: tuple(_units(v)) for who, v in answers.items()}
        if len(set(flat.values())) > 1:
            counts = Counter(flat.values())
            disagreements.append({"item": ids[i], **({"text": texts[i][:120]} if texts is not None else {}),
                                  "answers": dict(answers), "majority_share": max(counts.values()) / len(flat)})
    disagreements.sort(key=lambda d: (d["majority_share"], str(d["item"])))
    return {"items": len(by_item), "annotators": annotators,
            "items_with_2plus": sum(len(a) >= 2 for a in by_item),
            "fleiss_kappa": fleiss_kappa(multi) if multi else None,
            "raw_agreement": float(np.mean([len(set(u)) == 1 for u in multi])) if multi else None,
            "pairwise": pairs, "disagreements": len(disagreements),
            "disagreement_examples": disagreements[:max_disagreements]}


def find_label_issues(labels: Sequence[Hashable], pred_probs: np.ndarray,
                      label_set: Sequence[Hashable] | None = None) -> list[dict[str, Any]]:
    """Items whose given label the model confidently contradicts, most suspicious first.

    `pred_probs` must be out-of-sample (e.g. `classifier.cross_val_proba`). Each row reports the
    given label, the suggested one, the model's probability for the given label ("self
    confidence") and for the suggestion.
    """
    label_set = list(label_set or sorted(set(labels), key=str))
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.shape != (len(labels), len(label_set)):
        raise InputError(f"pred_probs has shape {p.shape}; expected ({len(labels)}, {len(label_set)})")
    index = {v: i for i, v in enumerate(label_set)}
    unknown = sorted({str(v) for v in labels if v not in index})
    if unknown:
        raise InputError(f"labels {unknown[:5]} are not in the label set {label_set}")
    y = np.array([index[v] for v in labels])
    thresholds = np.array([p[y == c, c].mean() if (y == c).any() else 1.0 for c in range(len(label_set))])
    above = p >= thresholds[None, :] - 1e-12
    masked = np.where(above, p, -1.0)
    confident = masked.argmax(axis=1)  # the most probable class among those above their threshold
    has = above.any(axis=1)
    self_conf = p[np.arange(len(y)), y]
    suspect = has & (confident != y) & (p[np.arange(len(y)), confident] > self_conf)
    rows = [{"index": int(i), "given": label_set[y[i]], "suggested": label_set[confident[i]],
             "given_prob": float(self_conf[i]), "suggested_prob": float(p[i, confident[i]])}
            for i in np.flatnonzero(suspect)]
    rows.sort(key=lambda r: (r["given_prob"], r["index"]))
    return rows
