"""Qwen3-MoE (`Qwen3MoeForCausalLM`) and Qwen2-MoE (`Qwen2MoeForCausalLM`).

Both route each token to `num_experts_per_tok` of `num_experts` experts (weights renormalised
only with `norm_topk_prob`), keep a dense MLP on `mlp_only_layers` and off the
`decoder_sparse_step` rhythm, and name experts `mlp.experts.E.{gate,up,down}_proj`. Qwen2-MoE
adds a shared expert every token passes through, scaled by a sigmoid gate, and q/k/v biases;
Qwen3-MoE has Qwen3's q/k norms instead.
"""

from typing import Any

from lmforge.models.families.base import Pair
from lmforge.models.families.decoder import RopeDecoder, dense_mlp, experts
from lmforge.models.gpt_config import GPTConfig


class Qwen3Moe(RopeDecoder):
    model_type = "qwen3_moe"
    architecture = "Qwen3MoeForCausalLM"
    config_class = "Qwen3MoeConfig"
    qk_norm = True
    sliding = "layer_types"
    shared_expert = False

    def moe_from_hf(self, raw: dict[str, Any]) -> dict[str, Any]:
        n_layer, step = raw["num_hidden_layers"], raw.get("decoder_sparse_step", 1) or 1
        only = raw.get("mlp_only_layers") or []
        dense = [i for i in range(n_layer) if i in only or (i + 1) % step]
        # transformers 5 writes num_local_experts; checkpoints on the Hub say num_experts
        n_expert = raw.get("num_experts") or self.need(raw, "num_local_experts")
        fields = dict(n_expert=n_expert, n_expert_active=self.need(raw, "num_experts_per_tok"),
                      moe_hidden=self.need(raw, "moe_intermediate_size"), moe_dense_layers=dense,
                      moe_renorm=bool(raw.get("norm_topk_prob", False)),
                      moe_aux_loss=float(raw.get("router_aux_loss_coef", 0.0)))
        if self.shared_expert:
            fields["moe_shared_hidden"] = self.need(raw, "shared_expert_intermediate_size")
        return fields

    def check_exportable(self, config: GPTConfig) -> None:
        super().check_exportable(config)
        if not config.n_expert:
            raise self.unsupported(config, "n_expert", self.architecture, "it is a mixture of experts")
        if bool(config.moe_shared_hidden) != self.shared_expert:
            raise self.unsupported(config, "moe_shared_hidden", self.architecture,
                                   "shared experts are Qwen2-MoE's alone")

    def moe_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        out = dict(num_experts=config.n_expert, num_experts_per_tok=config.n_expert_active,
                   moe_intermediate_size=config.expert_hidden, norm_topk_prob=config.moe_renorm,
                   decoder_sparse_step=1, mlp_only_layers=list(config.moe_dense_layers),
                   router_aux_loss_coef=config.moe_aux_loss)
        if self.shared_expert:
            out["shared_expert_intermediate_size"] = config.moe_shared_hidden
        return out

    def moe_weights(self, config: GPTConfig, ours: str, layer: str) -> list[Pair]:
        mlp = layer + "mlp."
        pairs = [Pair(ours + "router.weight", (mlp + "gate.weight",)),
                 *experts(config, ours, mlp + "experts.", "gate_proj", "up_proj", "down_proj")]
        if self.shared_expert:
            pairs += dense_mlp(config, ours + "shared.", mlp + "shared_expert.")
            pairs.append(Pair(ours + "shared_gate.weight", (mlp + "shared_expert_gate.weight",)))
        return pairs


class Qwen2Moe(Qwen3Moe):
    model_type = "qwen2_moe"
    architecture = "Qwen2MoeForCausalLM"
    config_class = "Qwen2MoeConfig"
    qk_norm = False
    qkv_bias = "always"
    shared_expert = True

    def biases(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {"bias": False, "qkv_bias": bool(raw.get("qkv_bias", True))}

    def hf_config(self, config: GPTConfig) -> dict[str, Any]:
        return {**super().hf_config(config), "qkv_bias": config.attn_bias}
