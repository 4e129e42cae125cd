"""cpu_kernels.dropout and attention with dropout: the right rate, scale and gradient, from torch's own generator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import cpu_kernels
from lmforge.models.bert import BertConfig, BertForPretraining


@pytest.mark.parametrize("p", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_rate_and_expectation(p):
    torch.manual_seed(0)
    n = 400_003  # not a multiple of 4: the last draw's lanes are cut
    y = cpu_kernels.dropout(torch.ones(n), p)
    rate = round(p * 32768) / 32768
    dropped = (y == 0).double().mean().item()
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(dropped - rate) < 5 * sigma, (dropped, rate)
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - rate))))
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / (1 - rate)
    # every one of the four lanes of a draw drops at the same rate (the top lane has a bit less)
    lanes = (y[: n // 4 * 4] == 0).view(-1, 4).double().mean(0)
    assert torch.all((lanes - rate).abs() < 5 * math.sqrt(rate * (1 - rate) / (n // 4))), lanes


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(6, 50, requires_grad=True)
    y = cpu_kernels.dropout(x, 0.3)
    kept = y.detach() != 0
    scale = 1 / (1 - round(0.3 * 32768) / 32768)
    assert torch.allclose(y, x.detach() * kept * scale)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g * kept * scale)


def test_masks_come_from_torch_seeded_generator():
    x = torch.ones(1000)
    torch.manual_seed(5)
    a = cpu_kernels.dropout(x, 0.5)
    torch.manual_seed(5)
    b = cpu_kernels.dropout(x, 0.5)
    c = cpu_kernels.dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_off_in_eval_and_for_p_zero_and_bf16_keeps_its_dtype():
    x = torch.randn(10, 10)
    assert cpu_kernels.dropout(x, 0.5, training=False) is x
    assert cpu_kernels.dropout(x, 0.0) is x
    assert cpu_kernels.dropout(x.bfloat16(), 0.5).dtype == torch.bfloat16
    module = cpu_kernels.Dropout(0.2)
    assert module.eval()(x) is x and module.state_dict() == {}


def test_attention_without_dropout_is_sdpa_and_with_it_drops_the_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    assert torch.allclose(cpu_kernels.attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(cpu_kernels.attention(q, k, v, is_causal=True), causal, atol=1e-6)
    # with dropout: the same mask replayed from the same seed gives the reference
    for kwargs in ({"mask": mask}, {"is_causal": True}):
        torch.manual_seed(3)
        got = cpu_kernels.attention(q, k, v, dropout_p=0.2, **kwargs)
        torch.manual_seed(3)
        keep = cpu_kernels.dropout(torch.ones(2, 3, 7, 7), 0.2)
        m = kwargs.get("mask", torch.ones(7, 7, dtype=torch.bool).tril())
        probs = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~m, float("-inf")), -1)
        assert torch.allclose(got, (probs * keep) @ v, atol=1e-6)


def test_bert_training_step_uses_the_fast_masks_and_stays_reproducible(monkeypatch):
    calls = []
    fast = cpu_kernels.dropout
    monkeypatch.setattr(cpu_kernels, "dropout", lambda x, p, training=True: calls.append(p) or fast(x, p, training))
    config = BertConfig(vocab_size=100, n_layer=2, n_head=2, n_embd=32, max_position=16)
    ids = torch.randint(1, 100, (4, 16))

    def step(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = BertForPretraining(config).train()
        torch.manual_seed(seed)
        return model.features(ids).sum()

    assert torch.equal(step(1), step(1)) and not torch.equal(step(1), step(2))
    # per forward: the embeddings, and per layer the attention probabilities and two residual branches
    assert len(calls) == 4 * (1 + 2 * 3)  # four forward passes above
