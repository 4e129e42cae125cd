"""The `lmforge tokenizer` commands called as Python functions give what the command line gives."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmforge.cli.tokenizer import app
from lmforge.errors import UserError
from lmforge.tokenize.commands import encode_run, inspect_tokenizers, sample_texts, train_from_sources

from .conftest import write_stage


def test_train_inspect_and_encode_as_calls(tmp_path, records):
    run = tmp_path / "run"
    write_stage(run / "stages" / "01-clean", records[:60], shard_size=20)
    done = train_from_sources([run], tmp_path / "py", vocab_size=600)
    assert done.vocab_size == 600 and done.config.kind == "byte_bpe" and done.path == tmp_path / "py"
    cli = CliRunner().invoke(app, ["train", str(run), "--vocab-size", "600", "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "py" / "tokenizer.json").read_bytes() == (tmp_path / "cli" / "tokenizer.json").read_bytes()

    found = inspect_tokenizers([done.path], text=[run], compare=False, limit_chars=2000)
    assert {r.lang for r in found.rows} == set(sample_texts([run], limit_chars=2000)) == {"zh", "en"}
    assert {r.tokenizer for r in found.rows} == {str(done.path)} and found.missing == {}
    assert found.vocab_sizes == {str(done.path): 600}
    [(path, encoding)] = found.shard_encoding
    assert path == done.path and encoding

    manifest = encode_run(run, done.path, workers=1)
    assert manifest["out"] == run / "tokens" and manifest["documents"] == 60 and len(manifest["shards"]) == 3
    written = json.loads((run / "tokens" / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "out"} == written


def test_sample_texts_stops_adding_a_language_past_the_limit(tmp_path, records):
    run = tmp_path / "run"
    write_stage(run / "stages" / "01-clean", records[:90], shard_size=30)
    samples = sample_texts([run], limit_chars=500)
    assert set(samples) == {"zh", "en"}
    for texts in samples.values():  # a text is added while the language is under the limit, so only the last crosses it
        assert sum(map(len, texts[:-1])) < 500 <= sum(map(len, texts))


def test_training_needs_text(tmp_path):
    with pytest.raises(UserError, match="--corpus"):
        train_from_sources([], tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
