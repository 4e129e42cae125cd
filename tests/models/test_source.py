"""The model-source resolver: every kind of directory a user can name, its tokenizer, how it loads."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import InputError, UserError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.source import NotAModelError, SourceKind, is_hf_dir, load_causal_lm, resolve_source

TEXTS = ["the river runs to the sea", "长江是中国最长的河流。", "models read tokens, not words"] * 20


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    return train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("t") / "tokenizer")


def _gpt(vocab: int = 300) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=1, n_head=2, n_embd=16))


def _run(tmp_path, tok_dir):
    """An lmforge run layout: RUN/pretrain/checkpoint beside RUN/tokenizer."""
    from lmforge.models.checkpoint_io import save_checkpoint

    model = _gpt()
    run = tmp_path / "run"
    save_checkpoint(model, model.config, run / "pretrain" / "checkpoint")
    (run / "tokenizer").symlink_to(tok_dir)
    return run, model


def test_run_directory_resolves_to_its_checkpoint_and_tokenizer(tmp_path, tok_dir):
    run, model = _run(tmp_path, tok_dir)
    source = resolve_source(run)
    assert source.kind is SourceKind.CHECKPOINT and source.path == run / "pretrain" / "checkpoint"
    assert source.tokenizer == run / "tokenizer" and not source.is_hf
    assert source.meta["model_type"] == "lmforge-gpt"
    loaded = load_causal_lm(source, "cpu")
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


def test_checkpoint_finds_the_tokenizer_of_the_run_above_it(tmp_path, tok_dir):
    run, _ = _run(tmp_path, tok_dir)
    source = resolve_source(run / "pretrain" / "checkpoint")
    assert source.kind is SourceKind.CHECKPOINT and source.tokenizer == run / "tokenizer"
    assert resolve_source(run / "pretrain" / "checkpoint", tokenizer=tmp_path / "given").tokenizer == tmp_path / "given"


def test_a_lone_checkpoint_without_tokenizer_asks_for_one(tmp_path):
    from lmforge.models.checkpoint_io import save_checkpoint

    model = _gpt()
    save_checkpoint(model, model.config, tmp_path / "ckpt")
    source = resolve_source(tmp_path / "ckpt")
    assert source.tokenizer is None
    with pytest.raises(InputError, match="no tokenizer in .*ckpt.*pass --tokenizer DIR"):
        source.require_tokenizer()


def test_hugging_face_directory_holds_its_own_tokenizer_and_imports_as_gpt(tmp_path, tok_dir):
    from lmforge.models.hf import export_gpt_hf

    model = _gpt()
    hf = export_gpt_hf(model, tok_dir, tmp_path / "hf")
    source = resolve_source(hf)
    assert source.kind is SourceKind.HF and source.is_hf and source.tokenizer == hf and is_hf_dir(hf)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(load_causal_lm(source, "cpu")(ids)[0], model.eval()(ids)[0])


def test_fine_tuned_task_directories_load_by_their_head(tmp_path, tok_dir):
    from transformers import AutoTokenizer

    from lmforge.models.heads import CausalLMAdapter, SequenceClassifier, save_task_model

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    chat = save_task_model(CausalLMAdapter(_gpt()), tmp_path / "chat", {"kind": "instruction", "labels": []}, tok)
    cls = save_task_model(SequenceClassifier(_gpt(), 2), tmp_path / "cls", {"kind": "classification",
                                                                           "labels": ["neg", "pos"]}, tok)
    source = resolve_source(chat)
    assert source.kind is SourceKind.TASK and source.tokenizer == chat and not is_hf_dir(chat)
    assert source.meta["head"] == "CausalLMAdapter"
    assert isinstance(load_causal_lm(source, "cpu"), GPT)
    assert json.loads((cls / "finetune.json").read_text())["pool"] == "mean"
    with pytest.raises(InputError, match="fine-tuned classification model; only causal LMs generate"):
        load_causal_lm(resolve_source(cls), "cpu")


def test_a_directory_that_is_no_model_is_a_clear_user_error(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(NotAModelError, match="not a model directory: expected an lmforge run") as err:
        resolve_source(tmp_path / "notes")
    assert isinstance(err.value, UserError)
    with pytest.raises(InputError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable"):
        resolve_source(tmp_path / "broken")


def test_protocols_say_what_each_model_is():
    from lmforge.models.bert import BertConfig, BertForPretraining
    from lmforge.models.heads import CausalLMAdapter, SequenceClassifier
    from lmforge.models.protocols import CausalLM, Encoder, HasBackbone, LmforgeModel, is_hf_model

    gpt = _gpt()
    bert = BertForPretraining(BertConfig(vocab_size=50, max_position=16, n_layer=1, n_head=2, n_embd=16))
    assert isinstance(gpt, CausalLM) and not isinstance(gpt, Encoder) and isinstance(gpt, LmforgeModel)
    assert isinstance(bert, Encoder) and not isinstance(bert, CausalLM)
    head = SequenceClassifier(bert, 2, pool="cls")
    assert isinstance(head, HasBackbone) and not isinstance(head, LmforgeModel) and not is_hf_model(head)
    assert isinstance(CausalLMAdapter(gpt), HasBackbone) and not is_hf_model(gpt)
