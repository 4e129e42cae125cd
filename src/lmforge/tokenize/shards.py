"""Encode record shards into token shards in parallel, resumably, with document indexes.

One task per record shard writes `shard-XXXXX.tok` (the existing token file format), then
`shard-XXXXX.idx` (document start offsets, uint64) and last the `shard-XXXXX.done` marker; a
WordPiece tokenizer (BERT) also writes `shard-XXXXX.wrd`, each token's word and sentence starts. A
shard without a marker is redone from its input on resume; its files are rewritten whole, and
encoding is deterministic, so a resumed run ends byte-identical to one that was never stopped.

The output directory remembers which tokenizer made it (`tokens.json`, with the SHA-256 of
tokenizer.json): resuming with a different tokenizer would silently mix two vocabularies.
Task functions are module-level and their arguments plain dataclasses, so the local process
pool and Ray both run them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.errors import InputError, UserError
from lmforge.lang import is_cjk
from lmforge.records import read_json, write_json_atomic
from lmforge.tokenize.encode import (
    TokenWriter,
    iter_encoded,
    read_index_file,
    read_token_file,
    token_dtype,
    write_index_file,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.pipeline.executors import Executor

log = logging.getLogger(__name__)

META_FILE = "tokens.json"
MANIFEST_FILE = "manifest.json"


def tok_path(directory: Path, shard_id: str) -> Path:
    return directory / f"shard-{shard_id}.tok"


def idx_path(directory: Path, shard_id: str) -> Path:
    return directory / f"shard-{shard_id}.idx"


def tokenizer_sha256(tokenizer_dir: str | Path) -> str:
    """Fingerprint of the vocabulary and rules; two directories with equal files encode alike."""
    return hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()


def records_dir(path: str | Path) -> Path:
    """The directory of record shards to encode: a stage directory, or a run directory's final stage."""
    from lmforge.pipeline.shards import done_shard_ids

    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{p} is not a directory: give a run directory or a stage directory of record shards")
    if done_shard_ids(p):
        return p
    stats = p / "stats.json"
    if stats.is_file() and (out := read_json(stats).get("output")) and done_shard_ids(p / out):
        return p / out
    stages = sorted(d for d in (p / "stages").glob("[0-9][0-9]-*") if d.is_dir() and done_shard_ids(d))
    if stages:
        return stages[-1]
    raise InputError(f"{p} holds no finished record shards (shard-*.parquet with .done markers)")


def in_holdout(record_id: str, percent: float) -> bool:
    """Stable document-level split: the same id always lands on the same side, in every run."""
    h = int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little")
    return (h % 10_000) < percent * 100


def read_texts(path: Path, batch_size: int = 4096, holdout: tuple[float, str] | None = None) -> Iterator[str]:
    """Only the text column of a record shard: parsing every record's meta JSON would cost more than
    encoding it (People's Daily keeps its POS tags there).

    `holdout=(percent, "train" | "val")` keeps one side of the `in_holdout` split (reads ids too).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise InputError(f"Parquet file {path} has no 'text' column (columns: {pf.schema_arrow.names})")
        columns = ["text"] if holdout is None else ["text", "id"]
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            texts = (t or "" for t in batch.column(0).to_pylist())
            if holdout is None:
                yield from texts
                continue
            percent, side = holdout
            for text, rid in zip(texts, batch.column(1).to_pylist(), strict=True):
                if in_holdout(rid, percent) == (side == "val"):
                    yield text
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet file {path}: {exc}") from None


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str, sha: str):
    """One load per worker process and tokenizer, not one per shard (the sha keys out stale copies)."""
    from lmforge.tokenize.bpe import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@dataclass
class EncodeTask:
    """Encode one record shard; `sha` is the tokenizer's fingerprint, checked by the worker."""

    input_path: Path
    out_dir: Path
    shard_id: str
    tokenizer_dir: Path
    sha: str
    batch_size: int = 1024
    holdout: tuple[float, str] | None = None


def encode_shard(task: EncodeTask) -> dict[str, Any]:
    """Write the token file, then the index, then the marker (so a marker means both are whole)."""
    from lmforge.pipeline.shards import marker_path

    t0 = time.perf_counter()
    if tokenizer_sha256(task.tokenizer_dir) != task.sha:
        raise UserError(f"tokenizer {task.tokenizer_dir} changed while encoding; run the command again")
    tok = _tokenizer(str(task.tokenizer_dir), task.sha)
    counts = {"documents": 0, "chars": 0}

    def texts() -> Iterator[str]:
        for text in read_texts(task.input_path, holdout=task.holdout):
            counts["documents"] += 1
            counts["chars"] += len(text)
            yield text

    tokens = write_token_shard(tok, texts(), task.out_dir, task.shard_id, task.batch_size)
    info = {"shard": task.shard_id, **counts, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 4)}
    write_json_atomic(marker_path(task.out_dir, task.shard_id), info)
    return info


