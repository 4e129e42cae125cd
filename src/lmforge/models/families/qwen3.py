"""Qwen3 (`Qwen3ForCausalLM`): RMSNorm on each head's q and k, a head width of its own, no biases."""

from lmforge.models.families.decoder import RopeDecoder


class Qwen3(RopeDecoder):
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    config_class = "Qwen3Config"
    qk_norm = True
    sliding = "layer_types"
