from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from lmforge.errors import ConfigError
from lmforge.models.bert import BERT_PRESETS, BertConfig, BertForPretraining, bert_config_from_preset

VOCAB = 300


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(seed: int = 0, **overrides) -> BertForPretraining:
    torch.manual_seed(seed)
    cfg = BertConfig(**{"vocab_size": VOCAB, "max_position": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides})
    return BertForPretraining(cfg).eval()


def batch(B: int = 3, T: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    types = torch.zeros_like(ids)
    types[:, T // 2 :] = 1
    return ids, types, torch.ones_like(ids)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip():
    cfg = BertConfig(vocab_size=1000, n_embd=64, n_head=4)
    assert cfg.intermediate == 256  # 4 * n_embd when not given
    assert BertConfig(vocab_size=1000, n_embd=64, n_head=4, intermediate=0).intermediate == 256
    assert BertConfig(vocab_size=1000, n_embd=64, n_head=4, intermediate=100).intermediate == 100
    assert BertConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_head": 3}, "model.n_embd (256) must be divisible by model.n_head (3)"),
        ({"n_layer": 0}, "model.n_layer must be a positive integer (got 0)"),
        ({"n_embd": 12.5}, "model.n_embd must be a positive integer (got 12.5)"),
        ({"dropout": 1.0}, "model.dropout must be in [0, 1) (got 1.0)"),
        ({"attn_dropout": -0.1}, "model.attn_dropout must be in [0, 1) (got -0.1)"),
        ({"layer_norm_eps": 0}, "model.layer_norm_eps must be a positive number (got 0)"),
        ({"pad_id": 5000}, "model.pad_id must be a token id in [0, 1000) (got 5000)"),
        ({"type_vocab_size": True}, "model.type_vocab_size must be a positive integer (got True)"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        BertConfig(vocab_size=1000, **overrides)
    assert str(err.value) == message


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['n_heads'\]"):
        BertConfig.from_dict({"vocab_size": 10, "n_heads": 2})
    with pytest.raises(ConfigError, match="model.vocab_size is required"):
        BertConfig.from_dict({"n_head": 2})


def test_presets():
    base = bert_config_from_preset("bert-base", 30522)
    assert (base.n_layer, base.n_head, base.n_embd, base.intermediate) == (12, 12, 768, 3072)
    tiny = bert_config_from_preset("bert-tiny", 1000, max_position=128)
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.max_position) == (2, 2, 128, 128)
    assert set(BERT_PRESETS) == {"bert-tiny", "bert-mini", "bert-base"}
    with pytest.raises(ConfigError, match="unknown model preset 'bert-huge'; allowed"):
        bert_config_from_preset("bert-huge", 1000)
    # BERT-base's published size: 110M parameters with its 30522-token vocabulary.
    assert 109e6 < BertForPretraining(base).num_params(exclude_embeddings=False) < 111e6


# --------------------------------------------------------------------------- forward


def test_output_shapes_and_gathered_head():
    model = small_model()
    ids, types, mask = batch()
    mlm, nsp = model(ids, types, mask)
    assert mlm.shape == (3, 12, VOCAB)
    assert nsp.shape == (3, 2)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 3] = positions[2, 0] = positions[2, 7] = True
    gathered, nsp2 = model(ids, types, mask, mlm_positions=positions)
    assert gathered.shape == (3, VOCAB)
    assert torch.allclose(gathered, mlm[positions], atol=1e-6)
    assert torch.allclose(nsp2, nsp)


def test_padding_does_not_change_real_tokens():
    model = small_model()
    ids, types, mask = batch(B=2, T=10)
    mlm, nsp = model(ids, types, mask)
    pad = torch.zeros(2, 6, dtype=torch.long)  # pad_id 0, attention 0
    mlm_p, nsp_p = model(torch.cat([ids, pad], 1), torch.cat([types, pad], 1), torch.cat([mask, pad], 1))
    assert torch.allclose(mlm_p[:, :10], mlm, atol=1e-5)
    assert torch.allclose(nsp_p, nsp, atol=1e-5)
    # without the mask the padding is attended to and everything moves
    mlm_u, _ = model(torch.cat([ids, pad], 1), torch.cat([types, pad], 1))
    assert not torch.allclose(mlm_u[:, :10], mlm, atol=1e-3)


def test_attention_is_bidirectional_and_segments_matter():
    model = small_model()
    ids, types, mask = batch(B=1, T=12)
    changed = ids.clone()
    changed[0, 11] = (changed[0, 11] + 1) % VOCAB
    a, _ = model(ids, types, mask)
    b, _ = model(changed, types, mask)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)  # the first token sees the last
    c, _ = model(ids, torch.zeros_like(types), mask)
    assert not torch.allclose(a, c, atol=1e-4)


