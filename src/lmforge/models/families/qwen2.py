"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): biases on q, k, v only; sliding windows on the layers from max_window_layers."""

from lmforge.models.families.decoder import RopeDecoder


class Qwen2(RopeDecoder):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    config_class = "Qwen2Config"
    qkv_bias = "always"
    sliding = "layer_types"
