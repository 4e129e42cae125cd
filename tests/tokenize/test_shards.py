"""Parallel shard encoding: files, indexes, resume after SIGKILL, tokenizer mismatch, concatenation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.errors import InputError, UserError
from lmforge.pipeline.executors import LocalExecutor
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.tokenize.encode import encode_documents, read_index_file, read_token_file
from lmforge.tokenize.shards import (
    concat_token_shards,
    encode_shards,
    iter_source_texts,
    iter_token_shards,
    records_dir,
)

from .conftest import write_stage


def _outputs(directory: Path) -> dict[str, bytes]:
    """Everything a consumer reads: token files, indexes and the manifest (markers hold timings)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix in (".tok", ".idx", ".json")
            and p.name != "tokens.json"}


@pytest.fixture(scope="module")
def stage(tmp_path_factory, records) -> Path:
    return write_stage(tmp_path_factory.mktemp("run") / "stages" / "01-clean", records[:300], shard_size=70)


def test_each_shard_matches_encoding_its_documents_in_one_go(stage, tokenizer_dir, records, tmp_path):
    manifest = encode_shards(stage, tokenizer_dir, tmp_path / "tokens", LocalExecutor(1))
    tok = load_tokenizer(tokenizer_dir)
    eos = eos_id(tok)
    assert [s["shard"] for s in manifest["shards"]] == ["00000", "00001", "00002", "00003", "00004"]
    assert manifest["documents"] == 300 and manifest["dtype"] == "uint16" and manifest["eos_id"] == eos
    docs = [r.text for r in records[:300]]
    assert manifest["chars"] == sum(map(len, docs))
    got = []
    for shard, tokens, offsets in iter_token_shards(tmp_path / "tokens"):
        chunk = docs[int(shard) * 70 : int(shard) * 70 + 70]
        assert np.array_equal(tokens, encode_documents(tok, chunk, eos))
        assert offsets.dtype == np.uint64 and offsets.size == len(chunk) + 1
        for i, text in enumerate(chunk):  # each [start, end) is one document ending in its EOS
            doc = np.asarray(tokens[offsets[i] : offsets[i + 1]])
            assert doc[-1] == eos and tok.decode(doc[:-1].tolist()) == text
        got.append(np.asarray(tokens))
    assert sum(map(len, got)) == manifest["tokens"]


def test_process_pool_gives_the_same_bytes_as_inline(stage, tokenizer_dir, tmp_path):
    encode_shards(stage, tokenizer_dir, tmp_path / "inline", LocalExecutor(1), batch_size=7)
    encode_shards(stage, tokenizer_dir, tmp_path / "pool", LocalExecutor(2))
    assert _outputs(tmp_path / "inline") == _outputs(tmp_path / "pool")


def test_run_directory_resolves_to_its_final_stage(stage, tokenizer_dir, tmp_path):
    run = stage.parent.parent
    assert records_dir(run) == stage
    with pytest.raises(InputError, match="no finished record shards"):
        records_dir(tmp_path)


def test_other_tokenizer_cannot_resume_into_the_same_directory(stage, tokenizer_dir, texts, tmp_path):
    out = tmp_path / "tokens"
    encode_shards(stage, tokenizer_dir, out, LocalExecutor(1))
    other = train_tokenizer(texts[:50], TokenizerConfig(vocab_size=300), tmp_path / "other")
    with pytest.raises(UserError, match="another tokenizer"):
        encode_shards(stage, other, out, LocalExecutor(1))


def test_concatenation_streams_every_shard_into_one_token_file(stage, tokenizer_dir, tmp_path):
    manifest = encode_shards(stage, tokenizer_dir, tmp_path / "tokens", LocalExecutor(1))
    n = concat_token_shards(tmp_path / "tokens", tmp_path / "train.tok")
    flat = read_token_file(tmp_path / "train.tok")
    assert n == flat.size == manifest["tokens"]
    assert np.array_equal(flat, np.concatenate([t for _, t, _ in iter_token_shards(tmp_path / "tokens")]))


def test_source_texts_read_runs_and_files_with_their_language(stage, tmp_path):
    pairs = list(iter_source_texts([stage.parent.parent]))
    assert len(pairs) == 300 and {lang for lang, _ in pairs} == {"zh", "en"}
    txt = tmp_path / "a.txt"
    txt.write_text("今天天气很好，我们去公园。\nplain English line\n\n", encoding="utf-8")
    assert list(iter_source_texts([txt])) == [("zh", "今天天气很好，我们去公园。"), ("en", "plain English line")]


