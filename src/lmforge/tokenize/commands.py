"""The `lmforge tokenizer` commands as Python calls, with the same parameters as the command line.

Training on built-in corpora uses their training part only, so that `inspect_tokenizers`, which
measures on the held-out part by default, scores text the tokenizer never saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.tokenize.bpe import TokenizerConfig
from lmforge.tokenize.report import Encoder, Row


@dataclass
class TrainedTokenizer:
    config: TokenizerConfig
    vocab_size: int
    path: Path


def train_from_sources(sources: Sequence[Path] | None, out: Path, corpus: Sequence[str] | None = None,
                       kind: str = "byte_bpe", vocab_size: int = 4096, min_frequency: int = 2, jieba: bool = False,
                       chat_template: bool = True, max_chars: int | None = None) -> TrainedTokenizer:
    """Learn a vocabulary from runs, files and built-in corpora; the directory loads with AutoTokenizer."""
    from lmforge.config import validate
    from lmforge.tokenize.bpe import load_tokenizer, train_tokenizer
    from lmforge.tokenize.report import builtin_texts
    from lmforge.tokenize.shards import iter_source_texts

    if not sources and not corpus:
        raise UserError("give run directories or files to train on, or --corpus NAME")
    config = validate(
        TokenizerConfig,
        {"kind": kind, "vocab_size": vocab_size, "min_frequency": min_frequency, "jieba": jieba,
         "chat_template": chat_template, "max_training_chars": max_chars},
        where="tokenizer train",
    )
    from_files = (text for _, text in iter_source_texts(sources or []))
    built_in = builtin_texts("train", corpora=corpus).values() if corpus else []
    train_tokenizer(itertools.chain(from_files, *built_in), config, out)
    return TrainedTokenizer(config, load_tokenizer(out).get_vocab_size(), out)


def sample_texts(text: Sequence[Path] | None, corpus: Sequence[str] | None = None,
                 limit_chars: int = 1_000_000) -> dict[str, list[str]]:
    """Texts by language to measure on: from runs/files when given, else the built-in held-out text."""
    from lmforge.tokenize.report import builtin_texts
    from lmforge.tokenize.shards import iter_source_texts

    if not text:
        return builtin_texts("heldout", limit_chars=limit_chars, corpora=corpus)
    samples: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    for lang, t in iter_source_texts(text):
        if used.get(lang, 0) < limit_chars:
            samples.setdefault(lang, []).append(t)
            used[lang] = used.get(lang, 0) + len(t)
    return samples


@dataclass
class Inspection:
    """Fertility rows per tokenizer and language, plus what the report prints beside them."""

    rows: list[Row]
    encoders: list[Encoder]
    shard_encoding: list[tuple[Path, str]] = field(default_factory=list)  # (tokenizer, the encoder shards use)
    missing: dict[str, str] = field(default_factory=dict)  # reference → why it is unavailable

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {e.name: e.vocab_size for e in self.encoders}


def inspect_tokenizers(tokenizers: Sequence[Path], text: Sequence[Path] | None = None,
                       corpus: Sequence[str] | None = None, compare: bool = True,
                       limit_chars: int = 1_000_000) -> Inspection:
    """Fertility, byte-fallback and unknown rates of tokenizer directories (and the public references)."""
    from lmforge.tokenize.bpe import load_tokenizer
    from lmforge.tokenize.fast import status as encoding_status
    from lmforge.tokenize.report import fertility, lmforge_encoder, reference_encoders

    samples = sample_texts(text, corpus, limit_chars)
    encoders = [lmforge_encoder(p, name=str(p)) for p in tokenizers]
    missing: dict[str, str] = {}
    if compare:
        refs, missing = reference_encoders()
        encoders += refs
    rows = fertility(encoders, samples)
    shard_encoding = [(Path(p), encoding_status(load_tokenizer(p))[1]) for p in tokenizers]
    return Inspection(rows, encoders, shard_encoding, missing)


def encode_run(run: Path, tokenizer: Path | None = None, out: Path | None = None, executor: str = "local",
               workers: int | None = None, ray_address: str | None = None, batch_size: int = 1024) -> dict[str, Any]:
    """Encode a run's final stage (or a stage directory) into token shards, resuming an interrupted encode.

    Returns the manifest, with `out` the shard directory written.
    """
    from lmforge.config import validate
    from lmforge.pipeline.executors import ExecutorConfig, make_executor
    from lmforge.tokenize.shards import encode_shards

    kind = "ray" if ray_address else executor
    config = validate(ExecutorConfig, {"kind": kind, "workers": workers, "address": ray_address},
                      where="tokenizer encode")
    out_dir = out or run / "tokens"
    with make_executor(config) as ex:
        manifest = encode_shards(run, tokenizer or run / "tokenizer", out_dir, ex, batch_size)
    return {**manifest, "out": out_dir}


__all__ = ["Inspection", "TrainedTokenizer", "encode_run", "inspect_tokenizers", "sample_texts", "train_from_sources"]
