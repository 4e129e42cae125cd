from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT, PRESETS, GPTConfig, config_from_preset

VOCAB = 300
GPT2_STYLE = {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}
STYLES = {"modern": {}, "gpt2": GPT2_STYLE, "untied": {"tie_embeddings": False}}


def small_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(
        **{"vocab_size": VOCAB, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}
    )
    return GPT(cfg).eval()


@pytest.mark.parametrize("style", STYLES)
def test_output_shapes(style):
    model = small_model(**STYLES[style])
    idx = torch.randint(0, VOCAB, (3, 17))
    logits, loss = model(idx)
    assert logits.shape == (3, 17, VOCAB)
    assert loss is None
    _, loss = model(idx, idx)
    assert loss.shape == ()


@pytest.mark.parametrize("style", STYLES)
def test_initial_loss_is_close_to_uniform(style):
    torch.manual_seed(1)
    model = GPT(config_from_preset("tiny", 1000, **STYLES[style])).eval()
    idx = torch.randint(0, 1000, (4, 64))
    targets = torch.randint(0, 1000, (4, 64))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(1000)) < 0.3


def test_loss_ignores_ignore_index_tokens():
    model = small_model()
    idx = torch.randint(0, VOCAB, (2, 10))
    targets = torch.randint(0, VOCAB, (2, 10))
    masked = targets.clone()
    masked[:, :5] = -1
    logits, loss = model(idx, masked, ignore_index=-1)
    expected = F.cross_entropy(logits[:, 5:].reshape(-1, VOCAB), targets[:, 5:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)
    _, full = model(idx, targets)
    assert not torch.allclose(full, loss)


@pytest.mark.parametrize("style", STYLES)
def test_attention_is_causal(style):
    model = small_model(**STYLES[style])
    a = torch.randint(0, VOCAB, (1, 20))
    b = a.clone()
    b[0, 12:] = (b[0, 12:] + 1) % VOCAB
    la, _ = model(a)
    lb, _ = model(b)
    assert torch.allclose(la[:, :12], lb[:, :12], atol=1e-5)
    assert not torch.allclose(la[:, 12:], lb[:, 12:], atol=1e-3)


@pytest.mark.parametrize("style", STYLES)
def test_kv_cache_matches_full_forward(style):
    model = small_model(**STYLES[style])
    idx = torch.randint(0, VOCAB, (2, 24))
    full, _ = model(idx)
    cache = model.new_kv_cache()
    parts = [model(idx[:, a:b], kv_cache=cache)[0] for a, b in [(0, 9), (9, 10), (10, 17), (17, 24)]]
    assert cache.length == 24
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_greedy_decoding_with_cache_equals_without_cache():
    model = small_model(seed=3)
    prompt = [5, 17, 42]
    no_cache = list(prompt)
    for _ in range(20):
        logits, _ = model(torch.tensor([no_cache]))
        no_cache.append(int(logits[0, -1].argmax()))
    cached = list(prompt)
    cache = model.new_kv_cache()
    logits, _ = model(torch.tensor([prompt]), kv_cache=cache)
    for _ in range(20):
        cached.append(int(logits[0, -1].argmax()))
        logits, _ = model(torch.tensor([[cached[-1]]]), kv_cache=cache)
    assert cached == no_cache


def test_sequence_longer_than_block_size_is_rejected():
    model = small_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_kv_cache()
    model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_tied_embeddings_share_one_tensor():
    tied = small_model()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = small_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert (
        untied.num_params(exclude_embeddings=False) == tied.num_params(exclude_embeddings=False) + VOCAB * 32
    )


def test_gpt2_124m_preset_has_the_published_size_and_flops():
    with torch.device("meta"):
        model = GPT(config_from_preset("gpt2-124m", 50257))
    assert model.num_params(exclude_embeddings=False) == 124_439_808  # GPT-2 small, tied
    non_embedding = 124_439_808 - 50257 * 768 - 1024 * 768
    assert model.num_params() == non_embedding
    # nanoGPT's estimate: 6 * (params without wpe) + 12 * L * C * T
    assert model.flops_per_token() == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024


def test_presets_have_the_documented_shapes():
    assert set(PRESETS) >= {"tiny", "small", "gpt2-124m", "gpt2-350m"}
    tiny = config_from_preset("tiny", 100)
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size) == (2, 4, 128, 128)
    assert (tiny.pos, tiny.norm, tiny.mlp) == ("rope", "rmsnorm", "swiglu")
    big = config_from_preset("gpt2-350m", 100)
    assert (big.n_layer, big.n_head, big.n_embd, big.block_size) == (24, 16, 1024, 1024)
    assert (big.pos, big.norm, big.mlp, big.bias) == ("learned", "layernorm", "gelu", True)
    assert config_from_preset("small", 100, n_layer=6, dropout=0.1).n_layer == 6


def test_residual_projections_get_a_smaller_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, n_layer=8, n_head=4, n_embd=256))
    block = model.transformer.h[0]
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(block.attn.c_proj.weight.std().item() - 0.02 / 4) < 0.0005
    assert abs(block.mlp.c_proj.weight.std().item() - 0.02 / 4) < 0.0005


def test_config_dict_round_trip():
    cfg = config_from_preset("gpt2-124m", 777, dropout=0.1)
    again = GPTConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.to_dict()["vocab_size"] == 777


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"n_embd": 130, "n_head": 4}, r"n_embd \(130\)"),
        ({"n_layer": 0}, r"n_layer.*0"),
        ({"pos": "alibi"}, r"pos.*alibi"),
        ({"norm": "batchnorm"}, r"norm.*batchnorm"),
        ({"mlp": "relu"}, r"mlp.*relu"),
        ({"dropout": 1.5}, r"dropout.*1\.5"),
        ({"n_embd": 36, "n_head": 4}, r"even"),
    ],
)
def test_config_errors_name_field_and_value(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        GPTConfig(**{"vocab_size": 10, **overrides})


def test_unknown_preset_and_override_are_config_errors():
    with pytest.raises(ConfigError, match="gpt2-124m.*tiny|tiny.*gpt2-124m"):
        config_from_preset("huge", 100)
    with pytest.raises(ConfigError, match="n_layers"):
        config_from_preset("tiny", 100, n_layers=3)
