"""Task specs: one object per task kind answers what the runner used to branch on."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from lmforge.errors import UserError
from lmforge.finetune import tasks
from lmforge.finetune.specs import SPECS, spec_for
from lmforge.tasks.examples import ClassificationExample
from lmforge.train.evaluation import ValidationMetrics


def _tokenizer(tmp_path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    texts = ["good film, loved it", "bad film, hated it", "好电影", "差电影"] * 20
    return AutoTokenizer.from_pretrained(str(train_tokenizer(texts, TokenizerConfig(vocab_size=280), tmp_path / "t")))


def test_each_kind_has_one_spec_and_unknown_kinds_are_refused():
    assert sorted(SPECS) == ["classification", "conversation", "instruction", "ner", "preference"]
    assert spec_for("instruction").generative and not spec_for("ner").generative
    assert spec_for("conversation").generative and spec_for("preference").generative
    with pytest.raises(UserError, match=r"task kind must be one of \['classification', 'conversation', 'instruction', "):
        spec_for("summarisation")


def test_classification_spec_measures_loss_and_metrics_in_one_pass(tmp_path):
    tok = _tokenizer(tmp_path)
    spec = spec_for("classification")
    rows = [ClassificationExample(text=t, label=lab) for t, lab in
            (("good film, loved it", "pos"), ("bad film, hated it", "neg"), ("好电影", "pos"))]
    enc = spec.encode(rows, tok, ["neg", "pos"], 16)
    source = tasks.ExampleSource(enc, 2, 0, shuffle=False)
    metrics = spec.metrics(source, ["neg", "pos"], torch.device("cpu"))
    assert isinstance(metrics, ValidationMetrics) and metrics.includes_loss
    assert spec_for("instruction").metrics(source, [], torch.device("cpu")) is None  # the loss is the metric

    class Always:  # a "model" that says pos with certainty: accuracy 2/3, loss from the one wrong row
        def eval(self): ...
        def train(self, mode=True): ...
        training = False

        def __call__(self, input_ids, attention_mask):
            return torch.tensor([[-20.0, 20.0]]).expand(len(input_ids), 2)

    out = metrics(Always())
    assert out["accuracy"] == pytest.approx(2 / 3) and out["loss"] == pytest.approx(40 / 3, rel=1e-4)
    rows_out = spec.prediction_rows(rows, [1, 0, 1], [1, 1, 1], ["neg", "pos"])
    assert rows_out[1] == {"text": "bad film, hated it", "gold": "neg", "pred": "pos"}
