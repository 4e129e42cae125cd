"""Scale: exact + MinHash dedup through the pipeline runner on a synthetic bilingual corpus of 100k to 10M documents.

The corpus is generated on the fly, shard by shard in worker processes, straight into a run
directory's input shards (nothing is stored in the repo and no process holds the corpus):
- an original document is a random sequence drawn from the built-in corpora's own text:
  100-400 characters of peoples_daily (Chinese) or 60-200 words of python_docs (English),
  half and half, each drawn with its natural frequencies;
- 5% of documents are near-copies of an earlier original anywhere in the corpus (so pairs cross
  shards), edited as `benchmarks/dedup.py` does (insert, delete, substitute, swap on 0.5%, 1% or
  2% of the characters or words, redrawn until the exact shingle Jaccard with the original is
  >= 0.8), and 2% are exact copies (half of them with extra spaces and upper case (English)
  or full-width punctuation made half-width (Chinese), which exact_dedup's NFKC, lowercase and
  space normalisation must see through);
- every document is a pure function of (seed, index), so a copy regenerates its original
  instead of remembering it, and each id carries its ground-truth family:
  `<o|x|n><index>-<family index>` (original, exact copy, near copy).

`exact_dedup` then `minhash_dedup` (defaults: 128 permutations, 16 bands x 8 rows, threshold
0.8, verify) run through `run_stages` with a 2-worker LocalExecutor, as `lmforge run` runs them.
Each size runs in a fresh interpreter. A progress reporter marks each phase (map, reduce, apply
of each stage); a thread samples the RSS of the whole process tree (the runner and its workers)
every 50 ms, and the runner's own peak during a phase is read exactly from VmHWM (reset at each
phase start through /proc/self/clear_refs). The reduce runs in the runner process, so its bytes
per document are (the runner's peak during the reduce - its RSS when the reduce starts) / docs.
Documents/s is wall-clock (generation not included); documents per CPU second (runner and
workers, user + system) is also shown, since a shared machine slows the first but not the second.

Score (cluster level): a dropped document is a true positive when it was dropped as a duplicate
of a document of its own family; precision = true positives / dropped, recall = true
positives / planted copies. The table also splits the true drops by stage: exact_dedup's can
exceed the planted exact copies (a near copy whose edit changed nothing, such as a swap of two
equal neighbours, is an exact copy).
Run it as a script (`python benchmarks/scale.py`): it imports the edit model from dedup.py beside it.

Last line: `docs_per_s_10m X rss_ratio_10m_1m X f1_10m X` (with the largest and second largest
sizes run when those are not 10m and 1m; the table names them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from dedup import RATES, THRESHOLD, edit, jaccard, shingles  # benchmarks/dedup.py, beside this file

log = logging.getLogger("scale_bench")

EXACT_SHARE, NEAR_SHARE = 0.02, 0.05
SPECS = [("exact_dedup", {}), ("minhash_dedup", {})]
_MASK = (1 << 64) - 1
_VOCAB: dict[str, list[str]] = {}


# --------------------------------------------------------------------------- the synthetic corpus


def _mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit hash of an integer (which index is what kind, which language)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def kind_of(i: int, seed: int) -> str:
    if i == 0:
        return "o"
    u = _mix((seed << 40) ^ i) / 2**64
    return "x" if u < EXACT_SHARE else "n" if u < EXACT_SHARE + NEAR_SHARE else "o"


def vocab(lang: str) -> list[str]:
    """Character (zh) or word (en) occurrences of a built-in corpus: drawing uniformly keeps their frequencies."""
    if lang not in _VOCAB:
        import itertools

        from lmforge.collect.builtin import corpus_records

        if lang == "zh":
            texts = (r.text for r in itertools.islice(corpus_records("peoples_daily"), 3000))
            _VOCAB[lang] = [c for t in texts for c in t if not c.isspace()]
        else:
            _VOCAB[lang] = [w for r in corpus_records("python_docs") for w in re.findall(r"[A-Za-z]+", r.text)]
    return _VOCAB[lang]


def original(i: int, seed: int) -> tuple[str, str]:
    """(language, text) of original document i: the same for every caller."""
    rng = random.Random((seed << 40) + i)
    lang = "zh" if _mix(i ^ (seed << 20) ^ 0x5A5A) & 1 else "en"
    if lang == "zh":
        return lang, "".join(rng.choices(vocab("zh"), k=rng.randint(100, 400)))
    return lang, " ".join(rng.choices(vocab("en"), k=rng.randint(60, 200)))


def document(i: int, seed: int) -> tuple[str, str, str, int]:
    """(id, language, text, family) of document i; a copy regenerates its original from the original's index."""
    kind = kind_of(i, seed)
    if kind == "o":
        lang, text = original(i, seed)
        return f"o{i:010d}-{i:010d}", lang, text, i
    rng = random.Random((seed << 41) + i)
    source = rng.randrange(i)
    while kind_of(source, seed) != "o":
        source = rng.randrange(i)
    lang, text = original(source, seed)
    if kind == "x":
        if rng.random() < 0.5:  # same text once normalised (NFKC, lowercase, collapsed spaces)
            text = "  " + (text.upper() if lang == "en" else unicodedata.normalize("NFKC", text)) + "\n"
    else:
        base = shingles(text, lang)
        rate = rng.choice(RATES)
        for attempt in range(21):
            copy = edit(text, lang, rate if attempt < 5 else rate / 2, rng, vocab(lang))
            if jaccard(base, shingles(copy, lang)) >= THRESHOLD:
                break
        text = copy
    return f"{kind}{i:010d}-{source:010d}", lang, text, source


