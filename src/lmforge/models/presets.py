"""Model size presets and the typed `model:` section of recipes, kept free of torch so configs validate cheaply."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from lmforge.config import StrictModel

_GPT2_STYLE = {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 128},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 256},
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, **_GPT2_STYLE},
    "gpt2-350m": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024, **_GPT2_STYLE},
}

# BERT encoder shapes (the names of Google's released BERT sizes).
BERT_PRESETS: dict[str, dict[str, Any]] = {
    "bert-tiny": {"n_layer": 2, "n_head": 2, "n_embd": 128},
    "bert-mini": {"n_layer": 4, "n_head": 4, "n_embd": 256},
    "bert-base": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}

DEFAULT_PRESET = {"gpt": "tiny", "bert": "bert-tiny"}


def presets_of(arch: str) -> dict[str, dict[str, Any]]:
    return PRESETS if arch == "gpt" else BERT_PRESETS


# Architecture fields a recipe may override, per arch: the GPTConfig / BertConfig fields except the
# ones the data decides (vocab_size from the tokenizer, BERT's pad_id from its [PAD]).
GPT_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "pos", "norm", "mlp",
              "tie_embeddings", "qk_norm", "norm_eps", "rope_theta", "mlp_hidden", "n_kv_head", "head_size",
              "qkv_bias", "rope_scaling", "sliding_window", "window_layers", "n_expert", "n_expert_active",
              "moe_hidden", "moe_renorm", "moe_shared_hidden", "moe_dense_layers", "moe_aux_loss")
BERT_FIELDS = ("max_position", "n_layer", "n_head", "n_embd", "intermediate", "dropout", "attn_dropout",
               "type_vocab_size", "layer_norm_eps")
ARCH_FIELDS = {"gpt": GPT_FIELDS, "bert": BERT_FIELDS}
SOURCE_FIELDS = ("preset", "from")  # "which model", the same in pretraining and fine-tuning


class ModelSpec(StrictModel):
    """Which model a run trains: a preset and/or a model to start `from`, plus architecture overrides.

    One shape for `pretrain.model` and `finetune.model`, so a recipe says "which model" the same way
    everywhere. The overrides are typed here for both architectures; which of them a recipe may set
    depends on its arch (`check_model_keys`), so `n_layr: 4` or a GPT-only `pos` on a BERT fails with
    the field's full name instead of being passed on and ignored. None means "the preset's value".
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    preset: str | None = Field(default=None, description="size preset [default: tiny (gpt) / bert-tiny (bert)]")
    source: str | None = Field(default=None, alias="from",
                               description="an lmforge checkpoint or a Hugging Face model directory on disk")
    block_size: int | None = Field(default=None, gt=0, description="gpt: context length [default: covers seq_len]")
    max_position: int | None = Field(default=None, gt=0, description="bert: positions [default: max(512, seq_len)]")
    n_layer: int | None = Field(default=None, gt=0)
    n_head: int | None = Field(default=None, gt=0)
    n_embd: int | None = Field(default=None, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    bias: bool | None = None
    pos: Literal["learned", "rope"] | None = None
    norm: Literal["layernorm", "rmsnorm"] | None = None
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] | None = None
    tie_embeddings: bool | None = None
    qk_norm: bool | None = None
    norm_eps: float | None = Field(default=None, gt=0)
    rope_theta: float | None = Field(default=None, gt=0)
    mlp_hidden: int | None = Field(default=None, gt=0)
    n_kv_head: int | None = Field(default=None, gt=0, description="gpt: key/value heads (grouped-query attention)")
    head_size: int | None = Field(default=None, gt=0, description="gpt: head width [default: n_embd / n_head]")
    qkv_bias: bool | None = None
    rope_scaling: dict[str, Any] | None = Field(default=None, description="gpt: {type: linear|dynamic|llama3|yarn, ...}")
    sliding_window: int | None = Field(default=None, gt=0)
    window_layers: list[int] | None = None
    n_expert: int | None = Field(default=None, ge=0, description="gpt: experts per MoE layer (0: dense)")
    n_expert_active: int | None = Field(default=None, gt=0, description="gpt: experts each token is routed to")
    moe_hidden: int | None = Field(default=None, gt=0)
    moe_renorm: bool | None = None
    moe_shared_hidden: int | None = Field(default=None, ge=0)
    moe_dense_layers: list[int] | None = None
    moe_aux_loss: float | None = Field(default=None, ge=0, description="gpt: load-balancing loss weight")
    intermediate: int | None = Field(default=None, gt=0)
    attn_dropout: float | None = Field(default=None, ge=0, lt=1)
    type_vocab_size: int | None = Field(default=None, gt=0)
    layer_norm_eps: float | None = Field(default=None, gt=0)

    def overrides(self) -> dict[str, Any]:
        """The architecture fields the recipe set (both archs' names; `check_model_keys` keeps them apart)."""
        names = set(GPT_FIELDS) | set(BERT_FIELDS)
        return {k: v for k in sorted(names) if (v := getattr(self, k)) is not None}


def _key_error(problems: list[tuple[str, Any, str]], at: tuple[str, ...]) -> ValidationError:
    """A ValidationError located at each offending key, so the message names `section.model.KEY`."""
    return ValidationError.from_exception_data("model", [
        InitErrorDetails(type=PydanticCustomError("model_field", message), loc=(*at, key), input=value)
        for key, value, message in problems
    ])


def check_model_keys(data: Any, arch: str, extra: tuple[str, ...] = (), at: tuple[str, ...] = ()) -> None:
    """Refuse keys of a `model:` mapping that `arch` does not have, listing the ones it does.

    Runs on the raw mapping, before pydantic, because which keys are allowed depends on `arch`,
    which lives beside `model` in pretraining. A preset of the other arch is refused here too.
    `extra` names the keys a section adds (fine-tuning's tokenizer); `at` locates the mapping.
    """
    if not isinstance(data, dict) or arch not in ARCH_FIELDS:
        return
    data = {k: v for k, v in data.items() if v is not None}  # None: the preset's value, as if not given
    allowed = [*SOURCE_FIELDS, *extra, *ARCH_FIELDS[arch]]
    problems = [(k, v, f"unknown key for arch {arch}; allowed: {', '.join(allowed)}")
                for k, v in data.items() if k not in allowed and k != "source"]
    preset = data.get("preset")
    if isinstance(preset, str) and preset not in presets_of(arch):
        problems.append(("preset", preset, f"not a {arch} preset; allowed: {', '.join(sorted(presets_of(arch)))}"))
    if (data.get("from") or data.get("source")) and (given := [k for k in data if k in ARCH_FIELDS[arch]]):
        problems += [(k, data[k], "architecture overrides apply to a fresh model of a preset; a model loaded "
                      "`from` a checkpoint keeps its own architecture") for k in given]
    if problems:
        raise _key_error(problems, at)
