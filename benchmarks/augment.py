"""Does augmentation buy accuracy? EDA with and without, on the built-in Chinese and English tasks; and its speed.

Tasks: `zh_sentiment` (Chinese reviews, neg/pos; 13,891 training reviews) and `en_pydoc_topic`
(paragraphs of the Python docs, 6 chapters; only 482 training paragraphs, so its sizes are 100
and all 482: there is no English 2,000). For every size and seed, a stratified sample of the
training split is drawn with the seed (the draw `train_limit` makes), and the same classifier is
trained on it twice: on the sample alone, and on the sample plus its EDA copies (lmforge's `eda`
stage through `lmforge.augment.task.augment_examples`, the code `lmforge augment` runs). Both
are scored on the task's validation + test splits (no tuning uses either; 3,472 Chinese and 120
English examples).

EDA settings follow the paper's recommendation per training size (Wei & Zou 2019, table 3):
alpha = 0.05 for every operation, 16 copies per example for 500 examples or fewer, 8 for 2,000.
Synonyms: Cilin (Chinese), WordNet (English); protected spans as by default.

The classifier: TF-IDF + logistic regression (scikit-learn, a dev dependency), over character
1-2-grams for Chinese and word 1-2-grams for English, C = 10, fixed for every run. It trains in
about a second, so the whole table takes a few minutes on two cores; a fine-tuned transformer
might gain more or less from augmentation (EDA's own paper found the gains shrink as models get
stronger and data grows).

Throughput: EDA on Chinese sentences (the training reviews split at 。！？, 5,000 distinct ones of
at least 4 characters, 34 characters on average), default settings (alpha 0.1, 4 copies per
sentence), jieba segmentation included, in one single-threaded process (EDA is pure Python and
never uses a second core; scikit-learn's BLAS is held to one thread too), best of 3 passes after a
warm-up. The rate is per second of the process's CPU time, which is what one dedicated core
delivers and does not count time the OS gave to other jobs on a shared machine; the wall-clock
rate is printed beside it. Whole reviews (73 characters on average) and the `eda` stage over
records (ids, meta copies) are shown too.

Last line: `eda_zh_sents_per_s <x>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import statistics
import time

from lmforge.augment.eda import Eda, EdaConfig
from lmforge.augment.task import Operation, augment_examples
from lmforge.tasks.builtin import load_task
from lmforge.tasks.examples import Example
from lmforge.tasks.splits import split

log = logging.getLogger("augment_bench")
SIZES = (100, 500, 2000)


def sample(pool: list[Example], size: int, seed: int) -> list[Example]:
    """A stratified draw of `size` examples: the one fine-tuning's `train_limit` makes."""
    if size >= len(pool):
        return list(pool)
    rows, _, _ = split(pool, val_frac=1 - size / len(pool), test_frac=0.0, seed=seed, stratify_by="label")
    return rows[:size]


def classifier(lang: str):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    features = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True) if lang == "zh" else \
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
    return make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))


def accuracy(train: list[Example], held: list[Example], lang: str) -> float:
    model = classifier(lang).fit([e.text for e in train], [e.label for e in train])
    predicted = model.predict([e.text for e in held])
    return sum(p == e.label for p, e in zip(predicted, held, strict=True)) / len(held)


def eda_operation(size: int) -> Operation:
    rate = 0.05
    return Operation(eda={"alpha_sr": rate, "alpha_ri": rate, "alpha_rs": rate, "p_rd": rate,
                          "num_aug": 16 if size <= 500 else 8})


def accuracy_table(seeds: int) -> list[dict]:
    rows = []
    for name, lang in (("zh_sentiment", "zh"), ("en_pydoc_topic", "en")):
        task = load_task(name)
        held = task.val + task.test
        sizes = [n for n in SIZES if n <= len(task.train)]
        if len(task.train) < SIZES[-1]:
            sizes = [n for n in sizes if n < len(task.train)] + [len(task.train)]
        for size in sizes:
            base, aug, copies_n, seconds = [], [], [], []
            for seed in range(seeds):
                train = sample(task.train, size, seed)
                base.append(accuracy(train, held, lang))
                t0 = time.perf_counter()
                copies, _ = augment_examples(train, "classification", [eda_operation(size)], seed=seed, lang=lang)
                seconds.append(time.perf_counter() - t0)
                copies_n.append(len(copies))
                aug.append(accuracy(train + copies, held, lang))
            rows.append({"task": name, "size": size, "base": base, "eda": aug, "copies": statistics.mean(copies_n),
                         "eda_seconds": statistics.mean(seconds), "held_out": len(held)})
            log.info("%s n=%d: %.4f -> %.4f", name, size, statistics.mean(base), statistics.mean(aug))
    return rows


