"""Near-duplicate detection: lmforge's MinHash-LSH stage against datasketch and rensa on a labelled set, one core.

The labelled set is built here from the built-in corpora, separately per language:
- base documents: consecutive paragraphs of peoples_daily + reviews (Chinese, >= 200 characters)
  or python_docs + python_docstrings (English, >= 400 characters: a 5-word shingle set needs
  about 50 words before one changed word can leave Jaccard >= 0.8), keeping only bases whose
  exact shingle Jaccard with every earlier base is below 0.5, so "unrelated" really is;
- half of the bases get 1-3 near-copies, each made with random edits (insert, delete,
  substitute, swap neighbours) on characters (Chinese) or words (English) at a known rate of
  0.5%, 1% or 2% of the units; a copy whose exact Jaccard with its base falls below 0.8 is
  redrawn (same rate, new positions; after 5 tries at half the rate), so every labelled
  duplicate is a near-duplicate by the 0.8 definition; the other half are unrelated singletons;
- ground truth: a base and its copies form one cluster; a duplicate pair is two documents of one
  cluster. Both tools are scored on the pairs inside the clusters they output.

All three tools get the same shingles (character 5-grams of whitespace-free lowercased text for
Chinese, word 5-grams of lowercased `\\w+` words for English), num_perm 128 and 16 bands x 8
rows. lmforge runs as the executor would (map per shard, summaries to zstd Parquet, reduce,
decisions to Parquet, apply), with its default verification (a candidate pair needs 94 of 128
equal signature values: an estimate no more than two standard errors below 0.8). datasketch
runs MinHash.update_batch + MinHashLSH insert/query with union-find over the query results,
reusing one set of permutations (its fastest documented use); its timed run does no
verification (so the speedup is, if anything, understated), and its F1 is also shown with the
same verification rule added. rensa (a Rust MinHash-LSH) is run the same way: RMinHash.from_token_sets
(its bulk constructor) + RMinHashLSH(threshold, 128, 16 bands) insert_many/query_all with the same
union-find, timed without verification, its F1 also shown with it. Shingling is timed for every
tool; building the set is not. The
process is pinned to one CPU and Arrow to one thread; each tool's fastest of `--repeats` runs
counts.

Memory: peak of Python/NumPy allocations (tracemalloc) plus Arrow's pool, measured in a
separate untimed pass, per phase, for two shard sizes and two corpus sizes.

Last line: `f1_zh <x> f1_en <x> speedup <x> peak_mb <x> rensa_speedup <x>` (speedups are the other
tool's seconds over lmforge's, both languages together).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import random
import re
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmforge.collect.builtin import corpus_records
from lmforge.dedup.minhash import MinHashDedup
from lmforge.dedup.minhash_cluster import agreement_needed
from lmforge.pipeline.stage import Summaries
from lmforge.records import Record

log = logging.getLogger("dedup_bench")

NUM_PERM, BANDS, ROWS, NGRAM, THRESHOLD = 128, 16, 8, 5, 0.8
RATES = (0.005, 0.01, 0.02)
_WORD = re.compile(r"\w+")
LANGS = {
    "zh": (("peoples_daily", "reviews"), 200, (0.75, 0.25)),
    "en": (("python_docs", "python_docstrings"), 400, (0.25, 0.75)),
}


# --------------------------------------------------------------------------- the labelled set


def shingles(text: str, lang: str) -> set[str]:
    """The shingles both tools see (lmforge computes the same ones as hashes, in NumPy)."""
    text = text.lower()
    if lang == "zh":
        units = "".join(text.split())
        sep = ""
    else:
        units = _WORD.findall(text)
        sep = " "
    if 0 < len(units) < NGRAM:
        return {sep.join(units)}
    return {sep.join(units[i : i + NGRAM]) for i in range(len(units) - NGRAM + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def base_texts(lang: str, want: int) -> list[str]:
    """Consecutive paragraphs joined until each document is long enough, from each corpus in proportion."""
    names, min_chars, shares = LANGS[lang]
    out: list[str] = []
    for name, share in zip(names, shares, strict=True):
        quota, buf = int(want * share * 1.3), []  # extra: some fail the unrelatedness check
        joiner = "" if lang == "zh" else " "
        for record in corpus_records(name):
            buf.append(record.text)
            if sum(map(len, buf)) >= min_chars:
                out.append(joiner.join(buf)[:3000])
                buf = []
                quota -= 1
                if quota == 0:
                    break
    return out


def unrelated_subset(texts: list[str], lang: str, want: int, limit: float = 0.5) -> tuple[list[str], float]:
    """Greedy: keep a text if its exact Jaccard with every kept one is below `limit` (sparse products)."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols = [], []
    sets = [shingles(t, lang) for t in texts]
    for i, s in enumerate(sets):
        for sh in s:
            rows.append(i)
            cols.append(vocab.setdefault(sh, len(vocab)))
    m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
    inter = (m @ m.T).tocsr()
    sizes = np.array([len(s) for s in sets], dtype=np.float64)
    kept: list[int] = []
    is_kept = np.zeros(len(texts), dtype=bool)
    worst = 0.0
    for i in range(len(texts)):
        row = inter.getrow(i)
        j, both = row.indices, row.data
        mask = is_kept[j] & (j != i)
        sims = both[mask] / (sizes[i] + sizes[j[mask]] - both[mask]) if mask.any() else np.zeros(0)
        if sizes[i] and (not len(sims) or sims.max() < limit):
            kept.append(i)
            is_kept[i] = True
            worst = max(worst, float(sims.max()) if len(sims) else 0.0)
            if len(kept) == want:
                break
    return [texts[i] for i in kept], worst


