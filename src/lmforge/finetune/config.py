"""Fine-tuning config (torch-free, so recipes validate without importing it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.models.presets import DEFAULT_PRESET, ModelSpec, check_model_keys
from lmforge.tasks.loaders import LoaderConfig
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


class FinetuneModel(ModelSpec):
    """Which model to fine-tune: `from` a checkpoint or HF directory, or a fresh one of a preset (from scratch).

    The same shape as `pretrain.model`, plus the tokenizer and whether to keep the weights.
    """

    tokenizer: str | None = Field(default=None, description="tokenizer directory [default: beside the checkpoint]")
    arch: Literal["gpt", "bert"] = Field(default="bert", description="the architecture of a fresh preset model")
    init: Literal["pretrained", "scratch"] = Field(
        default="pretrained", description="scratch: the same architecture as `from`, freshly initialised (a baseline)")

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        """Check the keys against the arch's fields; a fresh model gets the arch's default preset."""
        if isinstance(data, dict):
            arch = data.get("arch", "bert")
            check_model_keys(data, arch, extra=("tokenizer", "arch", "init"))
            if data.get("from") is None and data.get("source") is None and arch in DEFAULT_PRESET:
                data = {**data, "preset": data.get("preset") or DEFAULT_PRESET[arch]}
        return data

    def pretrain_model(self) -> ModelSpec:
        """The `pretrain.model` that builds the same fresh architecture (preset and overrides)."""
        return ModelSpec(preset=self.preset, **self.overrides())


class HeadConfig(StrictModel):
    """The task head on top of the model: how a sequence is pooled for classification, a tagger's
    neighbour window and CRF (ner), its dropout."""

    dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout before the task head")
    pool: Literal["auto", "cls", "mean", "last"] = Field(
        default="auto", description="classification input: mean of the token states (auto), last token, or BERT's [CLS] pooler")
    window: int = Field(default=2, ge=0, le=8, description="ner: a convolution over each token's neighbours up to "
                        "this far either side, before the tag layer (0: none)")
    crf: bool = Field(default=True, description="ner: a linear-chain CRF over the tags, trained and decoded per sentence")


def _legacy_model(data: Any) -> Any:
    """The old spelling `model: {from, pool, dropout, overrides: {...}}`: head options move to `head`.

    Recognised by `pool` or `overrides` in `model`, or by `dropout` beside `from` (a loaded model keeps
    its architecture, so there `dropout` can only have meant the head's, as it did).
    """
    if not isinstance(data, dict) or not isinstance(model := data.get("model"), dict):
        return data
    if "pool" not in model and "overrides" not in model and not ("from" in model and "dropout" in model):
        return data
    model, head = dict(model), dict(data.get("head") or {})
    for key in ("pool", "dropout"):
        if key in model:
            head.setdefault(key, model.pop(key))
    overrides = model.pop("overrides", None) or {}
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            model.setdefault(key, value)
    return {**data, "model": model, "head": head}


class LoraSettings(StrictModel):
    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1, description="on the projections' updates (experts' have none)")
    target_modules: list[str] | None = Field(default=None, description="None: every attention and MLP projection")
    target_parameters: list[str] | None = Field(
        default=None, description="MoE expert weights to adapt (gate_up, down); None: both, [] none")


class ChatSettings(StrictModel):
    """Conversation tuning (task: conversation)."""

    packing: bool = Field(default=True, description="several conversations per row of seq_len tokens, each "
                                                     "attending only to itself with its own positions")


class PreferenceSettings(StrictModel):
    """Preference tuning (task: preference); see finetune.preference for the losses."""

    loss: Literal["dpo", "ipo", "simpo", "orpo"] = "dpo"
    beta: float = Field(default=0.1, gt=0, description="dpo/ipo/simpo: the inverse temperature β; orpo: the "
                                                        "odds-ratio weight λ")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5,
                                   description="dpo/simpo: the share of pairs assumed mislabelled (conservative DPO)")
    length_normalize: bool | None = Field(
        default=None, description="average log-probabilities over the answer's tokens [default: no for dpo; yes for "
                                  "ipo, simpo and orpo]")
    simpo_gamma: float = Field(default=0.5, ge=0, description="simpo: the target reward margin γ")
    reference: str | None = Field(
        default=None, description="reference model directory [default: the model training starts from]")

    @property
    def normalized(self) -> bool:
        return self.length_normalize if self.length_normalize is not None else self.loss != "dpo"


class FinetuneConfig(TrainConfig):
    task: Literal["classification", "ner", "instruction", "conversation", "preference"]
    data: TaskDataConfig
    model: FinetuneModel = Field(default_factory=FinetuneModel)
    head: HeadConfig = Field(default_factory=HeadConfig)
    epochs: float | None = Field(default=3.0, gt=0, description="sets steps from the training set size; null uses steps")
    lora: LoraSettings | None = None
    chat: ChatSettings = Field(default_factory=ChatSettings)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
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

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _legacy_model(data)

    def selection(self) -> tuple[str, str]:
        """(metric, "max" | "min") that picks the best validation."""
        name = self.metric or {"classification": "accuracy", "ner": "f1"}.get(self.task, "loss")
        return name, "min" if name == "loss" or name.endswith("loss") else "max"
