"""NER fine-tuning: what the tagger is fed, how it is scored, and that it learns entities whose
characters also occur outside them (as 中 in 中国 and in 中央), which needs its neighbours."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.finetune import tasks
from lmforge.finetune.config import FinetuneConfig
from lmforge.finetune.run import finetune
from lmforge.finetune.specs import spec_for
from lmforge.models.heads import load_task_model
from lmforge.tasks.examples import NerExample
from lmforge.tasks.splits import make_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHARS = "中国人民大会北京上海市长江河南省山东西安华新社党政府"
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def wordpiece(tmp_path, chars: str):
    """A character vocabulary with ASCII digits (what NFKC-normalised pretraining text holds), as a BERT tokenizer."""
    from transformers import BertTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"0123456789", *chars]
    tok = BertTokenizerFast(vocab={p: i for i, p in enumerate(pieces)}, do_lower_case=False)
    tok.save_pretrained(str(tmp_path / "tok"))
    return tok, tmp_path / "tok"


def synthetic_ner(n: int, seed: int = 0) -> list[NerExample]:
    """Sentences of random characters around fixed names; every name's characters also appear alone as O."""
    rng = random.Random(seed)
    names = {kind: ["".join(rng.sample(CHARS, rng.choice((2, 3)))) for _ in range(8)] for kind in ("PER", "LOC")}
    rows = []
    while len(rows) < n:
        tokens, tags = [], []
        for _ in range(rng.choice((1, 2))):
            filler = rng.choices(CHARS, k=rng.randint(2, 6))
            kind = rng.choice(("PER", "LOC"))
            name = rng.choice(names[kind])
            tokens += [*filler, *name]
            tags += ["O"] * len(filler) + [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        text = "".join(tokens)
        if any(text.count(x) > 1 for k in names for x in names[k]):
            continue  # a filler that spells a name by chance would be an unlabelled entity
        rows.append(NerExample(tokens=tokens, tags=tags, text=text))
    return rows


def test_tagger_learns_entities_from_their_neighbours(tmp_path):
    _, tok_dir = wordpiece(tmp_path, CHARS)
    data = make_task("ner", synthetic_ner(500), seed=0, labels=LABELS)
    cfg = FinetuneConfig.model_validate({
        "task": "ner", "data": {"builtin": "zh_ner"}, "model": {"tokenizer": str(tok_dir), "preset": "bert-tiny"},
        "epochs": 6, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10, "seq_len": 64, "tensorboard": False,
        "device": "cpu", "seed": 0})
    result = finetune(cfg, tmp_path / "run", data=data)
    assert result.test["f1"] > 0.8, result.test
    model, info = load_task_model(tmp_path / "run" / "best")  # the CRF and the window come back with it
    assert info["tagger"] == {"window": 2, "crf": True} and model.crf is not None and model.window == 2


def test_full_width_digits_reach_the_vocabulary_and_every_word_keeps_its_tag(tmp_path):
    tok, _ = wordpiece(tmp_path, "年北京")
    row = NerExample(tokens=["１", "９", "年", " ", "北", "京"], tags=["O", "O", "O", "O", "B-LOC", "I-LOC"], text="")
    enc = tasks.encode_ner([row], tok, LABELS, 32)
    pieces = tok.convert_ids_to_tokens(enc.ids[0].tolist())
    assert pieces == ["[CLS]", "1", "9", "年", "[UNK]", "北", "京", "[SEP]"]  # １ and ９ were [UNK] before
    assert enc.labels[0].tolist() == [-100, 0, 0, 0, 0, 3, 4, -100]


def test_test_scores_count_entities_past_seq_len_as_missed(tmp_path):
    spec = spec_for("ner")
    row = NerExample(tokens=list("北京上海"), tags=["B-LOC", "I-LOC", "B-LOC", "I-LOC"], text="北京上海")
    gold, pred = spec.whole([row], [[3, 4]], [[3, 4]], LABELS)  # a tagger that saw only 北京
    assert gold == [[3, 4, 3, 4]] and pred == [[3, 4, 0, 0]]
    assert spec.score(gold, pred, LABELS)["recall"] == pytest.approx(0.5)


def test_predictions_without_a_crf_are_decoded_under_the_bio_rules():
    # argmax would tag O I-PER I-PER: one entity under conlleval, but with the wrong start
    logits = torch.log(torch.tensor([[[1.0, 1, 1, 1, 1], [0.5, 0.1, 0.4, 0, 0], [0.1, 0, 0.9, 0, 0],
                                      [0.2, 0, 0.8, 0, 0], [1, 1, 1, 1, 1]]]) + 1e-9)
    labels = torch.tensor([[-100, 0, 0, 0, -100]])
    assert tasks.decode_tags(logits, labels, None, LABELS) == [[1, 2, 2]]
    assert tasks.decode_tags(logits, labels, None, None) == [[0, 2, 2]]