def timed(work, n: int, repeats: int) -> tuple[float, float]:
    """(items per CPU second, items per wall second), each the best of `repeats` passes.

    CPU time (time.process_time) counts only this process's own work, so on a machine shared with
    other jobs it still gives what one dedicated core does; wall time is shown beside it.
    """
    cpu = wall = 0.0
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        work()
        cpu = max(cpu, n / (time.process_time() - c0))
        wall = max(wall, n / (time.perf_counter() - w0))
    return cpu, wall


def throughput(repeats: int) -> dict[str, float]:
    """Texts per second through EDA (default settings), one single-threaded process."""
    from lmforge.augment.stages import EdaStage
    from lmforge.pipeline import run_chain
    from lmforge.records import Record

    reviews = [e.text for e in load_task("zh_sentiment").train]
    sentences = list(dict.fromkeys(s.strip() for text in reviews for s in re.findall(r"[^。！？!?]+[。！？!?]*", text)
                                   if len(s.strip()) >= 4))[:5000]
    reviews = reviews[:5000]
    eda = Eda(EdaConfig())
    eda.augment(sentences[0], "zh", random.Random(0), 4)  # warm-up: jieba, its tags, Cilin

    def run(texts: list[str]):
        return lambda: [eda.augment(text, "zh", random.Random(i), 4) for i, text in enumerate(texts)]

    def stage():
        records = [Record(id=str(i), text=s, lang="zh", meta={"label": "pos", "split": "train"})
                   for i, s in enumerate(sentences)]
        sum(1 for _ in run_chain([EdaStage(num_aug=4)], records)[0])

    return {"sentences": timed(run(sentences), len(sentences), repeats),
            "reviews": timed(run(reviews), len(reviews), repeats),
            "stage": timed(stage, len(sentences), repeats),
            "sentence_chars": statistics.mean(len(s) for s in sentences),
            "review_chars": statistics.mean(len(r) for r in reviews)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="samples (and EDA seeds) per size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes for throughput (the best counts)")
    args = parser.parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # before scikit-learn loads NumPy's BLAS: every fit on one thread
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lmforge").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    rows = accuracy_table(args.seeds)
    print(f"\naccuracy on validation + test, mean ± std over {args.seeds} seeds (TF-IDF + logistic regression)")
    print(f"{'task':<16}{'n':>6}{'copies':>8}{'no augmentation':>18}{'with EDA':>18}{'gain':>9}{'EDA wins':>10}")
    for r in rows:
        b, a = r["base"], r["eda"]
        wins = sum(x > y for x, y in zip(a, b, strict=True))
        print(f"{r['task']:<16}{r['size']:>6}{r['copies']:>8.0f}"
              f"{statistics.mean(b):>11.4f} ± {statistics.stdev(b):.4f}{statistics.mean(a):>11.4f} ± {statistics.stdev(a):.4f}"
              f"{statistics.mean(a) - statistics.mean(b):>+9.4f}{wins:>7}/{len(b)}")
    print(f"(accuracy table: {time.perf_counter() - t0:.0f} s)")

    speed = throughput(args.repeats)
    print("\nEDA throughput, Chinese, default settings (4 copies each), one single-threaded process")
    print(f"{'input':<44}{'per CPU second':>16}{'per wall second':>17}")
    for key, label in (("sentences", f"sentences ({speed['sentence_chars']:.0f} characters on average)"),
                       ("reviews", f"whole reviews ({speed['review_chars']:.0f} characters on average)"),
                       ("stage", "sentences as records through the eda stage")):
        cpu, wall = speed[key]
        print(f"{label:<44}{cpu:>16.0f}{wall:>17.0f}")
    print(f"eda_zh_sents_per_s {speed['sentences'][0]:.0f}")


if __name__ == "__main__":
    main()