def test_killed_encode_resumes_to_byte_identical_files(tmp_path, records, tokenizer_dir):
    """SIGKILL the encode CLI mid-run, run it again, compare with a run that was never stopped."""
    many = (records * 2)[:1200]
    stage = write_stage(tmp_path / "run" / "stages" / "01-clean", many, shard_size=20)  # 60 shards
    reference = tmp_path / "reference"
    encode_shards(stage, tokenizer_dir, reference, LocalExecutor(1))

    out = tmp_path / "tokens"
    # batch size 1 makes each shard take a few milliseconds, so the kill lands mid-run
    cmd = [sys.executable, "-c", "from lmforge.cli.tokenizer import app; app(prog_name='tokenizer')",
           "encode", str(stage), "--tokenizer", str(tokenizer_dir), "--out", str(out),
           "--workers", "1", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.done"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(out.glob("*.done")))
    assert 5 <= done_at_kill < 60, f"the kill did not land mid-run ({done_at_kill} of 60 shards done)"
    assert not (out / "manifest.json").exists()
    # What a kill inside a write leaves, made certain here: a temp file and a stray unmarked shard file
    (out / ".shard-00059.tok.999.deadbeef.tmp").write_bytes(b"partial")
    (out / "shard-00059.tok").write_bytes(b"LMFTOKS\0 not finished")

    from typer.testing import CliRunner

    from lmforge.cli.tokenizer import app

    result = CliRunner().invoke(app, cmd[3:])  # the same command again
    assert result.exit_code == 0, result.output
    assert _outputs(out) == _outputs(reference)
    assert not list(out.glob(".*.tmp"))
    assert len(list(out.glob("*.done"))) == 60


def test_a_missing_index_is_reported(stage, tokenizer_dir, tmp_path):
    out = tmp_path / "tokens"
    encode_shards(stage, tokenizer_dir, out, LocalExecutor(1))
    (out / "shard-00001.idx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="shard-00001.idx"):
        list(iter_token_shards(out))
    assert read_index_file(out / "shard-00000.idx")[0] == 0


@pytest.mark.slow
def test_ray_executor_writes_the_same_bytes(stage, tokenizer_dir, tmp_path):
    pytest.importorskip("ray")
    from lmforge.pipeline.executors import RayExecutor

    encode_shards(stage, tokenizer_dir, tmp_path / "local", LocalExecutor(1))
    ray = RayExecutor(num_cpus=2)
    try:
        encode_shards(stage, tokenizer_dir, tmp_path / "ray", ray)
    finally:
        ray.close()
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")


def test_wordpiece_shards_keep_word_and_sentence_starts_and_a_document_index(stage, records, texts, tmp_path):
    """BERT's shards: the same .tok/.idx layout, plus one flag byte per token; documents found by number or position."""
    from lmforge.tokenize.dataset import TokenDataset
    from lmforge.tokenize.words import CJK, SENTENCE, WORD

    wp = train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=1500), tmp_path / "wp")
    tok = load_tokenizer(wp)
    out = tmp_path / "tokens"
    manifest = encode_shards(stage, wp, out, LocalExecutor(workers=1))
    assert manifest["documents"] == 300 and sorted(p.name for p in out.glob("*.wrd"))[0] == "shard-00000.wrd"
    data = TokenDataset(out)
    assert data.num_documents == 300 and len(data) == manifest["tokens"]
    eos = eos_id(tok)
    for number in (0, 69, 70, 299):  # the first and last documents of shards
        shard, start, stop = data.document(number)
        tokens, flags = data.shard_tokens(shard)[start:stop], data.flags(shard)[start:stop]
        assert tokens[-1] == eos and eos not in tokens[:-1].tolist() and flags[-1] == 0
        assert flags[0] & SENTENCE and flags[0] & WORD  # a document starts with a sentence
        text = records[number].text
        zh = bool(flags[0] & CJK)
        assert zh == (sum("\u4e00" <= c <= "\u9fff" for c in text) > 0.3 * len(text.replace(" ", "")))
        assert [tok.id_to_token(int(t)) for t in tokens[:3]] == tok.encode(text, add_special_tokens=False).tokens[:3]
        position = int(data._starts[shard]) + start + (stop - start) // 2
        assert data.document_at(position) == (number, shard, start, stop)
    again = encode_shards(stage, wp, tmp_path / "again", LocalExecutor(workers=2))
    assert again == manifest
    assert (out / "shard-00001.wrd").read_bytes() == (tmp_path / "again" / "shard-00001.wrd").read_bytes()
