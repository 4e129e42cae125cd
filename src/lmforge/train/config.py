"""Pretraining config, kept free of torch so recipes validate without importing it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.models.presets import DEFAULT_PRESET, PRESETS, ModelSpec, check_model_keys


class MLMConfig(StrictModel):
    """Masked-language-model data for BERT-style pretraining (ignored by `arch: gpt`)."""

    mask_prob: float = Field(default=0.15, gt=0, lt=1, description="share of tokens chosen for prediction")
    mask_token_frac: float = Field(default=0.8, ge=0, le=1, description="chosen tokens replaced by [MASK]")
    random_token_frac: float = Field(default=0.1, ge=0, le=1, description="chosen tokens replaced by a random token")
    whole_word: Literal["auto", "on", "off"] = Field(
        default="auto", description="mask whole words (jieba words for Chinese, ## pieces for English)"
    )
    sentence_task: Literal["nsp", "sop", "none"] = Field(
        default="nsp", description="next-sentence prediction, sentence-order prediction, or MLM only"
    )
    short_seq_prob: float = Field(default=0.1, ge=0, le=1, description="share of examples given a shorter target")
    max_seq_len: int = Field(default=128, ge=8, description="tokens per example, [CLS] and [SEP] included")

    @model_validator(mode="after")
    def _fractions(self) -> MLMConfig:
        if self.mask_token_frac + self.random_token_frac > 1:
            raise ValueError(
                f"mask_token_frac + random_token_frac must be at most 1 (got {self.mask_token_frac} + {self.random_token_frac})"
            )
        return self


class TrainConfig(StrictModel):
    """How the trainer runs: optimizer, schedule, batch, precision, evaluation, checkpoints.

    Shared by pretraining and fine-tuning; `seq_len` is the longest sequence a batch holds.
    """

    seq_len: int = Field(default=128, gt=0)
    batch_size: int = Field(default=16, gt=0, description="sequences per micro-batch on each process")
    grad_accum: int = Field(default=1, gt=0, description="micro-batches per optimizer step on each process")
    steps: int = Field(default=300, gt=0)
    optimizer: Literal["adamw", "muon"] = Field(default="adamw", description="muon: Muon for hidden 2-D weights, AdamW for the rest")
    lr: float = Field(default=3e-3, gt=0)
    min_lr: float = Field(default=3e-4, ge=0)
    muon_lr: float = Field(default=0.02, gt=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(default=30, ge=0)
    decay_frac: float = Field(default=0.2, gt=0, le=1, description="wsd: share of steps spent decaying")
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(default="auto", description="auto: bf16 autocast on GPUs that support it and on CPUs with native bfloat16 (AVX-512 BF16 or AMX), else fp32")
    compile: bool = False
    activation_checkpointing: bool = False
    eval_every: int = Field(default=100, ge=0, description="0 evaluates only before and after")
    eval_batches: int = Field(default=8, gt=0)
    early_stopping: int = Field(default=0, ge=0, description="stop after this many evaluations without a better val loss; 0 never")
    log_every: int = Field(default=10, gt=0)
    save_every: int = Field(default=0, ge=0, description="resumable checkpoint every N steps; 0 only at the end")
    keep_checkpoints: int = Field(default=2, gt=0)
    distributed: Literal["ddp", "fsdp"] = Field(default="ddp", description="how torchrun processes share the model")
    tensorboard: bool = True
    peak_tflops: float | None = Field(default=None, gt=0, description="for MFU when the device is not recognised")
    seed: int = 0
    device: str = "auto"

    @model_validator(mode="after")
    def _check_training(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must both be in [0, 1) (got {self.betas})")
        return self


class PretrainConfig(TrainConfig):
    arch: Literal["gpt", "bert"] = Field(default="gpt", description="gpt: causal LM; bert: MLM (+ NSP/SOP)")
    model: ModelSpec = Field(default_factory=ModelSpec,
                             description="which model: {preset, from, architecture overrides such as n_layer}")
    val_percent: float = Field(default=5.0, gt=0, lt=100, description="documents held out for validation")
    mlm: MLMConfig = Field(default_factory=MLMConfig)

    @model_validator(mode="before")
    @classmethod
    def _model_section(cls, data: Any) -> Any:
        """Check `model` against the arch's fields, and fill in the arch's default preset.

        The old top-level `preset` and `init_from` keys still work: they move into `model`.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        arch = data.get("arch", "gpt")
        model = data.get("model")
        if model is None or isinstance(model, dict):
            model = dict(model or {})
            for old, new in (("preset", "preset"), ("init_from", "from")):
                value = data.pop(old, None)
                if value is None:
                    continue
                if model.get(new) is not None:
                    raise ValueError(f"{old} and model.{new} are both given; keep model.{new}")
                model[new] = value
            check_model_keys(model, arch, at=("model",))
            if arch in DEFAULT_PRESET:
                model.setdefault("preset", DEFAULT_PRESET[arch])
            data["model"] = model
        return data

    @property
    def preset(self) -> str:
        return self.model.preset or DEFAULT_PRESET[self.arch]

    @property
    def init_from(self) -> str | None:
        return self.model.source


def model_config(cfg: PretrainConfig, vocab_size: int, pad_id: int | None = None) -> Any:
    """The GPTConfig or BertConfig a fresh pretraining run builds: the preset, then `model` overrides.

    The context length defaults to cover `seq_len`. Imports torch (through the model files).
    """
    overrides = cfg.model.overrides()
    if cfg.arch == "gpt":
        from lmforge.models.gpt import config_from_preset

        overrides.setdefault("block_size", max(PRESETS[cfg.preset]["block_size"], cfg.seq_len))
        return config_from_preset(cfg.preset, vocab_size, **overrides)
    from lmforge.models.bert import bert_config_from_preset

    overrides.setdefault("max_position", max(512, cfg.seq_len))
    if pad_id is not None:
        overrides.setdefault("pad_id", pad_id)
    return bert_config_from_preset(cfg.preset, vocab_size, **overrides)


def check_model_size(cfg: PretrainConfig, vocab_size: int) -> None:
    """Refuse, before any data step runs, a recipe whose model could not even be allocated here.

    `vocab_size` is the tokenizer's target size, an upper bound of the vocabulary it will learn.
    A model continued `from` a checkpoint (`model.from`) is checked when it is loaded instead.
    """
    import dataclasses

    from lmforge.errors import ConfigError
    from lmforge.models.sizes import check_fits

    if cfg.model.source:
        return
    try:
        config = model_config(cfg, vocab_size)
    except ConfigError as exc:
        raise ConfigError(f"pretrain: {exc}") from None
    names = {f.name: f"pretrain.model.{f.name}" for f in dataclasses.fields(config)}
    check_fits(config, prefix="", field_names={**names, "vocab_size": "tokenizer.vocab_size"})