@dataclass
class GenTask:
    out_dir: Path
    shard: int
    lo: int
    hi: int
    seed: int


def generate_shard(task: GenTask) -> dict[str, int]:
    """Write documents lo..hi-1 as one input shard with its completion marker, as ingest would."""
    from lmforge.pipeline.shards import write_outputs
    from lmforge.pipeline.stage import StageStats
    from lmforge.records import Record

    records, counts = [], {"o": 0, "x": 0, "n": 0, "chars": 0}
    for i in range(task.lo, task.hi):
        rid, lang, text, _ = document(i, task.seed)
        records.append(Record(id=rid, text=text, source="synthetic", lang=lang))
        counts[rid[0]] += 1
        counts["chars"] += len(text)
    n = len(records)
    write_outputs(task.out_dir, f"{task.shard:05d}", records, [], [StageStats("input", records_in=n, records_out=n)])
    return counts


# --------------------------------------------------------------------------- measuring


def _hwm_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class PhaseMeter:
    """Peak RSS of the process tree (sampled) and of this process (exact, VmHWM) per pipeline phase."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.phases: dict[str, dict[str, float]] = {}
        self.current: str | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.exact_hwm = _hwm_reset()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _tree_rss(self) -> tuple[int, int]:
        import psutil

        main = self.proc.memory_info().rss
        tree = main
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker that just ended
                tree += child.memory_info().rss
        return main, tree

    def _sample(self) -> None:
        main, tree = self._tree_rss()
        with self.lock:
            if self.current is not None:
                ph = self.phases[self.current]
                ph["tree"] = max(ph["tree"], tree)
                ph["main"] = max(ph["main"], main)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def enter(self, name: str) -> None:
        main, tree = self._tree_rss()
        with self.lock:
            self.current = name
            self.phases[name] = {"start": time.perf_counter(), "end": 0.0, "main_before": main, "tree": tree,
                                 "main": main}
        if self.exact_hwm:
            _hwm_reset()

    def leave(self) -> None:
        self._sample()
        with self.lock:
            ph = self.phases[self.current]
            ph["end"] = time.perf_counter()
            if self.exact_hwm:
                ph["tree"] += max(0, _hwm() - ph["main"])  # the runner's exact peak replaces its sampled one
                ph["main"] = max(ph["main"], _hwm())
            self.current = None

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def phase_reporter(meter: PhaseMeter):
    """A progress reporter: the runner announces every phase ("02-minhash_dedup: reduce") through it."""
    from lmforge import progress

    class Reporter(progress.Reporter):
        @contextlib.contextmanager
        def task(self, description, total):
            if ": " not in description:
                yield progress.TaskHandle()
                return
            meter.enter(description)
            try:
                yield progress.TaskHandle()
            finally:
                meter.leave()

    return Reporter()


def score(stage_dirs: list[Path], planted: int) -> dict[str, float]:
    """Cluster-level P/R/F1 from the quarantined records' `duplicate_of` (see the module docstring)."""
    import pyarrow.parquet as pq

    dropped = true = 0
    by_stage: dict[str, int] = {}
    for d in stage_dirs:
        stage = d.name.split("-", 1)[1]
        for path in sorted(d.glob("quarantine-*.parquet")):
            table = pq.read_table(path, columns=["id", "meta"])
            for rid, meta in zip(table.column("id").to_pylist(), table.column("meta").to_pylist(), strict=True):
                dropped += 1
                dup_of = json.loads(meta)[stage]["duplicate_of"]
                if rid.split("-")[1] == dup_of.split("-")[1]:
                    true += 1
                    by_stage[stage] = by_stage.get(stage, 0) + 1
    p = true / dropped if dropped else 1.0
    r = true / planted if planted else 1.0
    return {"dropped": dropped, "true": true, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0, "found_exact": by_stage.get("exact_dedup", 0),
            "found_near": by_stage.get("minhash_dedup", 0)}


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished workers: a figure a busy machine does not inflate."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------- one size, in its own process


