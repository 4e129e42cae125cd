"""lmforge's engine and server on imported open-weight families: the same greedy tokens as `transformers`.

The engine batches requests of different lengths in one slot cache (each row at its own length),
stores only the key/value heads of a grouped-query model, masks keys outside a sliding window,
and routes MoE tokens per step; none of that may change a single token.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmforge.models.hf import import_gpt_hf
from lmforge.serve.cache import SlotCache
from lmforge.serve.generate import generate_batch
from lmforge.serve.sampling import SamplingParams

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from hf_families import PROMPTS, hf_model  # noqa: E402


@pytest.mark.parametrize("case", ["qwen2-window", "mistral-linear", "qwen3-moe", "llama-bias-mqa"])
def test_batched_engine_decodes_like_transformers(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path)
    model = import_gpt_hf(tmp_path)
    params = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    results = generate_batch(model, None, PROMPTS, params, stop_ids=[], slots=4)
    for prompt, [completion] in zip(PROMPTS, results, strict=True):
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=16, min_new_tokens=16, do_sample=False)
        assert completion.token_ids == theirs[0, len(prompt):].tolist()


def test_slot_cache_holds_only_the_key_value_heads(tmp_path):
    hf_model("llama-bias-mqa").save_pretrained(tmp_path)  # 4 query heads, 1 key/value head
    model = import_gpt_hf(tmp_path)
    cache = SlotCache(model, slots=3, max_len=32)
    assert cache.k.shape == (2, 3, 1, 32, 16)
