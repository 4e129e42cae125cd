"""`lmforge tokenizer train | inspect | encode` through typer, on built-in text and a small run."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lmforge.cli.tokenizer import app
from lmforge.tokenize.bpe import load_tokenizer

from .conftest import write_stage

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_train_inspect_and_encode(tmp_path, records):
    tok = tmp_path / "tok"
    out = _ok("train", "--corpus", "peoples_daily", "--corpus", "python_docs", "--vocab-size", "800",
              "--max-chars", "150000", "--out", str(tok))
    assert "800 tokens" in out and load_tokenizer(tok).get_vocab_size() == 800
    assert json.loads((tok / "lmforge_tokenizer.json").read_text())["max_training_chars"] == 150000

    run = tmp_path / "run"
    write_stage(run / "stages" / "01-clean", records[:90], shard_size=30)
    uni = tmp_path / "uni"
    _ok("train", str(run), "--kind", "unigram", "--vocab-size", "700", "--out", str(uni))

    table = _ok("inspect", str(tok), str(uni), "--no-compare", "--limit-chars", "3000")
    assert "tok/char" in table and str(uni) in table and "longest" in table
    assert f"{uni}: shard encoding uses tokenizers (model is Unigram, not BPE)" in table
    assert f"{tok}: shard encoding uses " in table

    encoded = _ok("encode", str(run), "--tokenizer", str(tok), "--workers", "1")
    assert "90 documents" in encoded
    manifest = json.loads((run / "tokens" / "manifest.json").read_text())
    assert manifest["documents"] == 90 and len(manifest["shards"]) == 3
    assert "90 documents" in _ok("encode", str(run), "--tokenizer", str(tok), "--workers", "1")  # resumes: no-op


def test_user_mistakes_exit_with_a_message(tmp_path):
    from lmforge.errors import UserError

    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t")])
    assert isinstance(result.exception, UserError) and "--corpus" in str(result.exception)
    result = runner.invoke(app, ["train", "--corpus", "python_docs", "--kind", "bpe", "--out", str(tmp_path)])
    assert "kind" in str(result.exception)
    result = runner.invoke(app, ["encode", str(tmp_path)])
    assert "no finished record shards" in str(result.exception)