def write_token_shard(tok: Tokenizer, texts: Iterable[str], out_dir: Path, shard_id: str,
                      batch_size: int = 1024) -> int:
    """Encode `texts` into `shard-ID.tok` and its `.idx` (and, for WordPiece, `.wrd`); returns the tokens.

    A WordPiece tokenizer (BERT) encodes sentence by sentence and keeps word and sentence starts
    beside the tokens (`lmforge.tokenize.words`); the others encode whole documents.
    """
    from lmforge.tokenize.bpe import eos_id
    from lmforge.tokenize.words import FlagsWriter, is_wordpiece, iter_encoded_words, words_path

    eos, dtype = eos_id(tok), token_dtype(tok.get_vocab_size())
    ends: list[np.ndarray] = []
    with TokenWriter(tok_path(out_dir, shard_id), dtype) as writer:
        if is_wordpiece(tok):
            with FlagsWriter(words_path(out_dir, shard_id)) as flags:
                for tokens, lengths, word_flags in iter_encoded_words(tok, texts, eos, dtype, batch_size):
                    ends.append(writer.count + np.cumsum(lengths))
                    writer.write(tokens)
                    flags.write(word_flags)
        else:
            for tokens, lengths in iter_encoded(tok, texts, eos, batch_size):
                ends.append(writer.count + np.cumsum(lengths))
                writer.write(tokens)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), *ends])
    write_index_file(idx_path(out_dir, shard_id), offsets)
    return int(offsets[-1])


def encode_texts(texts: Iterable[str], tokenizer_dir: str | Path, out_dir: str | Path,
                 shard_id: str = "00000", batch_size: int = 1024) -> Path:
    """Encode documents straight into one finished token shard of `out_dir` (tests, benchmarks, small data).

    The result reads like any `encode_shards` output (`TokenDataset(out_dir)`); returns `out_dir`.
    """
    from lmforge.pipeline.shards import marker_path
    from lmforge.tokenize.bpe import eos_id, load_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(tokenizer_dir)
    counts = {"documents": 0, "chars": 0}

    def counted() -> Iterator[str]:
        for text in texts:
            counts["documents"] += 1
            counts["chars"] += len(text)
            yield text

    tokens = write_token_shard(tok, counted(), out, shard_id, batch_size)
    write_json_atomic(out / META_FILE, {"tokenizer": _relative(tokenizer_dir, out), "vocab_size": tok.get_vocab_size(),
                                        "dtype": token_dtype(tok.get_vocab_size()).name, "eos_id": eos_id(tok)})
    write_json_atomic(marker_path(out, shard_id), {"shard": shard_id, **counts, "tokens": tokens})
    return out


def _relative(path: str | Path, out_dir: Path) -> str:
    """`path` as seen from `out_dir` (`../../tokenizer`): the folder stays valid when its run is moved,
    copied or mirrored to an object store, and two runs of one recipe write the same bytes."""
    return Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())).as_posix()


def _claim(out_dir: Path, tokenizer_dir: Path, sha: str, source: Path,
           holdout: tuple[float, str] | None) -> dict[str, Any]:
    """Record which tokenizer owns `out_dir`, or refuse if another one does."""
    from lmforge.tokenize.bpe import eos_id, load_tokenizer

    meta_path = out_dir / META_FILE
    if meta_path.is_file():
        meta = read_json(meta_path)
        if meta.get("tokenizer_sha256") != sha:
            raise UserError(
                f"{out_dir} was encoded with another tokenizer ({meta.get('tokenizer')}); "
                "choose another --out or delete it"
            )
        if meta.get("holdout") != (list(holdout) if holdout else None):
            raise UserError(f"{out_dir} holds another train/validation split ({meta.get('holdout')}); "
                            "choose another --out or delete it")
        return meta
    tok = load_tokenizer(tokenizer_dir)
    meta = {
        "tokenizer": _relative(tokenizer_dir, out_dir),
        "tokenizer_sha256": sha,
        "vocab_size": tok.get_vocab_size(),
        "dtype": token_dtype(tok.get_vocab_size()).name,
        "eos_id": eos_id(tok),
        "source": _relative(source, out_dir),
        "holdout": list(holdout) if holdout else None,
    }
    write_json_atomic(meta_path, meta)
    return meta


