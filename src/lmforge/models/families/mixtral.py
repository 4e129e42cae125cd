"""Mixtral (`MixtralForCausalLM`): Mistral with 8 experts per layer, top-2, weights renormalised.

Its experts are named w1 (gate), w3 (up), w2 (down) under `block_sparse_moe`.
"""

from typing import Any

from lmforge.models.families.base import Pair
from lmforge.models.families.decoder import RopeDecoder, experts
from lmforge.models.gpt_config import GPTConfig


class Mixtral(RopeDecoder):
    model_type = "mixtral"
    architecture = "MixtralForCausalLM"
    config_class = "MixtralConfig"
    sliding = "all"
    field_names = {**RopeDecoder.field_names, "n_expert": "num_local_experts", "moe_hidden": "intermediate_size"}

    def moe_from_hf(self, raw: dict[str, Any]) -> dict[str, Any]:
        if raw.get("router_jitter_noise"):
            raise self.refuse("router_jitter_noise must be 0 (lmforge routes deterministically)")
        return dict(n_expert=self.need(raw, "num_local_experts"), n_expert_active=self.need(raw, "num_experts_per_tok"),
                    moe_renorm=True, moe_aux_loss=float(raw.get("router_aux_loss_coef", 0.0)))

    def check_exportable(self, config: GPTConfig) -> None:
        super().check_exportable(config)
        if not config.n_expert or config.moe_dense_layers or config.moe_shared_hidden or not config.moe_renorm:
            raise self.unsupported(config, "n_expert", self.architecture,
                                   "it has renormalised experts in every layer and no shared expert")
        if config.expert_hidden != config.mlp_hidden_size:
            raise self.unsupported(config, "moe_hidden", self.architecture, "its experts are mlp_hidden wide")

    def moe_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return dict(num_local_experts=config.n_expert, num_experts_per_tok=config.n_expert_active,
                    router_aux_loss_coef=config.moe_aux_loss)

    def moe_weights(self, config: GPTConfig, ours: str, layer: str) -> list[Pair]:
        moe = layer + "block_sparse_moe."
        return [Pair(ours + "router.weight", (moe + "gate.weight",)),
                *experts(config, ours, moe + "experts.", "w1", "w3", "w2")]
