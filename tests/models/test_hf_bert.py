from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lmforge.errors import InputError
from lmforge.models.bert import BertConfig, BertForPretraining
from lmforge.models.hf_bert import export_bert_hf, import_bert_hf
from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "人民日报讯，新年伊始，各地群众以多种方式欢度元旦佳节。",
    "１９９８年，我国经济继续保持稳定增长，物价涨幅进一步回落。",
    "A function definition is an executable statement that binds the function name to a function object.",
    "Names refer to objects and are introduced by name binding operations such as assignment.",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(TEXTS, TokenizerConfig(kind="wordpiece", vocab_size=200), tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tokenizer_dir) -> BertForPretraining:
    """A small BERT whose every parameter is non-trivial (init leaves biases 0 and LayerNorms 1)."""
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    torch.manual_seed(0)
    m = BertForPretraining(BertConfig(vocab_size=vocab, max_position=64, n_layer=2, n_head=4, n_embd=32, pad_id=1))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def exported(model, tokenizer_dir, tmp_path_factory) -> Path:
    return export_bert_hf(model, tokenizer_dir, tmp_path_factory.mktemp("hf") / "bert")


def padded_batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 7:] = 0
    ids[mask == 0] = 1  # the pad id
    types = torch.zeros_like(ids)
    types[:, 10:] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_transformers(model, exported, attn):
    hf = transformers.BertForPreTraining.from_pretrained(exported, attn_implementation=attn).eval()
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        mlm, nsp = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        out = hf(**batch)
    assert (mlm - out.prediction_logits).abs().max() < 1e-4
    assert (nsp - out.seq_relationship_logits).abs().max() < 1e-4
    assert mlm.abs().max() > 0.1 and nsp.abs().max() > 0.01  # not a trivially zero comparison


def test_auto_classes_load_offline(model, exported, tokenizer_dir):
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForPreTraining"]
    assert (exported / "model.safetensors").is_file()
    assert not list(exported.glob("*.bin"))
    batch = padded_batch(model.config.vocab_size)
    mlm_model = transformers.AutoModelForMaskedLM.from_pretrained(exported).eval()
    encoder = transformers.AutoModel.from_pretrained(exported).eval()
    with torch.no_grad():
        mlm, _ = model(**batch)
        assert (mlm_model(**batch).logits - mlm).abs().max() < 1e-4
        assert encoder(**batch).last_hidden_state.shape == (3, 20, 32)

    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    text = "各地群众欢度元旦。The function name."
    assert hf_tok(text)["input_ids"] == load_tokenizer(tokenizer_dir).encode(text).ids
    assert hf_tok.convert_ids_to_tokens(hf_tok(text)["input_ids"])[0] == "[CLS]"
    assert hf_tok.mask_token == "[MASK]" and hf_tok.pad_token == "[PAD]"
    assert hf_tok.model_max_length == 64  # the position table, not the tokenizer's default


def test_round_trip_keeps_every_weight(model, exported):
    back = import_bert_hf(exported)
    assert back.config == model.config
    assert back.decoder.weight is back.embeddings.word.weight
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_import_a_masked_lm_checkpoint(model, exported, tmp_path, caplog):
    """BertForMaskedLM has no pooler or NSP head: the MLM part loads, the rest starts fresh."""
    mlm_dir = tmp_path / "mlm"
    transformers.BertForMaskedLM.from_pretrained(exported).save_pretrained(mlm_dir)
    with caplog.at_level(logging.INFO, logger="lmforge.models.hf_bert"):
        back = import_bert_hf(mlm_dir)
    assert "pooler.weight" in caplog.text and "nsp.weight" in caplog.text
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        assert torch.allclose(back(**batch)[0], model(**batch)[0], atol=1e-5)
    assert not torch.equal(back.nsp.weight, model.nsp.weight)
    assert torch.equal(import_bert_hf(mlm_dir).nsp.weight, back.nsp.weight)  # the fresh init is repeatable


def test_re_export_replaces_the_directory(model, tokenizer_dir, tmp_path):
    out = tmp_path / "bert"
    export_bert_hf(model, None, out)
    assert not (out / "tokenizer.json").exists()
    export_bert_hf(model, tokenizer_dir, out)
    assert (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert"]  # no temp dirs left behind


def test_import_refuses_what_it_cannot_read(exported, tmp_path):
    with pytest.raises(InputError, match="config.json is missing"):
        import_bert_hf(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((exported / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InputError, match=r"no model.safetensors in .*pickled \(found pytorch_model.bin\): lmforge loads safetensors only"):
        import_bert_hf(pickled)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="model_type must be 'bert', got 'gpt2'"):
        import_bert_hf(gpt2)
    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((exported / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5}))
    with pytest.raises(InputError, match=r"cannot build: model.n_embd \(32\) must be divisible by model.n_head \(5\)"):
        import_bert_hf(odd)
