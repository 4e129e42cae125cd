"""Packed oneDNN weight copies for CPU decoding: the same outputs, never stale, never under autograd."""

from __future__ import annotations

import pytest
import torch

from lmforge.models import cpu_kernels
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.serve.generate import generate_batch
from lmforge.serve.sampling import SamplingParams

pytestmark = pytest.mark.skipif(not cpu_kernels.ENABLED, reason="oneDNN packing needs an x86 CPU build of torch")

MOE = dict(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, n_expert=4, n_expert_active=2,
           moe_hidden=32)


def moe_model(dtype: torch.dtype) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**MOE)).to(dtype).eval()


BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not cpu_kernels.BF16_KERNELS, reason="oneDNN's bf16 kernels need AVX-512 BW/VL/DQ or AVX-NE-CONVERT"))


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
def test_packed_decoding_gives_the_same_tokens(dtype, monkeypatch):
    prompts = [[5, 17, 42, 7], [3] * 11, list(range(20, 40))]
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    monkeypatch.setenv("LMFORGE_PACK_WEIGHTS", "0")
    plain = generate_batch(moe_model(dtype), None, prompts, params, [], slots=3)
    monkeypatch.setenv("LMFORGE_PACK_WEIGHTS", "1")
    model = moe_model(dtype)
    packed = generate_batch(model, None, prompts, params, [], slots=3)
    assert model.lm_head.packed is not None and model.transformer.h[0].mlp.packed
    assert [c[0].token_ids for c in packed] == [c[0].token_ids for c in plain]


def test_bf16_weights_are_packed_only_where_onednn_has_bf16_kernels(monkeypatch):
    weight = torch.zeros(8, 8, dtype=torch.bfloat16)
    monkeypatch.setattr(cpu_kernels, "BF16_KERNELS", False)  # an AVX2-only CPU: packing would fail to build
    assert not cpu_kernels.can_pack(weight) and cpu_kernels.can_pack(weight.float())
    model = moe_model(torch.bfloat16)
    assert model.pack_for_inference(1 << 30) == 0  # decodes on the plain path instead of failing


@pytest.mark.skipif(not cpu_kernels.BF16_KERNELS, reason="oneDNN's bf16 kernels need AVX-512 BW/VL/DQ")
def test_packed_copy_is_exact_and_dropped_when_the_weight_changes():
    model = moe_model(torch.bfloat16)
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        before = model(x)[0]
        assert model.pack_for_inference(1 << 30) > 0
        assert torch.equal(model(x)[0], before)  # bf16: bit for bit
        model.lm_head.weight.mul_(2)  # an optimizer step or a merged adapter changes weights in place
        model.transformer.h[1].mlp.down.mul_(0.5)
        changed = model(x)[0]
    model.lm_head.packed = None  # the plain path's answer for the changed weights
    model.transformer.h[1].mlp.packed = []
    with torch.no_grad():
        assert torch.equal(changed, model(x)[0])
    assert model.pack_for_inference(1 << 30) > 0  # stale copies are packed again


def test_packed_copies_are_not_used_with_autograd_or_past_the_budget():
    model = moe_model(torch.float32).train()
    assert model.pack_for_inference(0) == 0 and model.lm_head.packed is None
    model.pack_for_inference(1 << 30)
    loss = model(torch.randint(0, 300, (2, 9)), torch.randint(0, 300, (2, 9)))[1]
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.transformer.h[0].mlp.gate_up.grad is not None
