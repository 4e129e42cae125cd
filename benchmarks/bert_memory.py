"""Peak memory of BERT pretraining's data path at 10k and 100k documents: it must not grow with the corpus.

For each corpus size, a child process encodes synthetic record shards into WordPiece token shards
(`encode_shards`, train and validation sides, inline), then runs a few BERT pretraining steps on
them (`pretrain_bert`) and reports its own peak resident memory (VmHWM from /proc/self/status).
The record shards and the tokenizer are made beforehand by this process and are not measured.

    python benchmarks/bert_memory.py                   # 10k and 100k documents, 5 steps
    python benchmarks/bert_memory.py --docs 2000 20000 --steps 3

Prints a table, then a last line `rss_10k_mb X rss_100k_mb Y ratio Z` (the first two sizes).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARD_DOCS = 5000
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "pe", "da", "gon", "tur", "mel", "bar", "sin"]
_HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你而能下过子说产种面方后多定行学法所民得经"


def _words(count: int) -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(count)]


_VOCAB = _words(3000)


def synthetic_document(number: int) -> str:
    """A deterministic document of 3-8 sentences; one in twenty is Chinese (so jieba runs too)."""
    rng = random.Random(number)
    if number % 20 == 0:
        return "".join("".join(rng.choice(_HAN) for _ in range(rng.randint(8, 30))) + "。"
                       for _ in range(rng.randint(3, 8)))
    sentences = []
    for _ in range(rng.randint(3, 8)):
        words = [rng.choice(_VOCAB) for _ in range(rng.randint(6, 20))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def write_records(directory: Path, docs: int) -> Path:
    """Record shards of SHARD_DOCS documents each, with completion markers, as a pipeline stage leaves them."""
    from lmforge.pipeline.shards import marker_path, shard_path
    from lmforge.records import Record, write_json_atomic, write_parquet

    directory.mkdir(parents=True, exist_ok=True)
    for s, first in enumerate(range(0, docs, SHARD_DOCS)):
        shard_id = f"{s:05d}"
        numbers = range(first, min(docs, first + SHARD_DOCS))
        n = write_parquet(shard_path(directory, shard_id),
                          (Record(id=f"doc-{i}", text=synthetic_document(i)) for i in numbers))
        write_json_atomic(marker_path(directory, shard_id), {"shard": shard_id, "records": n})
    return directory


def child(records: Path, tokenizer: Path, out: Path, steps: int) -> None:
    """Encode and train, then print this process's peak memory as JSON (run in a fresh process)."""
    import torch

    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.tokenize.dataset import TokenDataset
    from lmforge.tokenize.shards import encode_shards
    from lmforge.train.config import PretrainConfig
    from lmforge.train.pretrain import pretrain_bert

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    manifests = {split: encode_shards(records, tokenizer, out / "tokens" / split, LocalExecutor(workers=1),
                                      holdout=(5.0, split)) for split in ("train", "val")}
    encoded = time.perf_counter() - t0
    cfg = PretrainConfig.model_validate({
        "arch": "bert", "model": {"preset": "bert-tiny"}, "seq_len": 128, "batch_size": 16, "steps": steps,
        "lr": 0.001, "warmup_steps": 1, "eval_every": 0, "eval_batches": 2, "log_every": 1, "device": "cpu",
        "precision": "fp32", "tensorboard": False, "seed": 0})
    pretrain_bert(cfg, TokenDataset(out / "tokens" / "train"), TokenDataset(out / "tokens" / "val"), tokenizer,
                  out / "pretrain")
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(json.dumps({"peak_rss_mb": round(hwm_kb / 1024, 1), "documents": manifests["train"]["documents"]
                      + manifests["val"]["documents"], "tokens": manifests["train"]["tokens"] + manifests["val"]["tokens"],
                      "encode_s": round(encoded, 1), "total_s": round(time.perf_counter() - t0, 1)}))


def measure(work: Path, docs: int, tokenizer: Path, steps: int) -> dict:
    records = write_records(work / f"records-{docs}", docs)
    cmd = [sys.executable, __file__, "--child", str(records), str(tokenizer), str(work / f"run-{docs}"), str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child for {docs} documents failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", nargs=4, metavar=("RECORDS", "TOKENIZER", "OUT", "STEPS"))
    args = parser.parse_args()
    if args.child:
        records, tokenizer, out, steps = args.child
        child(Path(records), Path(tokenizer), Path(out), int(steps))
        return
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    with tempfile.TemporaryDirectory(prefix="bert-memory-") as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer"
        train_tokenizer((synthetic_document(i) for i in range(3000)), TokenizerConfig(kind="wordpiece", vocab_size=4000),
                        tokenizer)
        rows = {docs: measure(work, docs, tokenizer, args.steps) for docs in args.docs}
    print(f"{'documents':>10} {'tokens':>12} {'peak RSS MB':>12} {'encode s':>9} {'total s':>8}")
    for r in rows.values():
        print(f"{r['documents']:>10} {r['tokens']:>12} {r['peak_rss_mb']:>12} {r['encode_s']:>9} {r['total_s']:>8}")
    small, large = (rows[d]["peak_rss_mb"] for d in args.docs[:2])
    print(f"rss_10k_mb {small} rss_100k_mb {large} ratio {large / small:.3f}")


if __name__ == "__main__":
    main()