def test_too_long_sequence_is_refused():
    model = small_model()
    with pytest.raises(ValueError, match="sequence of 65 tokens exceeds max_position 64"):
        model(torch.ones(1, 65, dtype=torch.long))


# --------------------------------------------------------------------------- init, counting


def test_init_is_huggingface_like_and_decoder_is_tied():
    torch.manual_seed(0)
    model = BertForPretraining(bert_config_from_preset("bert-tiny", 2000))
    assert model.decoder.weight is model.embeddings.word.weight
    assert torch.all(model.embeddings.word.weight[0] == 0)  # the pad row
    assert abs(model.layers[0].fc.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.layers[1].fc.bias == 0) and torch.all(model.decoder.bias == 0)
    assert torch.all(model.layers[1].ln_ffn.weight == 1) and torch.all(model.mlm_ln.bias == 0)
    # near-uniform predictions at init: the MLM loss starts at about log(V)
    ids = torch.randint(1, 2000, (4, 64))
    mlm, nsp = model.eval()(ids)
    loss = F.cross_entropy(mlm.flatten(0, 1), torch.randint(1, 2000, (4 * 64,)))
    assert abs(loss.item() - math.log(2000)) < 0.3
    assert abs(F.cross_entropy(nsp, torch.tensor([0, 1, 0, 1])).item() - math.log(2)) < 0.1


def test_num_params_and_flops():
    model = small_model()
    C, inner, L, V = 32, 128, 2, VOCAB
    embeddings = V * C + 64 * C + 2 * C
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(exclude_embeddings=False) == total
    assert model.num_params() == total - embeddings
    matmuls = L * (4 * C * C + 2 * C * inner) + C * C + V * C
    assert model.flops_per_token(16, mlm_fraction=1.0) == 6 * matmuls + 12 * L * C * 16
    encoder = L * (4 * C * C + 2 * C * inner)
    assert model.flops_per_token(16) == int(6 * (encoder + 0.15 * (C * C + V * C)) + 12 * L * C * 16)
    with pytest.raises(ValueError):
        model.flops_per_token(0)


def test_shard_units_are_the_encoder_layers():
    model = small_model(n_layer=3)
    units = model.shard_units()
    assert len(units) == 3 and all(u is layer for u, layer in zip(units, model.layers, strict=True))


# --------------------------------------------------------------------------- training features


def _loss_and_grads(model: BertForPretraining) -> tuple[float, dict[str, torch.Tensor]]:
    ids, types, mask = batch(B=2, T=16)
    mask[1, 12:] = 0
    model.zero_grad()
    torch.manual_seed(123)  # the same dropout masks in both runs
    mlm, nsp = model(ids, types, mask)
    loss = F.cross_entropy(mlm.flatten(0, 1), ids.flatten()) + F.cross_entropy(nsp, torch.tensor([0, 1]))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_recomputes_and_gives_the_same_gradients():
    model = small_model(dropout=0.1, attn_dropout=0.1).train()
    calls = []
    model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    plain_loss, plain = _loss_and_grads(model)
    assert len(calls) == 1
    model.checkpoint_activations = True
    ckpt_loss, ckpt = _loss_and_grads(model)
    assert len(calls) == 3  # forward, then recomputed in backward
    assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6)
    for name, g in plain.items():
        assert torch.allclose(ckpt[name], g, atol=1e-6), name
    model.eval()  # not in eval mode: no backward, nothing to save memory for
    calls.clear()
    model(*batch())
    assert len(calls) == 1


def test_safetensors_round_trip_keeps_the_tie(tmp_path):
    model = small_model(seed=1)
    with torch.no_grad():
        model.decoder.bias.normal_()
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    fresh = small_model(seed=2)
    missing, unexpected = load_model(fresh, str(path))
    assert not missing and not unexpected
    assert fresh.decoder.weight is fresh.embeddings.word.weight
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ids, types, mask = batch()
    assert torch.equal(model(ids, types, mask)[0], fresh(ids, types, mask)[0])