def edit(text: str, lang: str, rate: float, rng: random.Random, pool: list[str]) -> str:
    """Random insertions, deletions, substitutions and neighbour swaps on `rate` of the units."""
    units = list(text) if lang == "zh" else text.split(" ")
    for _ in range(max(1, round(rate * len(units)))):
        i = rng.randrange(len(units))
        op = rng.choice(("insert", "delete", "substitute", "swap"))
        if op == "insert":
            units.insert(i, rng.choice(pool))
        elif op == "delete" and len(units) > 1:
            del units[i]
        elif op == "substitute":
            units[i] = rng.choice(pool)
        elif i + 1 < len(units):
            units[i], units[i + 1] = units[i + 1], units[i]
    return ("" if lang == "zh" else " ").join(units)


@dataclass
class Labelled:
    lang: str
    records: list[Record]
    family: np.ndarray  # ground-truth cluster of every record
    copy_jaccard: list[float]  # exact Jaccard of every copy with its base
    worst_unrelated: float


def build_set(lang: str, n_bases: int, seed: int) -> Labelled:
    rng = random.Random(seed)
    bases, worst = unrelated_subset(base_texts(lang, n_bases), lang, n_bases)
    pool = [u for t in bases[:200] for u in (list(t) if lang == "zh" else t.split(" "))]
    docs: list[tuple[str, int]] = []
    sims: list[float] = []
    for fam, base in enumerate(bases):
        docs.append((base, fam))
        if fam % 2:
            continue
        base_set = shingles(base, lang)
        for _ in range(rng.randint(1, 3)):
            rate = rng.choice(RATES)
            for attempt in itertools.count():
                copy = edit(base, lang, rate if attempt < 5 else rate / 2, rng, pool)
                sim = jaccard(base_set, shingles(copy, lang))
                if sim >= THRESHOLD or attempt >= 20:
                    break
            docs.append((copy, fam))
            sims.append(sim)
    rng.shuffle(docs)
    records = [Record(id=f"{lang}-{i:06d}", text=t, source="bench", lang=lang) for i, (t, _) in enumerate(docs)]
    return Labelled(lang, records, np.array([f for _, f in docs]), sims, worst)


# --------------------------------------------------------------------------- scoring


def cluster_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of documents sharing a label (singletons contribute none)."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(i)
    return {p for g in groups.values() if len(g) > 1 for p in itertools.combinations(g, 2)}


def prf(pred: set, truth: set) -> tuple[float, float, float]:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# --------------------------------------------------------------------------- the three tools


def fresh_copies(records: list[Record]) -> list[Record]:
    return [Record(id=r.id, text=r.text, source=r.source, lang=r.lang) for r in records]


def best_of(repeats: int, run: Callable[..., Any], prepare: Callable[[int], tuple]) -> tuple[float, Any]:
    """The fastest of `repeats` timed calls `run(*prepare(k))` and the last result; `prepare` is untimed
    (fresh copies, folders), so each side is timed on its own work only."""
    times, result = [], None
    for k in range(repeats):
        call = prepare(k)
        t0 = time.perf_counter()
        result = run(*call)
        times.append(time.perf_counter() - t0)
    return min(times), result


