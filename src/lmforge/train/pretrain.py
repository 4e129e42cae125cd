"""Pretraining entry points: build the model and the data for a config, then hand them to the Trainer.

- GPT (`arch: gpt`): next-token prediction on random windows of a token stream (a directory of
  token shards, a single token file or an array).
- BERT (`arch: bert`): masked language modelling plus next-sentence (or sentence-order)
  prediction on sentence pairs drawn from WordPiece token shards.

`model.from` continues from an lmforge checkpoint or from a Hugging Face model directory on disk
(LlamaForCausalLM, Qwen3ForCausalLM, GPT2LMHeadModel, BertForPreTraining/BertForMaskedLM).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.errors import ConfigError, InputError, UserError
from lmforge.train.checkpoint import CONFIG, load_checkpoint
from lmforge.train.config import PretrainConfig, model_config
from lmforge.train.objectives import CausalLM, EvalWindows, TokenWindows
from lmforge.train.optim import lr_at
from lmforge.train.trainer import Trainer, TrainResult

if TYPE_CHECKING:
    from lmforge.tokenize.dataset import TokenDataset

log = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "PretrainResult", "build_model", "lr_at", "pretrain", "pretrain_bert"]


@dataclass
class PretrainResult:
    checkpoint: Path
    steps: int
    train_losses: list[tuple[int, float]]
    val_ppl_before: float
    val_ppl_after: float
    tokens_per_second: float
    seconds: float
    train: TrainResult


def _initial_model(cfg: PretrainConfig) -> torch.nn.Module | None:
    if not cfg.model.source:
        return None
    path = Path(cfg.model.source)
    if not (path / CONFIG).is_file():
        raise InputError(f"pretrain.model.from: {path} has no {CONFIG} (give an lmforge checkpoint or an HF model dir)")
    import json

    model_type = json.loads((path / CONFIG).read_text(encoding="utf-8")).get("model_type", "")
    if model_type.startswith("lmforge-"):
        return load_checkpoint(path).train()
    if cfg.arch == "gpt":
        from lmforge.models.hf import import_gpt_hf

        return import_gpt_hf(path).train()
    from lmforge.models.hf_bert import import_bert_hf

    return import_bert_hf(path).train()


def build_model(cfg: PretrainConfig, vocab_size: int, pad_id: int | None = None) -> torch.nn.Module:
    """A fresh model of the preset (with overrides), or the one `model.from` names (BERT needs its pad id)."""
    torch.manual_seed(cfg.seed)
    model = _initial_model(cfg)
    if model is not None:
        found = model.config.vocab_size
        if found < vocab_size:
            raise ConfigError(f"pretrain.model.from: the model has {found} token ids but the tokenizer has {vocab_size}")
        return model
    config = model_config(cfg, vocab_size, pad_id)
    if cfg.arch == "gpt":
        from lmforge.models.gpt import GPT

        if config.block_size < cfg.seq_len:
            raise ConfigError(f"pretrain.model.block_size ({config.block_size}) must be at least seq_len ({cfg.seq_len})")
        return GPT(config)
    from lmforge.models.bert import BertForPretraining

    return BertForPretraining(config)


def _check_tokens(name: str, tokens: Any, needed: int, vocab_size: int) -> None:
    if len(tokens) < needed:
        raise UserError(f"{name} has {len(tokens)} tokens but needs at least {needed}; add more text or lower seq_len")
    sample = tokens if isinstance(tokens, np.ndarray) else tokens.slice(0, min(len(tokens), 1 << 22))
    top = int(np.max(sample))
    if top >= vocab_size:
        raise UserError(f"{name} contains token id {top} but the vocabulary has only {vocab_size} ids")


def pretrain(
    config: PretrainConfig,
    train_tokens: Any,
    val_tokens: Any,
    vocab_size: int,
    out_dir: str | Path,
    on_step: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Train a GPT on token streams (arrays or `TokenDataset`s) and save it to `out_dir/checkpoint`.

    Re-running with the same `out_dir` resumes from its newest resumable checkpoint (`save_every`).
    """
    if config.arch != "gpt":
        raise ConfigError("pretrain.arch: pretrain() trains GPT models; use pretrain_bert() for arch 'bert'")
    _check_tokens("train_tokens", train_tokens, config.seq_len + 2, vocab_size)
    _check_tokens("val_tokens", val_tokens, config.seq_len + 1, vocab_size)
    model = build_model(config, vocab_size)
    log.info("model: %s, %.2fM non-embedding params", config.preset, model.num_params() / 1e6)
    trainer = Trainer(
        model,
        CausalLM(),
        TokenWindows(train_tokens, config.seq_len, config.batch_size, config.seed),
        config,
        out_dir,
        val_source=EvalWindows(val_tokens, config.seq_len, config.batch_size, config.seed),
        on_step=on_step,
        extra={"pretrain": config.model_dump(mode="json")},
    )
    result = trainer.fit()
    return PretrainResult(
        checkpoint=result.checkpoint,
        steps=result.steps,
        train_losses=result.train_losses,
        val_ppl_before=math.exp(result.val_before["lm"]) if result.val_before else math.nan,
        val_ppl_after=math.exp(result.val_after["lm"]),
        tokens_per_second=result.tokens_per_second,
        seconds=result.seconds,
        train=result,
    )


def pretrain_bert(
    config: PretrainConfig,
    train: TokenDataset,
    val: TokenDataset,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """MLM (+ NSP/SOP) pretraining of a BERT encoder on WordPiece token shards (`encode_shards`' output).

    Sentence pairs are drawn lazily from the shards (`ShardPairs`), so memory does not grow with
    the corpus. Re-running with the same `out_dir` resumes like `pretrain`.
    """
    from lmforge.tokenize.bpe import load_tokenizer
    from lmforge.train.mlm import BertPretrainSource, MaskedLM, ShardPairs, eval_source, special_ids

    if config.arch != "bert":
        raise ConfigError("pretrain.arch: pretrain_bert() needs arch 'bert'")
    tok = load_tokenizer(tokenizer_dir)
    for role in ("[CLS]", "[SEP]", "[MASK]", "[PAD]"):
        if tok.token_to_id(role) is None:
            raise ConfigError(f"tokenizer: BERT pretraining needs {role}; train a tokenizer with kind: wordpiece")
    vocab_size, specials = tok.get_vocab_size(), special_ids(tok)
    _check_tokens("train tokens", train, 2, vocab_size)
    _check_tokens("val tokens", val, 2, vocab_size)
    mlm = config.mlm.model_copy(update={"max_seq_len": config.seq_len})
    train_pairs = ShardPairs(train, mlm, specials, vocab_size, seed=config.seed)
    val_pairs = ShardPairs(val, mlm, specials, vocab_size, seed=config.seed + 1)
    model = build_model(config, vocab_size, pad_id=specials.pad)
    log.info("model: %s, %.2fM non-embedding params, %d/%d documents", config.preset, model.num_params() / 1e6,
             train.num_documents, val.num_documents)
    trainer = Trainer(
        model,
        MaskedLM(mlm),
        BertPretrainSource(train_pairs, mlm, config.batch_size, config.seed),
        config,
        out_dir,
        val_source=eval_source(val_pairs, mlm, config.batch_size, seed=config.seed + 1),
        on_step=on_step,
        extra={"pretrain": config.model_dump(mode="json")},
    )
    return trainer.fit()
