"""The GPT options beyond the basic layouts: qk_norm, eps/rope settings, activation checkpointing,
FLOP count, the fused CPU loss path, and config validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import cpu_kernels
from lmforge.models.gpt import GPT, GPTConfig, RMSNorm

VOCAB = 300
GPT2_STYLE = {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}
STYLES = {"modern": {}, "qk_norm": {"qk_norm": True}, "gpt2": GPT2_STYLE, "untied": {"tie_embeddings": False}}


def small_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = {"vocab_size": VOCAB, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}
    return GPT(GPTConfig(**cfg))


def loss_and_grads(model: GPT, idx, targets, **kwargs):
    torch.manual_seed(123)  # same dropout masks for both runs
    _, loss = model(idx, targets, **kwargs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("style", STYLES)
def test_activation_checkpointing_gives_the_same_loss_and_grads(style):
    model = small_model(dropout=0.1, **STYLES[style]).train()
    idx, targets = torch.randint(0, VOCAB, (2, 24)), torch.randint(0, VOCAB, (2, 24))
    loss, grads = loss_and_grads(model, idx, targets)
    model.checkpoint_activations = True
    loss_ckpt, grads_ckpt = loss_and_grads(model, idx, targets)
    assert torch.allclose(loss, loss_ckpt, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], atol=1e-6), name


def test_qk_norm_normalises_each_head_and_trains():
    model = small_model(qk_norm=True)
    attn = model.transformer.h[0].attn
    assert isinstance(attn.q_norm, RMSNorm) and attn.q_norm.weight.shape == (16,)  # head_dim
    assert small_model().transformer.h[0].attn.q_norm is None
    assert model.num_params() == small_model().num_params() + 2 * 2 * 16  # q and k norm per layer
    idx = torch.randint(0, VOCAB, (2, 12))
    _, loss = model(idx, idx)
    loss.backward()
    assert attn.q_norm.weight.grad is not None and attn.q_norm.weight.grad.abs().sum() > 0


def test_qk_norm_makes_attention_independent_of_q_and_k_scale():
    model = small_model(qk_norm=True).eval()
    idx = torch.randint(0, VOCAB, (1, 10))
    before, _ = model(idx)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:64] *= 7.0  # the q and k rows only
    after, _ = model(idx)
    assert torch.allclose(before, after, atol=1e-4)


def test_eps_and_rope_theta_reach_the_modules():
    rms = small_model(norm_eps=1e-3, rope_theta=500.0, qk_norm=True)
    assert rms.transformer.ln_f.eps == 1e-3 and rms.transformer.h[0].attn.k_norm.eps == 1e-3
    default = small_model()
    assert default.config.eps == 1e-6
    assert not torch.allclose(rms.rope_cos, default.rope_cos)
    inv_freq = 1.0 / 500.0 ** (torch.arange(0, 16, 2) / 16)
    assert torch.allclose(rms.rope_cos[5], torch.cos(5 * inv_freq))
    layer = small_model(**GPT2_STYLE)
    assert layer.config.eps == 1e-5 and layer.transformer.ln_f.eps == 1e-5  # GPT-2's value
    assert small_model(mlp_hidden=48).transformer.h[0].mlp.c_fc.weight.shape == (96, 32)  # [gate; up]


def test_flops_per_token_matches_a_hand_count():
    model = small_model(n_layer=2, n_embd=32, n_head=2, block_size=16, vocab_size=100)
    C, hidden = 32, 128  # swiglu: 64 * ceil(int(8 * 32 / 3) / 64)
    per_layer = C * 3 * C + C * C + C * 2 * hidden + hidden * C + 2 * C  # qkv, proj, [gate; up], down, norms
    n = 2 * per_layer + C + 100 * C  # final norm and the (tied) output projection's matmul
    assert model.flops_per_token() == 6 * n + 12 * 2 * C * 16
    assert model.flops_per_token(seq_len=8) == 6 * n + 12 * 2 * C * 8


def test_shard_units_are_the_blocks_and_class_attributes():
    model = small_model()
    assert model.shard_units() == list(model.transformer.h)
    assert GPT.model_type == "lmforge-gpt" and GPT.config_class is GPTConfig


def test_meta_device_model_can_be_materialised():
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32))
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.allclose(model.rope_cos, small_model().rope_cos)
    logits, _ = model(torch.randint(0, VOCAB, (1, 8)))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("style", ["modern", "untied"])
def test_fused_loss_path_equals_logits_path(reduction, style):
    model = small_model(**STYLES[style]).train()
    idx, targets = torch.randint(0, VOCAB, (3, 20)), torch.randint(0, VOCAB, (3, 20))
    targets[:, :4] = -1
    loss, grads = loss_and_grads(model, idx, targets, ignore_index=-1, reduction=reduction)
    fused, grads_fused = loss_and_grads(
        model, idx, targets, ignore_index=-1, reduction=reduction, return_logits=False
    )
    assert torch.allclose(loss, fused, rtol=1e-5)
    for name in grads:
        assert torch.allclose(grads[name], grads_fused[name], atol=1e-6, rtol=1e-4), name
    logits, _ = model(idx)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
    assert torch.allclose(fused, expected, rtol=1e-5)
    with torch.no_grad():
        none, no_grad_loss = model(idx, targets, ignore_index=-1, reduction=reduction, return_logits=False)
    assert none is None and torch.allclose(no_grad_loss, fused, rtol=1e-5)


def test_cpu_linear_matches_f_linear_in_value_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(4, 70, 48, requires_grad=True)
    weight = torch.randn(96, 48, requires_grad=True)
    bias = torch.randn(96, requires_grad=True)
    grad_out = torch.randn(4, 70, 96)
    ours = cpu_kernels.linear(x, weight, bias)
    expected = F.linear(x, weight, bias)
    assert torch.allclose(ours, expected, atol=1e-5)
    for a, b in zip(
        torch.autograd.grad(ours, (x, weight, bias), grad_out),
        torch.autograd.grad(expected, (x, weight, bias), grad_out),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_kernels.linear(x, weight, bias).dtype == torch.bfloat16  # autocast still applies


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        small_model()(
            torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), reduction="max"
        )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"qk_norm": "yes"}, r"model\.qk_norm.*'yes'"),
        ({"bias": 1}, r"model\.bias"),
        ({"norm_eps": 0.0}, r"model\.norm_eps.*0\.0"),
        ({"norm_eps": -1e-6}, r"model\.norm_eps"),
        ({"norm_eps": float("nan")}, r"model\.norm_eps"),
        ({"rope_theta": 0}, r"model\.rope_theta.*0"),
        ({"rope_theta": "big"}, r"model\.rope_theta.*'big'"),
        ({"mlp_hidden": 0}, r"model\.mlp_hidden.*0"),
        ({"mlp": "relu"}, r"model\.mlp.*gelu_tanh.*relu"),
    ],
)
def test_invalid_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        GPTConfig(**{"vocab_size": 10, **overrides})


def test_new_fields_round_trip_through_dict():
    cfg = GPTConfig(vocab_size=50, qk_norm=True, norm_eps=1e-5, rope_theta=1e6, mlp_hidden=96)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    old = {
        k: v
        for k, v in GPTConfig(vocab_size=50).to_dict().items()
        if k not in ("qk_norm", "norm_eps", "rope_theta", "mlp_hidden")
    }
    assert GPTConfig.from_dict(old) == GPTConfig(vocab_size=50)  # checkpoints written before these fields


@pytest.mark.slow
def test_torch_compile_on_cpu_gives_the_same_loss():
    model = small_model().train()
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    eager, _ = loss_and_grads(model, idx, targets, return_logits=False)
    compiled = torch.compile(model)
    loss, _ = loss_and_grads(compiled, idx, targets, return_logits=False)
    assert torch.allclose(eager, loss, atol=1e-5)
