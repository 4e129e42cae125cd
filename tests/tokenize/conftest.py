"""Real text for the tokenizer tests: snippets of the built-in Chinese and English corpora."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.collect.builtin import corpus_records
from lmforge.records import Record
from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

MIXED = "Hello 世界! 价格是 12345 元 😀🎉 in 2024年。\n\tTabs,  spaces and 𠀀 rare 字; café ŉ 🦄 👩‍👩‍👧 é"
CONTROL = "".join(chr(c) for c in range(32)) + "\x7f\x85\u2028\u200b\ufeff"


@pytest.fixture(scope="session")
def records() -> list[Record]:
    """People's Daily, reviews and Python docs, interleaved so any prefix holds both languages."""
    groups = [list(corpus_records(name, limit)) for name, limit in
              (("peoples_daily", 300), ("reviews", 300), ("python_docs", 150))]
    out: list[Record] = []
    for i in range(max(map(len, groups))):
        out += [g[i] for g in groups if i < len(g)]
    return out


@pytest.fixture(scope="session")
def texts(records) -> list[str]:
    return [r.text for r in records]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, texts) -> Path:
    """A small byte-level BPE shared by the encoding, dataset and CLI tests."""
    return train_tokenizer(texts, TokenizerConfig(vocab_size=1200), tmp_path_factory.mktemp("tok"))


def write_stage(directory: Path, records: list[Record], shard_size: int) -> Path:
    """Finished record shards as the pipeline leaves them (Parquet + .done markers)."""
    from lmforge.pipeline.shards import write_outputs

    for n, i in enumerate(range(0, len(records), shard_size)):
        write_outputs(directory, f"{n:05d}", records[i : i + shard_size], [], [])
    return directory
