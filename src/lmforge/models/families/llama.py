"""Llama 2/3.x (`LlamaForCausalLM`): grouped-query attention, rope incl. `llama3` scaling, optional biases."""

from lmforge.models.families.decoder import RopeDecoder


class Llama(RopeDecoder):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    config_class = "LlamaConfig"
    qkv_bias = "attention_bias"  # q, k, v and o together, with mlp_bias equal to it
