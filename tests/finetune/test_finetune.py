"""Fine-tuning end to end on real built-in tasks: lmforge backbones, an HF checkpoint on disk, LoRA, search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.finetune.config import FinetuneConfig
from lmforge.finetune.run import finetune
from lmforge.finetune.search import search
from lmforge.models.heads import load_task_model
from lmforge.tasks.builtin import load_task
from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sentiment():
    return load_task("zh_sentiment", max_per_class=400)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, sentiment):
    """Byte-level BPE: its training is deterministic, unlike WordPiece's (HF breaks ties between
    equally frequent pieces in hash-map order, which changes per process), so scores repeat exactly."""
    out = tmp_path_factory.mktemp("wp")
    texts = [e.text for e in sentiment.train] + ["".join(e.tokens) for e in load_task("zh_ner", max_sentences=300).train]
    return train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=1500), out)


def config(task: str, data: dict, model: dict, **train) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "task": task, "data": data, "model": model, "epochs": 2, "batch_size": 16, "lr": 2e-3, "seq_len": 64,
        "tensorboard": False, "device": "cpu", **train})


def test_classification_from_scratch_learns_and_reports(sentiment, tokenizer, tmp_path):
    cfg = config("classification", {"builtin": "zh_sentiment", "options": {"max_per_class": 400}},
                 {"tokenizer": str(tokenizer), "arch": "bert", "preset": "bert-tiny"}, epochs=4)
    result = finetune(cfg, tmp_path, data=sentiment)
    assert result.val["accuracy"] > 0.6 and result.test["accuracy"] > 0.6
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sizes"] == {"train": len(sentiment.train), "val": len(sentiment.val), "test": len(sentiment.test)}
    assert "accuracy" in (tmp_path / "report.md").read_text()
    model, info = load_task_model(tmp_path / "best")
    assert info["labels"] == ["neg", "pos"] and info["kind"] == "classification"
    assert model.pool == info["pool"] == "mean"  # the saved pooling is the one used to train
    evals = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"val"' in x]
    assert max(e["val"]["accuracy"] for e in evals) == pytest.approx(result.val["accuracy"])


def test_hf_bert_checkpoint_on_disk_fine_tunes_end_to_end(sentiment, tokenizer, tmp_path):
    from lmforge.models.bert import BertForPretraining, bert_config_from_preset
    from lmforge.models.hf_bert import export_bert_hf

    torch.manual_seed(0)
    hf_dir = export_bert_hf(BertForPretraining(bert_config_from_preset("bert-tiny", 1500)), tokenizer, tmp_path / "hf")
    cfg = config("classification", {"builtin": "zh_sentiment"}, {"from": str(hf_dir)}, epochs=3)
    result = finetune(cfg, tmp_path / "ft", data=sentiment)
    assert result.test["accuracy"] > 0.6
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ft" / "best")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ft" / "best")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        logits = model(**tok(["质量很好，非常满意"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_ner_lora_on_a_gpt_backbone_merges_on_save(tokenizer, tmp_path):
    ner = load_task("zh_ner", max_sentences=300)
    cfg = config("ner", {"builtin": "zh_ner"}, {"tokenizer": str(tokenizer), "arch": "gpt", "preset": "tiny"},
                 epochs=2, lora={"r": 4}, metric="token_accuracy")
    result = finetune(cfg, tmp_path, data=ner)
    assert {"f1", "precision", "recall", "token_accuracy"} <= set(result.test)
    assert result.test["token_accuracy"] > 0.5
    model, info = load_task_model(tmp_path / "best")  # plain weights: the adapters were merged
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert info["labels"][0] == "O"


def test_instruction_tuning_learns_only_the_response(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from lmforge.finetune import tasks

    data = load_task("instructions", max_per_task=40)
    bpe = train_tokenizer([e.prompt + e.response for e in data.train], TokenizerConfig(vocab_size=800), tmp_path / "t")
    tok = AutoTokenizer.from_pretrained(bpe)
    enc = tasks.encode_instructions(data.train[:20], tok, 128)
    for ids, labels, ex in zip(enc.ids, enc.labels, data.train[:20], strict=True):
        assert len(ids) <= 128  # long reviews are cut in the prompt, not in the response
        learned = tok.decode(ids[labels != -100])
        assert learned.startswith(ex.response) and "<|im_end|>" in learned  # the response and its end of turn
    cfg = config("instruction", {"builtin": "instructions", "options": {"max_per_task": 40}},
                 {"tokenizer": str(bpe), "arch": "gpt", "preset": "tiny"}, epochs=2, seq_len=128)
    result = finetune(cfg, tmp_path / "ft", data=data)
    assert result.test["perplexity"] < 200
    # greedy answers are scored against the references (ROUGE on characters for Chinese, BLEU, EM)
    assert {"gen_rouge1", "gen_rougeL", "gen_bleu", "gen_exact_match"} <= set(result.test)
    assert 0.0 <= result.test["gen_rougeL"] <= 1.0 and 0.0 <= result.test["gen_exact_match"] <= 1.0


def test_grid_search_ranks_runs_by_validation_metric(sentiment, tokenizer, tmp_path):
    cfg = config("classification", {"builtin": "zh_sentiment", "options": {"max_per_class": 400}},
                 {"tokenizer": str(tokenizer), "arch": "bert", "preset": "bert-tiny"},
                 epochs=4, search={"lr": [1e-5, 2e-3]})
    rows = search(cfg, tmp_path)
    assert [r["lr"] for r in rows][0] == 2e-3  # a 200x smaller learning rate barely moves in a few epochs
    assert rows[0]["val_accuracy"] >= rows[1]["val_accuracy"]
    table = (tmp_path / "search.md").read_text()
    assert "| 0 | 0.0020 |" in table  # the best run first
    assert json.loads((tmp_path / "search.json").read_text())["runs"][1]["lr"] == 1e-5
    assert Path(tmp_path / rows[0]["dir"] / "best").is_dir()


def test_finetune_and_evaluate_commands_on_a_jsonl_file(sentiment, tokenizer, tmp_path, lmforge_cli):
    from lmforge.models.bert import BertForPretraining, bert_config_from_preset
    from lmforge.train.checkpoint import save_checkpoint

    rows = sentiment.train[:300] + sentiment.val[:40] + sentiment.test[:40]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n" for e in rows),
                    encoding="utf-8")
    torch.manual_seed(0)
    bert = BertForPretraining(bert_config_from_preset("bert-tiny", 1500))
    ckpt = save_checkpoint(bert, bert.config, tmp_path / "run" / "pretrain" / "checkpoint")
    (tmp_path / "run" / "tokenizer").symlink_to(tokenizer)  # an lmforge run layout: the tokenizer beside it
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(f"name: ft\nfinetune:\n  task: classification\n  data: {{path: {data}}}\n"
                      f"  model: {{from: {ckpt}}}\n  epochs: 1\n  batch_size: 16\n  lr: 0.002\n  seq_len: 64\n"
                      "  device: cpu\n  tensorboard: false\n", encoding="utf-8")
    done = lmforge_cli("finetune", str(recipe), "--out", str(tmp_path / "ft"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy" in done.stdout + done.stderr
    test = tmp_path / "test.jsonl"
    held_out = sentiment.test[:40]
    test.write_text("".join(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n"
                            for e in held_out), encoding="utf-8")
    done = lmforge_cli("evaluate", str(tmp_path / "ft" / "best"), str(test), "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["examples"] == len(held_out) and 0 <= report["accuracy"] <= 1
    assert len(report["confusion_matrix"]) == 2 and sum(map(sum, report["confusion_matrix"])) == len(held_out)
    bad = lmforge_cli("finetune", str(data))  # not a recipe
    assert bad.returncode == 2 and "finetune" in bad.stdout + bad.stderr


def test_train_limit_keeps_a_stratified_small_labelled_set_and_pooling_is_checked(tokenizer):
    from lmforge.errors import UserError
    from lmforge.finetune.task_data import load_task_data
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.heads import SequenceClassifier

    cfg = config("classification", {"builtin": "zh_sentiment", "options": {"max_per_class": 400}, "train_limit": 100},
                 {"tokenizer": str(tokenizer)})
    data = load_task_data(cfg)
    assert len(data.train) == 100 and {e.label for e in data.train} == {"neg", "pos"}
    assert len(data.test) == 80  # validation and test keep their full size
    assert abs(sum(e.label == "pos" for e in data.train) - 50) <= 2
    gpt = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(UserError, match="pool must be cls"):
        SequenceClassifier(gpt, 2, pool="cls")  # a GPT has no [CLS] pooler
    ids, mask = torch.randint(0, 50, (2, 6)), torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    last = SequenceClassifier(gpt, 2, pool="last").eval()
    mean = SequenceClassifier(gpt, 2, pool="mean").eval()
    mean.head = last.head
    x = gpt.features(ids)
    with torch.no_grad():
        torch.testing.assert_close(last(ids, mask), last.head(x[[0, 1], [5, 2]]))
        torch.testing.assert_close(mean(ids, mask)[1], last.head(x[1, :3].mean(0)))


def test_evaluate_perplexity_of_a_checkpoint_on_text(tmp_path, lmforge_cli):
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.train.checkpoint import save_checkpoint

    texts = [e.text for e in load_task("zh_sentiment", max_per_class=60).train]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=500), tmp_path / "tok")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=1, n_head=2, n_embd=32))
    ckpt = save_checkpoint(gpt, gpt.config, tmp_path / "ckpt")
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(texts[:30]) + "\n", encoding="utf-8")
    done = lmforge_cli("evaluate", str(ckpt), str(data), "--metrics", "perplexity", "--tokenizer", str(tok),
                       "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["documents"] == 30
    assert 200 < report["perplexity"] < 2000  # an untrained model is near uniform over 500 ids
    assert report["bits_per_byte"] > 0
    missing = lmforge_cli("evaluate", str(ckpt), str(data), "--metrics", "perplexity")
    assert missing.returncode == 2 and "--tokenizer" in missing.stdout + missing.stderr


def test_model_says_which_model_and_head_holds_the_task_head_options():
    """`finetune.model` has pretraining's shape (preset / from / typed overrides); pooling lives in `head`."""
    from lmforge.config import validate
    from lmforge.errors import ConfigError
    from lmforge.models.presets import ModelSpec

    base = {"task": "classification", "data": {"builtin": "zh_sentiment"}}
    cfg = validate(FinetuneConfig, {**base, "model": {"from": "ckpt"}, "head": {"pool": "mean", "dropout": 0.2}})
    assert isinstance(cfg.model, ModelSpec) and cfg.model.source == "ckpt" and cfg.model.preset is None
    assert (cfg.head.pool, cfg.head.dropout) == ("mean", 0.2)
    old = validate(FinetuneConfig, {**base, "model": {"from": "ckpt", "pool": "mean", "dropout": 0.2}})  # old spelling
    assert old.model == cfg.model and old.head == cfg.head
    beside_from = validate(FinetuneConfig, {**base, "model": {"from": "ckpt", "dropout": 0.2}})  # the head's, as before
    assert beside_from.model == cfg.model and beside_from.head.dropout == 0.2
    fresh = validate(FinetuneConfig, {**base, "model": {"arch": "gpt", "n_layer": 1, "pos": "learned"}})
    assert fresh.model.preset == "tiny" and fresh.model.pretrain_model().overrides() == {"n_layer": 1, "pos": "learned"}
    assert validate(FinetuneConfig, base).model.preset == "bert-tiny"
    for model, message in (
        ({"n_layr": 2}, "finetune.model.n_layr: unknown key for arch bert; allowed: preset, from, tokenizer"),
        ({"arch": "bert", "pos": "rope"}, "finetune.model.pos: unknown key for arch bert"),
        ({"from": "ckpt", "n_layer": 2}, "finetune.model.n_layer: architecture overrides apply to a fresh model"),
        ({"preset": "tiny"}, "finetune.model.preset: not a bert preset; allowed: bert-base"),
    ):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            validate(FinetuneConfig, {**base, "model": model}, prefix="finetune")
    with pytest.raises(ConfigError, match=r"finetune\.head\.pool: must be one of"):
        validate(FinetuneConfig, {**base, "head": {"pool": "max"}}, prefix="finetune")
