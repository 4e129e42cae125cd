"""Quality classifiers: lmforge's fast classifier against fastText (and scikit-learn's hashing + SGD),
same labelled documents, same split; then the `quality_classifier` stage end to end on 100k records.

The labelled set is made from what ships (no network):
- good: documents of 3-6 consecutive paragraphs of the built-in corpora (People's Daily 1998 in
  Chinese, the Python documentation in English), and the hand-checked article bodies of the shared
  article-extraction pages (../shared/benchmarks/article-extraction);
- bad: the same pages' text outside the article (navigation, footers, link lists: every line of
  the page's visible text that is not a line of the article body), in chunks of 4-12 lines; and two
  corruptions of good documents: words shuffled (jieba words for Chinese) and lines repeated (each
  line 2-4 times in a row).
Documents are split 80/20 by source document: a document, its corruptions and every chunk of one
page fall on the same side. Every side sees the same texts; each tokenises its own way.

- lmforge: `lmforge.quality.fast` (hashed token 1-2-grams plus eight shape features, 2**20 slots,
  logistic regression by scikit-learn, scoring in C).
- fastText (`fasttext-wheel`, when it installs): supervised, word 1-2-grams (wordNgrams 2), 25 epochs at
  lr 0.5 (the best of five settings tried: 0.801-0.811 accuracy), 2**21 buckets; Chinese characters
  spaced apart, as fastText users do, and each line break a `</s>` token, as fastText reads one.
  Its `predict` on a list works with NumPy 2 (on a single string it does not).
- scikit-learn: HashingVectorizer over the same spaced text (word 1-2-grams, 2**20 features) + SGDClassifier
  (log loss).
Speed is documents scored per second on one thread, raw text in and scores out (tokenising included,
and so the peers' Chinese spacing, done by `str.translate` in C), over the test split repeated to at
least --score-docs documents; "model only" times the peers' predict on text spaced beforehand.

Stage: `quality_classifier` as a pipeline runs it, on --stage-docs records (the test texts again
and again, ids distinct) in Parquet shards of 10,000, with one worker: wall time from the input
shards to the last marker (read, score, per-language cutoffs, write shards and quarantine).

Last line: `accuracy <x> peer_accuracy <x> speedup <x> docs_per_s <x>`: the peer is fastText when it
installs, else scikit-learn; docs_per_s is the stage's end-to-end records per second on one core.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
log = logging.getLogger("bench.quality")
ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT.parent / "shared" / "benchmarks" / "article-extraction"


def paragraphs_docs(name: str, limit: int, rng: random.Random) -> list[str]:
    """Documents of 3-6 consecutive paragraphs of a built-in corpus."""
    from lmforge.collect.builtin import corpus_records

    paras = [r.text for r in corpus_records(name, limit=limit * 5)]
    docs, i = [], 0
    while i < len(paras) and len(docs) < limit:
        k = rng.randint(3, 6)
        docs.append("\n".join(paras[i:i + k]))
        i += k
    return docs


def page_texts() -> list[tuple[str, str, list[str]]]:
    """(key, article body, the page's other lines) for every shared page."""
    import lxml.html

    truth = json.loads((PAGES / "ground-truth.json").read_text(encoding="utf-8"))
    out = []
    for key, item in sorted(truth.items()):
        path = PAGES / "html" / f"{key}.html.gz"
        if not path.is_file() or not item.get("articleBody"):
            continue
        tree = lxml.html.fromstring(gzip.decompress(path.read_bytes()))
        for bad in tree.xpath("//script|//style|//noscript|//template"):
            bad.drop_tree()
        body = item["articleBody"]
        body_lines = {" ".join(x.split()) for x in body.splitlines() if x.strip()}
        body_words = set(body.split())
        other = []
        for line in tree.text_content().splitlines():
            line = " ".join(line.split())
            words = line.split()
            # a line of the article, or made of its words, is not boilerplate
            if not line or line in body_lines or (words and sum(w in body_words for w in words) > 0.6 * len(words)):
                continue
            other.append(line)
        out.append((key, body, other))
    return out


def shuffled(text: str, rng: random.Random) -> str:
    from lmforge.lang import is_chinese, words

    out = []
    for line in text.splitlines():
        parts = words(line) if is_chinese(line) else line.split()
        rng.shuffle(parts)
        out.append(("" if is_chinese(line) else " ").join(parts))
    return "\n".join(out)


def repeated(text: str, rng: random.Random) -> str:
    return "\n".join(line for line in text.splitlines() for _ in range(rng.randint(2, 4)))


def build_set(args) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
    """(group, label 1 good / 0 bad, text) rows, and counts by origin."""
    rng = random.Random(args.seed)
    rows: list[tuple[str, int, str]] = []
    counts: dict[str, int] = {}
    good = [(f"pd{i}", t) for i, t in enumerate(paragraphs_docs("peoples_daily", args.docs_per_corpus, rng))]
    good += [(f"py{i}", t) for i, t in enumerate(paragraphs_docs("python_docs", args.docs_per_corpus, rng))]
    counts["good_builtin"] = len(good)
    for key, body, other in page_texts():
        good.append((key, body))
        counts["good_article"] = counts.get("good_article", 0) + 1
        i = 0
        while i < len(other):
            k = rng.randint(4, 12)
            chunk = other[i:i + k]
            i += k
            if sum(map(len, chunk)) >= 80:
                rows.append((key, 0, "\n".join(chunk)))
                counts["bad_boilerplate"] = counts.get("bad_boilerplate", 0) + 1
    for group, text in good:
        rows.append((group, 1, text))
        roll = rng.random()
        if roll < 0.35:
            rows.append((group, 0, shuffled(text, rng)))
            counts["bad_shuffled"] = counts.get("bad_shuffled", 0) + 1
        elif roll < 0.7:
            rows.append((group, 0, repeated(text, rng)))
            counts["bad_repeated"] = counts.get("bad_repeated", 0) + 1
    return rows, counts


def split(rows, seed: int):
    groups = sorted({g for g, _, _ in rows})
    random.Random(seed).shuffle(groups)
    test_groups = set(groups[: len(groups) // 5])
    train = [(y, t) for g, y, t in rows if g not in test_groups]
    test = [(y, t) for g, y, t in rows if g in test_groups]
    return train, test


_SPACE_CJK: dict[int, str] = {}


def spaced(text: str) -> str:
    """One line with Chinese characters spaced apart and each line break a `</s>` token (fastText's own
    reading of a line break): what fastText and HashingVectorizer read. `str.translate` does the spacing
    in C, about ten times faster than a regular expression."""
    if not _SPACE_CJK:
        from lmforge.lang import CJK_RANGES

        _SPACE_CJK.update({cp: f" {chr(cp)} " for lo, hi in CJK_RANGES for cp in range(lo, hi + 1)})
    return " </s> ".join(" ".join(line.split()) for line in text.translate(_SPACE_CJK).splitlines() if line.strip())


def timed_rate(fn, texts: list[str], min_docs: int) -> float:
    reps = max(1, -(-min_docs // len(texts)))
    batch = texts * reps
    t0 = time.perf_counter()
    fn(batch)
    return len(batch) / (time.perf_counter() - t0)


def run_lmforge(train, test, args) -> dict:
    import numpy as np

    from lmforge.quality.fast import train_quality_model

    t0 = time.perf_counter()
    model = train_quality_model([t for _, t in train], [y for y, _ in train], kind="classification",
                                val_fraction=0.0, bits=20, ngrams=2, c=args.c)
    fit = time.perf_counter() - t0
    texts = [t for _, t in test]
    pred = (model.score(texts) >= 0.5).astype(int)
    acc = float(np.mean(pred == np.asarray([y for y, _ in test])))
    return {"accuracy": acc, "fit_s": fit, "docs_per_s": timed_rate(model.score, texts, args.score_docs),
            "model": model}


def run_fasttext(train, test, args, work: Path) -> dict | None:
    try:
        import fasttext
    except ImportError:
        log.info("fasttext-wheel is not installed: fastText is left out")
        return None
    import numpy as np

    path = work / "fasttext.train"
    path.write_text("".join(f"__label__{y} {spaced(t)}\n" for y, t in train), encoding="utf-8")
    t0 = time.perf_counter()
    model = fasttext.train_supervised(str(path), epoch=25, wordNgrams=2, bucket=1 << 21, lr=0.5, thread=1,
                                      verbose=0, seed=args.seed)
    fit = time.perf_counter() - t0
    texts = [t for _, t in test]

    def predict(batch):
        labels, _ = model.predict([spaced(t) for t in batch])
        return [int(x[0].removeprefix("__label__")) for x in labels]

    acc = float(np.mean(np.asarray(predict(texts)) == np.asarray([y for y, _ in test])))
    ready = [spaced(t) for t in texts]
    return {"accuracy": acc, "fit_s": fit, "docs_per_s": timed_rate(predict, texts, args.score_docs),
            "model_docs_per_s": timed_rate(model.predict, ready, args.score_docs)}


def run_sklearn(train, test, args) -> dict:
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import SGDClassifier

    vec = HashingVectorizer(n_features=1 << 20, ngram_range=(1, 2), alternate_sign=False, token_pattern=r"\S+")
    t0 = time.perf_counter()
    clf = SGDClassifier(loss="log_loss", alpha=1e-6, max_iter=50, random_state=args.seed)
    clf.fit(vec.transform([spaced(t) for _, t in train]), [y for y, _ in train])
    fit = time.perf_counter() - t0
    texts = [t for _, t in test]

    def predict(batch):
        return clf.predict(vec.transform([spaced(t) for t in batch]))

    acc = float(np.mean(predict(texts) == np.asarray([y for y, _ in test])))
    ready = [spaced(t) for t in texts]
    return {"accuracy": acc, "fit_s": fit, "docs_per_s": timed_rate(predict, texts, args.score_docs),
            "model_docs_per_s": timed_rate(lambda b: clf.predict(vec.transform(b)), ready, args.score_docs)}


def run_stage(model, test, args, work: Path) -> dict:
    """The stage as a pipeline runs it: Parquet shards of 10,000 records in, one local worker, shards and
    quarantine out; timed from the input shards to the last marker."""
    from lmforge.pipeline.executors import ExecutorConfig, make_executor
    from lmforge.pipeline.input import InputConfig
    from lmforge.pipeline.runner import collect_stats, ingest, input_dir, run_stages

    model.save(work / "model")
    texts = [t for _, t in test]
    data = work / "docs.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i in range(args.stage_docs):
            fh.write(json.dumps({"id": f"d{i}", "text": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
    run = work / "run"
    ingest(InputConfig.model_validate({"files": {"paths": [str(data)]}, "shard_size": 10_000}), work, input_dir(run), work)
    spec = ("quality_classifier", {"model": str(work / "model"), "threshold": 0.5})
    t0 = time.perf_counter()
    with make_executor(ExecutorConfig(kind="local", workers=1)) as ex:
        run_stages(run, [spec], ex)
    seconds = time.perf_counter() - t0
    stage = next(s for s in collect_stats(run)["stages"] if s["name"] == "quality_classifier")
    return {"records": stage["in"], "kept": stage["out"], "seconds": seconds, "docs_per_s": stage["in"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs-per-corpus", type=int, default=2000)
    parser.add_argument("--score-docs", type=int, default=20_000)
    parser.add_argument("--stage-docs", type=int, default=100_000)
    parser.add_argument("--c", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    from lmforge import sysinfo

    rows, counts = build_set(args)
    train, test = split(rows, args.seed)
    log.info("labelled set: %s; %d train / %d test", counts, len(train), len(test))
    with tempfile.TemporaryDirectory(prefix="lmforge-qbench-") as tmp:
        work = Path(tmp)
        ours = run_lmforge(train, test, args)
        results = {"lmforge fast classifier": ours, "scikit-learn hashing+SGD": run_sklearn(train, test, args)}
        ft = run_fasttext(train, test, args, work)
        if ft is not None:
            results["fastText (fasttext-wheel)"] = ft
        stage = run_stage(ours["model"], test, args, work)
    print(f"CPU: {sysinfo.cpu_summary()}; one thread per side")
    print(f"labelled set: {len(train)} train / {len(test)} test documents; {counts}")
    print(f"{'side':<28}{'accuracy':>10}{'fit s':>9}{'docs/s (1 core)':>17}{'model only':>12}")
    for name, r in results.items():
        only = f"{r['model_docs_per_s']:>12.0f}" if "model_docs_per_s" in r else f"{'(same)':>12}"
        print(f"{name:<28}{r['accuracy']:>10.4f}{r['fit_s']:>9.1f}{r['docs_per_s']:>17.0f}{only}")
    print("docs/s: raw documents in, scores out; model only: the peers' predict on text spaced beforehand")
    peer = results.get("fastText (fasttext-wheel)") or results["scikit-learn hashing+SGD"]
    print(f"stage quality_classifier, one worker: {stage['records']} records in {stage['seconds']:.1f} s "
          f"({stage['docs_per_s']:.0f} records/s), {stage['kept']} kept at threshold 0.5")
    print(f"accuracy {ours['accuracy']:.4f} peer_accuracy {peer['accuracy']:.4f} "
          f"speedup {ours['docs_per_s'] / peer['docs_per_s']:.2f} docs_per_s {stage['docs_per_s']:.0f}")


if __name__ == "__main__":
    main()
