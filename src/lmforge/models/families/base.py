"""What a family adapter is: how one Hugging Face architecture's config and weights map onto GPT.

Every adapter answers three questions, each in one place:

- `config_from_hf(raw)`: which GPTConfig fields a config.json means (or an InputError naming the
  field lmforge cannot honour);
- `hf_config(config)`: the config.json fields that family writes for a GPTConfig (or a
  ConfigError when the family cannot express it);
- `weights(config)`: a `Pair` per lmforge tensor naming the HF tensors it is cut from.

lmforge fuses matmuls that the HF families keep apart: q, k and v are one matmul (rows [q; k; v]
of n_head, n_kv_head, n_kv_head heads), SwiGLU's gate and up another (rows [gate; up]), and an
MoE layer's experts are stacked into (E, ...) tensors. A Pair says how: its HF names are row
blocks concatenated in order, and with `experts` > 0 they are `experts` equal groups, each group
concatenated and the groups stacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lmforge.errors import ConfigError, InputError
from lmforge.models.gpt_config import GPTConfig


@dataclass(frozen=True)
class Pair:
    ours: str
    hf: tuple[str, ...]
    transposed: bool = False  # GPT-2's Conv1D stores (in, out)
    experts: int = 0  # > 0: hf holds `experts` groups of names, stacked along a new dim 0

    def groups(self) -> list[tuple[str, ...]]:
        if not self.experts:
            return [self.hf]
        size = len(self.hf) // self.experts
        return [self.hf[i * size:(i + 1) * size] for i in range(self.experts)]


class Family:
    """Base class: the fields every family's config.json shares live in `need`/`common_hf`."""

    model_type: ClassVar[str]
    architecture: ClassVar[str]
    config_class: ClassVar[str]  # transformers' config class, for writing config.json
    # lmforge field -> the config.json key it comes from, so size errors name the user's key
    field_names: ClassVar[dict[str, str]] = {
        "n_layer": "num_hidden_layers", "n_embd": "hidden_size", "mlp_hidden": "intermediate_size",
        "block_size": "max_position_embeddings", "n_head": "num_attention_heads",
        "n_kv_head": "num_key_value_heads", "head_size": "head_dim", "n_expert": "num_experts",
        "moe_hidden": "moe_intermediate_size",
    }

    def __init__(self, file: str = "config.json") -> None:
        self.file = file  # named in import errors

    def config_from_hf(self, raw: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def hf_config(self, config: GPTConfig) -> dict[str, Any]:
        raise NotImplementedError

    def weights(self, config: GPTConfig) -> list[Pair]:
        raise NotImplementedError

    def check_exportable(self, config: GPTConfig) -> None:
        """A ConfigError naming the field when `config` has something this family cannot hold."""

    def refine(self, fields: dict[str, Any], read: Any) -> dict[str, Any]:
        """The fields again once the weights can be read (`read.names/shape/tensor`); most need nothing."""
        return fields

    # ---- helpers shared by the adapters

    def need(self, raw: dict[str, Any], key: str) -> Any:
        if key not in raw or raw[key] is None:
            raise InputError(f"{self.file} lacks the field {key!r}")
        return raw[key]

    def refuse(self, message: str) -> InputError:
        return InputError(f"{self.file}: {message}")

    @staticmethod
    def unsupported(config: GPTConfig, field: str, family: str, why: str) -> ConfigError:
        return ConfigError(f"model.{field}={getattr(config, field)} cannot be exported as {family}: {why}")

    def check_layout(self, config: GPTConfig, wanted: dict[str, tuple[str, ...]]) -> None:
        """A ConfigError naming the first of pos/norm/mlp that is not one of `wanted`'s."""
        for field, allowed in wanted.items():
            if getattr(config, field) not in allowed:
                needs = ", ".join(f"{f}={'|'.join(a)}" for f, a in wanted.items())
                raise self.unsupported(config, field, self.architecture, f"it needs {needs}")
