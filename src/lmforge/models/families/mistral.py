"""Mistral (`MistralForCausalLM`): Llama's layout with a sliding window on every layer."""

from lmforge.models.families.decoder import RopeDecoder


class Mistral(RopeDecoder):
    model_type = "mistral"
    architecture = "MistralForCausalLM"
    config_class = "MistralConfig"
    sliding = "all"
