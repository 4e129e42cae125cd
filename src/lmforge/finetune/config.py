"""Fine-tuning config (torch-free, so recipes validate without importing it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.finetune.loaders import LoaderConfig
from lmforge.train.config import TrainConfig


class TaskDataConfig(StrictModel):
    """Where the labelled examples come from: a built-in task, or a file with a loader config."""

    builtin: str | None = Field(default=None, description="zh_sentiment, zh_ner, en_pydoc_topic, instructions")
    options: dict[str, Any] = Field(default_factory=dict, description="built-in task options, e.g. {max_per_class: 500}")
    path: str | None = Field(default=None, description="JSONL, CSV/TSV, Label Studio JSON or lmforge record shards")
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    train_limit: int | None = Field(
        default=None, gt=0, description="keep at most this many training examples (stratified): a small labelled set")
    val_frac: float = Field(default=0.1, ge=0, lt=1)
    test_frac: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_source(self) -> TaskDataConfig:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of builtin (a built-in task name) or path (a labelled file)")
        return self


class ModelSource(StrictModel):
    """The model to fine-tune: a checkpoint or HF directory (`from`), or a fresh one of a preset (from scratch)."""

    model_config = {"populate_by_name": True, "extra": "forbid"}

    source: str | None = Field(default=None, alias="from",
                               description="lmforge checkpoint or Hugging Face model directory on disk")
    tokenizer: str | None = Field(default=None, description="tokenizer directory [default: beside the checkpoint]")
    arch: Literal["gpt", "bert"] = "bert"
    preset: str = "bert-tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)
    dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout before the task head")
    pool: Literal["auto", "cls", "mean", "last"] = Field(
        default="auto", description="classification input: mean of the token states (auto), last token, or BERT's [CLS] pooler")
    init: Literal["pretrained", "scratch"] = Field(
        default="pretrained", description="scratch: the same architecture as `from`, freshly initialised (a baseline)")


class LoraSettings(StrictModel):
    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, description="None: every attention and MLP projection")


class FinetuneConfig(TrainConfig):
    task: Literal["classification", "ner", "instruction"]
    data: TaskDataConfig
    model: ModelSource = Field(default_factory=ModelSource)
    epochs: float | None = Field(default=3.0, gt=0, description="sets steps from the training set size; null uses steps")
    lora: LoraSettings | None = None
    class_weights: bool = Field(default=False, description="weight the loss by inverse class frequency")
    metric: str | None = Field(default=None, description="selects the best checkpoint [default: accuracy / f1 / loss]")
    generate_examples: int = Field(default=100, ge=0, description="instruction: test prompts answered greedily and scored")
    generate_max_tokens: int = Field(default=48, gt=0)
    compare_scratch: bool = Field(default=False, description="also train the same architecture from scratch and compare")
    search: dict[str, list[Any]] | None = Field(
        default=None, description="grid over TrainConfig fields, e.g. {lr: [1e-4, 3e-4], batch_size: [16, 32]}")
    # Fine-tuning defaults differ from pretraining's.
    lr: float = Field(default=1e-4, gt=0)
    min_lr: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    eval_every: int | None = Field(default=None, ge=0, description="null: five evaluations per run")
    early_stopping: int = Field(default=3, ge=0)

    def selection(self) -> tuple[str, str]:
        """(metric, "max" | "min") that picks the best validation."""
        name = self.metric or {"classification": "accuracy", "ner": "f1", "instruction": "loss"}[self.task]
        return name, "min" if name == "loss" or name.endswith("loss") else "max"
