"""`evaluate_model`, the call behind `lmforge evaluate`: metric choice, report files, plain errors."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import ConfigError, UserError
from lmforge.finetune.evaluate import evaluate_lm, evaluate_model
from lmforge.tasks.builtin import load_task
from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer


@pytest.fixture
def checkpoint_and_text(tmp_path):
    """An untrained one-layer GPT, its tokenizer and 20 reviews to score (what `lmforge evaluate` gets)."""
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.train.checkpoint import save_checkpoint

    texts = [e.text for e in load_task("zh_sentiment", max_per_class=40).train]
    (tmp_path / "docs.txt").write_text("\n".join(texts[:20]) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=400, block_size=64, n_layer=1, n_head=2, n_embd=32))
    return (save_checkpoint(model, model.config, tmp_path / "ckpt"),
            train_tokenizer(texts, TokenizerConfig(vocab_size=400), tmp_path / "tok"), tmp_path / "docs.txt")


def test_perplexity_report_is_written_and_returned(tmp_path, checkpoint_and_text):
    ckpt, tok, data = checkpoint_and_text
    result = evaluate_model(ckpt, str(data), "perplexity", tok, max_docs=12, out=tmp_path / "ev")
    assert result["documents"] == 12 and result == evaluate_lm(ckpt, str(data), tok, 12)
    assert json.loads((tmp_path / "ev" / "report.json").read_text()) == pytest.approx(result)
    assert f"{ckpt} on {data}" in (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
    with pytest.raises(UserError, match="--tokenizer is needed"):
        evaluate_model(ckpt, str(data), "perplexity")
    with pytest.raises(ConfigError, match="--metrics must be auto or perplexity \\(got 'bleu'\\)"):
        evaluate_model(ckpt, str(data), "bleu", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