def run_lmforge(records: list[Record], shard_size: int, work: Path, memory: bool = False) -> tuple[list, dict]:
    """Map per shard -> Parquet summaries -> reduce -> apply, as the executor runs it.

    Returns every record (kept and quarantined) and the peak MB of each phase (when `memory`)."""
    import pyarrow.parquet as pq

    stage = MinHashDedup(num_perm=NUM_PERM, bands=BANDS, rows=ROWS, word_ngram=NGRAM, char_ngram=NGRAM,
                         threshold=THRESHOLD, verify=True)
    shards = [records[i : i + shard_size] for i in range(0, len(records), shard_size)]
    sids = [f"{i:05d}" for i in range(len(shards))]
    peaks = {"map": 0.0, "reduce": 0.0, "apply": 0.0}
    meter = _Meter(memory)
    for sid, shard in zip(sids, shards, strict=True):
        with meter.phase(peaks, "map"):
            pq.write_table(stage.map(shard), work / f"summary-{sid}.parquet", compression="zstd")
    with meter.phase(peaks, "reduce"):
        decisions = stage.reduce(Summaries([(s, work / f"summary-{s}.parquet") for s in sids]))
        for sid in sids:
            pq.write_table(decisions[sid], work / f"decision-{sid}.parquet")
        del decisions
    dropped: list[Record] = []
    stage.bind(dropped.append)
    kept: list[Record] = []
    for sid, shard in zip(sids, shards, strict=True):
        with meter.phase(peaks, "apply"):
            kept.extend(stage.apply(pq.read_table(work / f"decision-{sid}.parquet"), shard))
    return kept + dropped, peaks


def lmforge_labels(records: list[Record], out: list[Record]) -> np.ndarray:
    """Cluster label per input record from the stage's meta (singletons keep their own index)."""
    index = {r.id: i for i, r in enumerate(records)}
    labels = np.arange(len(records))
    for r in out:
        info = r.meta.get("minhash_dedup")
        if info:
            labels[index[r.id]] = len(records) + index[info["cluster"]]
    return labels


class _Meter:
    """Peak bytes of one phase: tracemalloc (Python and NumPy) plus a fresh Arrow pool's high-water mark."""

    pools: ClassVar[list] = []  # never freed: Arrow keeps some buffers (caches) for the process's lifetime

    def __init__(self, on: bool) -> None:
        self.on = on

    def phase(self, peaks: dict, name: str):
        import contextlib

        import pyarrow as pa

        @contextlib.contextmanager
        def measure():
            if not self.on:
                yield
                return
            old = pa.default_memory_pool()
            pool = pa.proxy_memory_pool(old)
            self.pools.append(pool)
            pa.set_memory_pool(pool)
            tracemalloc.start()
            try:
                yield
            finally:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                pa.set_memory_pool(old)
                peaks[name] = max(peaks[name], (peak + pool.max_memory()) / 2**20)

        return measure()


def run_datasketch(records: list[Record], lang: str, verify: bool) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=NUM_PERM, seed=1)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    sketches = []
    for i, r in enumerate(records):
        m = MinHash(num_perm=NUM_PERM, permutations=template.permutations, scheme=template.scheme)
        m.update_batch([s.encode("utf-8") for s in shingles(r.text, lang)])
        lsh.insert(i, m)
        sketches.append(m)
    uf = UnionFind(len(records))
    cutoff = agreement_needed(NUM_PERM, THRESHOLD) / NUM_PERM  # lmforge's verification rule
    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j != i and (not verify or m.jaccard(sketches[j]) >= cutoff):
                uf.union(i, j)
    return np.array([uf.find(i) for i in range(len(records))])


def run_rensa(records: list[Record], lang: str, verify: bool) -> np.ndarray:
    """rensa's bulk path: one Rust call builds every sketch, one inserts them, one queries them all."""
    from rensa import RMinHash, RMinHashLSH

    sketches = RMinHash.from_token_sets([shingles(r.text, lang) for r in records], NUM_PERM, 1)
    lsh = RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)  # rows = NUM_PERM / BANDS = 8
    lsh.insert_many(sketches)
    uf = UnionFind(len(records))
    cutoff = agreement_needed(NUM_PERM, THRESHOLD) / NUM_PERM  # lmforge's verification rule
    for i, candidates in enumerate(lsh.query_all(sketches)):
        for j in candidates:
            if j != i and (not verify or sketches[i].jaccard(sketches[j]) >= cutoff):
                uf.union(i, j)
    return np.array([uf.find(i) for i in range(len(records))])


# --------------------------------------------------------------------------- main