def run_size(n: int, shard_size: int, workers: int, seed: int, tmp_root: str | None) -> dict:
    from lmforge import progress
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.pipeline.runner import input_dir, run_stages
    from lmforge.records import write_json_atomic

    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="lmforge-scale-") as tmp:
        run_dir = Path(tmp)
        in_dir = input_dir(run_dir)
        in_dir.mkdir(parents=True)
        tasks = [GenTask(in_dir, k, lo, min(n, lo + shard_size), seed) for k, lo in enumerate(range(0, n, shard_size))]
        t0 = time.perf_counter()
        with LocalExecutor(workers) as ex:
            counts = ex.map(generate_shard, tasks)
        write_json_atomic(in_dir / "ingest.done", {"shards": len(tasks)})
        gen_s = time.perf_counter() - t0
        totals = {k: sum(c[k] for c in counts) for k in counts[0]}
        disk = sum(p.stat().st_size for p in in_dir.glob("*.parquet"))

        meter = PhaseMeter()
        baseline = meter.proc.memory_info().rss
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        with progress.use(phase_reporter(meter)), LocalExecutor(workers) as ex:
            out_dir = run_stages(run_dir, SPECS, ex)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        meter.close()
        stage_dirs = sorted(p for p in (run_dir / "stages").glob("[0-9][0-9]-*") if p.name != "00-input")
        result = score(stage_dirs, totals["x"] + totals["n"])
        kept = sum(json.loads(p.read_text())["records"] for p in out_dir.glob("shard-*.done"))
    phases = {name: {"seconds": ph["end"] - ph["start"], "tree_mb": ph["tree"] / 2**20, "main_mb": ph["main"] / 2**20,
                     "main_before_mb": ph["main_before"] / 2**20} for name, ph in meter.phases.items()}
    return {"docs": n, "shards": len(tasks), "generate_s": gen_s, "input_mb": disk / 2**20, "seconds": seconds,
            "cpu_s": cpu, "baseline_mb": baseline / 2**20, "kept": kept, "planted_exact": totals["x"], "planted_near": totals["n"],
            "chars": totals["chars"], "phases": phases, "exact_hwm": meter.exact_hwm, **result}


# --------------------------------------------------------------------------- main


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 10**3, "m": 10**6}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def size_name(n: int) -> str:
    return f"{n // 10**6}m" if n % 10**6 == 0 else f"{n // 10**3}k" if n % 10**3 == 0 else str(n)


