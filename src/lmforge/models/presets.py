"""Model size presets, kept free of torch so configs can validate a preset name cheaply."""

from __future__ import annotations

from typing import Any

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