def pin_one_core() -> str:
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bases", type=int, default=2000, help="base documents per language")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lmforge").setLevel(logging.WARNING)
    log.info("one core: %s", pin_one_core())

    sets = {}
    for lang in LANGS:
        t0 = time.perf_counter()
        sets[lang] = s = build_set(lang, args.bases, args.seed)
        sims = np.array(s.copy_jaccard)
        log.info("%s: %d documents (%d bases, %d copies) in %.1f s; copy Jaccard min %.3f median %.3f, "
                 "max Jaccard between bases %.3f", lang, len(s.records), s.family.max() + 1, len(sims),
                 time.perf_counter() - t0, sims.min(), np.median(sims), s.worst_unrelated)

    # the labelled set is long-lived: keep the cyclic GC from rescanning it during either tool's run
    gc.collect()
    gc.freeze()
    rows, f1, seconds = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang, s in sets.items():
            truth = cluster_pairs(s.family)

            def fresh(k: int, lang: str = lang, s: Labelled = s) -> tuple:
                work = Path(tmp) / f"{lang}-{k}"
                work.mkdir()
                return fresh_copies(s.records), args.shard_size, work  # apply writes into meta

            best, (out, _) = best_of(args.repeats, run_lmforge, fresh)
            p, r, f = prf(cluster_pairs(lmforge_labels(s.records, out)), truth)
            f1[lang] = f
            seconds[lang] = [best, 0.0, 0.0]
            rows.append(("lmforge", lang, len(s.records), len(truth), p, r, f, len(s.records) / best))
            for col, (name, peer) in enumerate((("datasketch", run_datasketch), ("rensa", run_rensa)), start=1):
                best, labels = best_of(args.repeats, peer, lambda k, s=s, lang=lang: (s.records, lang, False))
                p, r, f = prf(cluster_pairs(labels), truth)
                seconds[lang][col] = best
                rows.append((name, lang, len(s.records), len(truth), p, r, f, len(s.records) / best))
                p, r, f = prf(cluster_pairs(peer(s.records, lang, verify=True)), truth)
                rows.append((f"{name}+verify", lang, len(s.records), len(truth), p, r, f, float("nan")))

        memory = []
        both = sets["zh"].records + sets["en"].records
        half = sets["zh"].records[: len(sets["zh"].records) // 2] + sets["en"].records[: len(sets["en"].records) // 2]
        for name, recs, shard in (("half corpus", half, args.shard_size), ("full corpus", both, args.shard_size),
                                  ("full corpus", both, args.shard_size // 2),
                                  ("full corpus", both, args.shard_size * 2)):
            work = Path(tmp) / f"mem-{len(memory)}"
            work.mkdir()
            _, peaks = run_lmforge(fresh_copies(recs), shard, work, memory=True)
            memory.append((name, len(recs), shard, peaks))

    print(f"{'tool':<19}{'lang':<6}{'docs':>7}{'true pairs':>12}{'precision':>11}{'recall':>8}{'F1':>7}{'docs/s':>10}")
    for tool, lang, n, pairs, p, r, f, rate in rows:
        shown = "-" if np.isnan(rate) else f"{rate:.0f}"
        print(f"{tool:<19}{lang:<6}{n:>7}{pairs:>12}{p:>11.3f}{r:>8.3f}{f:>7.3f}{shown:>10}")
    total = sum(len(s.records) for s in sets.values())
    t_lmf, t_ds, t_rs = (sum(t[k] for t in seconds.values()) for k in (0, 1, 2))
    speedup, rensa_speedup = t_ds / t_lmf, t_rs / t_lmf
    by_lang = ", ".join(f"{lang} {ds / lm:.1f}x" for lang, (lm, ds, _) in seconds.items())
    by_lang_rs = ", ".join(f"{lang} {rs / lm:.2f}x" for lang, (lm, _, rs) in seconds.items())
    print(f"both languages: lmforge {total / t_lmf:.0f} docs/s, datasketch {total / t_ds:.0f} docs/s, "
          f"rensa {total / t_rs:.0f} docs/s on one core; speedup over datasketch {speedup:.1f}x ({by_lang}), "
          f"over rensa {rensa_speedup:.2f}x ({by_lang_rs})")
    print("peak memory (MB: tracemalloc + Arrow pool high-water mark, largest shard of each phase)")
    print(f"{'corpus':<18}{'docs':>7}{'shard':>7}{'map':>8}{'reduce':>8}{'apply':>8}")
    for name, n, shard, peaks in memory:
        print(f"{name:<18}{n:>7}{shard:>7}{peaks['map']:>8.1f}{peaks['reduce']:>8.1f}{peaks['apply']:>8.1f}")
    peak = max(max(p.values()) for name, n, shard, p in memory if name == "full corpus" and shard == args.shard_size)
    print(f"f1_zh {f1['zh']:.3f} f1_en {f1['en']:.3f} speedup {speedup:.3f} peak_mb {peak:.1f} "
          f"rensa_speedup {rensa_speedup:.3f}")


if __name__ == "__main__":
    main()