def report(results: list[dict]) -> None:
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}; {results[0]['workers']} workers; RSS in MB (tree: runner + workers, sampled "
          f"every 50 ms; runner: {'exact VmHWM' if results[0]['exact_hwm'] else 'sampled'})")
    for r in results:
        print(f"\n{size_name(r['docs'])}: {r['docs']} documents in {r['shards']} shards ({r['chars'] / r['docs']:.0f} "
              f"chars/doc, {r['input_mb']:.0f} MB of input Parquet; generated in {r['generate_s']:.0f} s, untimed), "
              f"{r['planted_exact']} exact + {r['planted_near']} near copies planted; runner at start "
              f"{r['baseline_mb']:.0f} MB")
        print(f"  {'phase':<28}{'seconds':>9}{'docs/s':>10}{'tree peak':>11}{'runner peak':>13}{'B/doc':>8}")
        for name, ph in r["phases"].items():
            per_doc = ""
            if name.endswith("reduce"):
                per_doc = f"{(ph['main_mb'] - ph['main_before_mb']) * 2**20 / r['docs']:.0f}"
            rate = r["docs"] / ph["seconds"] if ph["seconds"] else float("inf")
            print(f"  {name:<28}{ph['seconds']:>9.1f}{rate:>10.0f}{ph['tree_mb']:>11.0f}{ph['main_mb']:>13.0f}"
                  f"{per_doc:>8}")
    print(f"\n{'size':<6}{'docs':>10}{'seconds':>9}{'docs/s':>9}{'CPU s':>8}{'docs/CPU s':>11}{'peak MB':>9}{'kept':>10}{'dropped':>9}"
          f"{'precision':>10}{'recall':>8}{'F1':>7}{'exact: found/planted':>22}{'minhash: found/planted':>24}")
    for r in results:
        peak = max(ph["tree_mb"] for ph in r["phases"].values())
        cpu = r.get("cpu_s", float("nan"))
        print(f"{size_name(r['docs']):<6}{r['docs']:>10}{r['seconds']:>9.1f}{r['docs'] / r['seconds']:>9.0f}"
              f"{cpu:>8.0f}{r['docs'] / cpu:>11.0f}"
              f"{peak:>9.0f}{r['kept']:>10}{r['dropped']:>9}{r['precision']:>10.4f}{r['recall']:>8.4f}{r['f1']:>7.4f}"
              f"{r['found_exact']:>13}/{r['planted_exact']:<8}{r['found_near']:>15}/{r['planted_near']:<8}")
    big = results[-1]
    peak = [max(ph["tree_mb"] for ph in r["phases"].values()) for r in results]
    ratio = peak[-1] / peak[-2] if len(results) > 1 else 1.0
    names = f"{size_name(big['docs'])}/{size_name(results[-2]['docs'])}" if len(results) > 1 else "-"
    if len(results) > 1:
        small = results[-2]
        for name, ph in big["phases"].items():
            if name.endswith("reduce"):
                grow = (ph["main_mb"] - small["phases"][name]["main_mb"]) * 2**20 / (big["docs"] - small["docs"])
                print(f"{name}: runner peak grows {grow:.0f} bytes per added document from "
                      f"{size_name(small['docs'])} to {size_name(big['docs'])}")
    print(f"\npeak RSS ratio {names}: {ratio:.2f} (goal <= 2 for 10m/1m); last line uses {names}")
    print(f"docs_per_s_10m {big['docs'] / big['seconds']:.0f} rss_ratio_10m_1m {ratio:.3f} f1_10m {big['f1']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100k,1m,10m", help="comma-separated document counts (k, m suffixes)")
    parser.add_argument("--shard-size", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="where the run directories go (default: the system temp dir)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lmforge").setLevel(logging.WARNING)
    if args.one is not None:
        result = run_size(args.one, args.shard_size, args.workers, args.seed, args.tmp)
        print("RESULT " + json.dumps({**result, "workers": args.workers}), flush=True)
        return
    results = []
    for n in sorted(parse_size(s) for s in args.sizes.split(",")):
        log.info("%s: generating and deduplicating %d documents (fresh interpreter)", size_name(n), n)
        cmd = [sys.executable, __file__, "--one", str(n), "--shard-size", str(args.shard_size),
               "--workers", str(args.workers), "--seed", str(args.seed)] + (["--tmp", args.tmp] if args.tmp else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
        log.info("%s: %.1f s, F1 %.4f", size_name(n), results[-1]["seconds"], results[-1]["f1"])
    report(results)


if __name__ == "__main__":
    main()