def encode_shards(
    source: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    executor: Executor | None = None,
    batch_size: int = 1024,
    holdout: tuple[float, str] | None = None,
) -> dict[str, Any]:
    """Encode every finished record shard under `source` into `out_dir`; returns the manifest.

    `source` is a run directory (its final stage is used) or a stage directory. Shards that are
    already marked done are skipped, so the same call resumes a killed run. `holdout=(percent,
    side)` encodes only the training or only the validation side of the document split.
    """
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.pipeline.runner import remove_stale_temp_files
    from lmforge.pipeline.shards import done_shard_ids, marker_path, shard_path

    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (got {batch_size})")
    in_dir = records_dir(source)
    tokenizer_dir, out = Path(tokenizer_dir), Path(out_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise InputError(f"no tokenizer found at {tokenizer_dir}: train one first or fix the path")
    sha = tokenizer_sha256(tokenizer_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _claim(out, tokenizer_dir, sha, in_dir, holdout)
    remove_stale_temp_files(out)
    shards = done_shard_ids(in_dir)
    todo = [s for s in shards if not marker_path(out, s).exists()]
    log.info("encoding %d of %d shards from %s into %s", len(todo), len(shards), in_dir, out)
    if todo:
        tasks = [EncodeTask(shard_path(in_dir, s), out, s, tokenizer_dir, sha, batch_size, holdout) for s in todo]
        own = executor is None
        executor = executor or LocalExecutor()
        try:
            executor.map(encode_shard, tasks, description="tokens: encode" + (f" {holdout[1]}" if holdout else ""))
        finally:
            if own:
                executor.close()
    return write_manifest(out, meta, shards)


def write_manifest(out: Path, meta: dict[str, Any], shards: list[str]) -> dict[str, Any]:
    """Totals and per-shard counts, without timings, so equal inputs give equal manifests."""
    from lmforge.pipeline.shards import marker_path, read_marker

    rows = []
    for s in shards:
        info = read_marker(marker_path(out, s))
        if info is None:
            raise InputError(f"token shard {s} in {out} has no readable marker; run the encode again")
        rows.append({"shard": s, "documents": info["documents"], "tokens": info["tokens"], "chars": info["chars"]})
    manifest = {
        **{k: meta[k] for k in ("tokenizer_sha256", "vocab_size", "dtype", "eos_id")},
        "documents": sum(r["documents"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "chars": sum(r["chars"] for r in rows),
        "shards": rows,
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest


def token_shard_ids(tokens_dir: str | Path) -> list[str]:
    """Finished token shards in order (marker present: token file and index are whole)."""
    from lmforge.pipeline.shards import done_shard_ids

    return [s for s in done_shard_ids(Path(tokens_dir)) if tok_path(Path(tokens_dir), s).is_file()]


def iter_token_shards(tokens_dir: str | Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(shard id, memory-mapped tokens, document offsets) for each finished shard, in order."""
    d = Path(tokens_dir)
    for s in token_shard_ids(d):
        tokens, offsets = read_token_file(tok_path(d, s)), read_index_file(idx_path(d, s))
        if int(offsets[-1]) != tokens.size:
            raise InputError(f"index {idx_path(d, s)} does not match {tok_path(d, s)}; re-encode the shard")
        yield s, tokens, offsets


def concat_token_shards(tokens_dir: str | Path, out_path: str | Path) -> int:
    """Stream every shard into one flat token file (what `pretrain` reads); returns the token count.

    Memory stays at one chunk: the shards are memory-mapped and copied in slices.
    """
    shards = list(iter_token_shards(tokens_dir))  # memory maps only: nothing is read yet
    if not shards:
        raise InputError(f"{tokens_dir} holds no finished token shards")
    chunk = 1 << 22
    with TokenWriter(out_path, shards[0][1].dtype) as writer:
        for _, tokens, _ in shards:
            for start in range(0, tokens.size, chunk):
                writer.write(tokens[start : start + chunk])
    return writer.count


def guess_lang(text: str) -> str:
    """"zh" for CJK text (`lmforge.lang.is_cjk`), else "en": enough to group a report."""
    return "zh" if is_cjk(text) else "en"


def iter_source_texts(sources: Iterable[str | Path]) -> Iterator[tuple[str, str]]:
    """(lang, text) from run or stage directories, Parquet, JSONL or plain-text files (one document per line).

    A record's own `lang` is used when it has one; otherwise the language is guessed from its script.
    """
    import pyarrow.parquet as pq

    from lmforge.pipeline.shards import done_shard_ids, shard_path
    from lmforge.records import read_jsonl

    for source in sources:
        p = Path(source)
        if p.is_dir():
            d = records_dir(p)
            files = [shard_path(d, s) for s in done_shard_ids(d)]
        elif p.is_file():
            files = [p]
        else:
            raise InputError(f"{p} does not exist: give a run directory, a stage directory or files")
        for f in files:
            name = f.name.lower()
            if name.endswith(".parquet"):
                columns = [c for c in ("text", "lang") if c in pq.ParquetFile(f).schema_arrow.names]
                for batch in pq.ParquetFile(f).iter_batches(columns=columns):
                    data = batch.to_pydict()
                    langs = data.get("lang") or [""] * batch.num_rows
                    for text, lang in zip(data["text"], langs, strict=True):
                        if text:
                            yield lang or guess_lang(text), text
            elif name.endswith((".jsonl", ".jsonl.gz")):
                for r in read_jsonl(f):
                    if r.drop_reason is None and r.text:
                        yield r.lang or guess_lang(r.text), r.text
            else:
                with open(f, encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        if text := line.rstrip("\n"):
                            yield guess_lang(text), text
