"""One adapter per Hugging Face family, found by config.json's `model_type` (see base.Family)."""

from __future__ import annotations

from lmforge.models.families.base import Family, Pair
from lmforge.models.families.gpt2 import GPT2
from lmforge.models.families.llama import Llama
from lmforge.models.families.mistral import Mistral
from lmforge.models.families.mixtral import Mixtral
from lmforge.models.families.qwen2 import Qwen2
from lmforge.models.families.qwen3 import Qwen3
from lmforge.models.families.qwen_moe import Qwen2Moe, Qwen3Moe

FAMILIES: dict[str, type[Family]] = {
    f.model_type: f for f in (Llama, Qwen2, Qwen3, Qwen3Moe, Qwen2Moe, Mistral, Mixtral, GPT2)
}

__all__ = ["FAMILIES", "Family", "Pair"]
