from __future__ import annotations

import json
import math
import pydoc_data.topics
import struct

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lmforge.config import validate
from lmforge.errors import ConfigError, InputError, UserError
from lmforge.evaluate.perplexity import perplexity
from lmforge.models.gpt import GPT, GPTConfig, config_from_preset
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.tokenize.encode import encode_documents
from lmforge.train.checkpoint import load_checkpoint, save_checkpoint
from lmforge.train.objectives import CausalLM, EvalWindows
from lmforge.train.optim import build_optimizers
from lmforge.train.pretrain import PretrainConfig, lr_at, pretrain

CHINESE = [
    "今天天气很好，我们一起去公园散步吧。公园里有很多人在跑步、下棋和唱歌。",
    "机器学习是人工智能的一个分支，它让计算机从数据中自动学习规律，而不需要人手写每一条规则。",
    "语言模型读过大量的文本以后，就能根据前面的文字预测下一个字。",
    "长江是中国最长的河流，全长约六千三百公里，流经十一个省份。",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real bilingual text: Python's own documentation plus some Chinese, held out 5% for validation."""
    texts = list(pydoc_data.topics.topics.values()) + CHINESE * 25
    tok = load_tokenizer(
        train_tokenizer(texts, TokenizerConfig(vocab_size=512), tmp_path_factory.mktemp("tok"))
    )
    tokens = encode_documents(tok, texts, eos_id(tok))
    n_val = len(tokens) // 20
    return tokens[n_val:], tokens[:n_val], tok.get_vocab_size()


FAST = {
    "seq_len": 64,
    "batch_size": 16,
    "warmup_steps": 10,
    "eval_every": 0,
    "eval_batches": 4,
    "log_every": 25,
}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, val, vocab = data
    out = tmp_path_factory.mktemp("run")
    seen: list[tuple[int, float]] = []
    cfg = PretrainConfig(steps=150, **FAST)
    result = pretrain(cfg, train, val, vocab, out, on_step=lambda s, loss: seen.append((s, loss)))
    return result, out, seen


def test_pretraining_reduces_loss_and_perplexity(trained):
    result, _, _ = trained
    losses = [loss for _, loss in result.train_losses]
    assert result.steps == 150 and len(losses) == 150
    assert abs(losses[0] - math.log(512)) < 0.3  # starts near uniform
    assert np.mean(losses[-10:]) < losses[0] - 1.5
    assert result.val_ppl_after < 0.25 * result.val_ppl_before
    assert result.tokens_per_second > 0 and result.seconds > 0


def test_on_step_sees_every_step(trained):
    result, _, seen = trained
    assert seen == result.train_losses
    assert [s for s, _ in seen] == list(range(1, 151))


def test_log_jsonl_records_training_and_validation(trained):
    _, out, _ = trained
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 25, 50, 75, 100, 125, 150]
    for r in train_records:
        assert set(r) >= {"step", "loss", "lr", "tokens_per_s", "elapsed"}
    assert train_records[-1]["lr"] == pytest.approx(3e-4)
    val = [r for r in records if "val" in r]
    assert [r["step"] for r in val] == [0, 150]
    assert val[-1]["val"]["lm"] == pytest.approx(math.log(trained[0].val_ppl_after))


def test_final_checkpoint_reproduces_reported_perplexity(trained, data):
    result, out, _ = trained
    _, val, _ = data
    assert result.checkpoint == out / "checkpoint"
    model = load_checkpoint(result.checkpoint)
    source, objective = EvalWindows(val, 64, 16, seed=0), CausalLM()
    with torch.no_grad():
        batches = [source.micro_batch(i) for i in range(4)]
        nll = sum(float(objective.sums(model, b)["lm"]) for b in batches)
    tokens = sum(objective.counts(b)["lm"] for b in batches)
    assert math.exp(nll / tokens) == pytest.approx(result.val_ppl_after, rel=1e-4)
    meta = json.loads((result.checkpoint / "config.json").read_text())
    assert meta["extra"]["steps"] == 150 and meta["extra"]["pretrain"]["seq_len"] == 64


def test_same_seed_gives_identical_losses(data, tmp_path):
    train, val, vocab = data
    cfg = PretrainConfig(steps=12, **{**FAST, "log_every": 5})
    a = pretrain(cfg, train, val, vocab, tmp_path / "a")
    b = pretrain(cfg, train, val, vocab, tmp_path / "b")
    assert a.train_losses == b.train_losses
    c = pretrain(cfg.model_copy(update={"seed": 1}), train, val, vocab, tmp_path / "c")
    assert c.train_losses != a.train_losses


def test_model_overrides_and_block_size(data, tmp_path):
    train, val, vocab = data
    cfg = PretrainConfig(
        steps=2, model={"preset": "tiny", "n_layer": 1, "pos": "learned"}, **{**FAST, "seq_len": 160}
    )
    result = pretrain(cfg, train, val, vocab, tmp_path)
    model_cfg = load_checkpoint(result.checkpoint).config
    assert (model_cfg.n_layer, model_cfg.pos, model_cfg.block_size) == (1, "learned", 160)
    with pytest.raises(ConfigError, match="block_size"):
        pretrain(cfg.model_copy(update={"model": cfg.model.model_copy(update={"block_size": 32})}), train, val, vocab,
                 tmp_path)


def test_short_or_bad_data_is_a_clear_user_error(data, tmp_path):
    train, val, vocab = data
    cfg = PretrainConfig(steps=1, **FAST)
    with pytest.raises(UserError, match=r"train_tokens has 65 tokens.*66"):
        pretrain(cfg, train[:65], val, vocab, tmp_path)
    with pytest.raises(UserError, match="val_tokens"):
        pretrain(cfg, train, val[:10], vocab, tmp_path)
    with pytest.raises(UserError, match="token id"):
        pretrain(cfg, train, val, 100, tmp_path)


@pytest.mark.parametrize(
    ("data_", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1}, "lr"),
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"preset": "huge"}, "preset"),
        ({"model": {"preset": "huge"}}, "model.preset"),
        ({"model": {"n_layr": 4}}, "model.n_layr"),
        ({"model": {"n_layer": 0}}, "model.n_layer"),
        ({"arch": "bert", "model": {"rope_theta": 1e4}}, "model.rope_theta"),
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr"),
    ],
)
def test_pretrain_config_errors_name_the_field(data_, field):
    with pytest.raises(ValidationError):
        PretrainConfig(**data_)
    with pytest.raises(ConfigError, match=field):
        validate(PretrainConfig, data_, where="pretrain")


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = PretrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4)


def test_weight_decay_applies_only_to_matmul_weights():
    model = GPT(config_from_preset("tiny", 300))
    (opt,) = build_optimizers(model, PretrainConfig(), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert any(p is model.transformer.wte.weight for p in no_decay["params"])
    assert all(p is not model.transformer.wte.weight for p in decay["params"])
    assert any(p is model.transformer.ln_f.weight for p in no_decay["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_params(exclude_embeddings=False)


# ------------------------------------------------------------------ checkpoints and perplexity


@pytest.mark.parametrize(
    "overrides", [{}, {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}]
)
@pytest.mark.parametrize("tied", [True, False])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, overrides, tied):
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=200, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_embeddings=tied, **overrides
    )
    model = GPT(cfg).eval()
    save_checkpoint(model, cfg, tmp_path / "ckpt", extra={"note": "hi"})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == cfg
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tied
    idx = torch.randint(0, 200, (2, 16))
    assert torch.equal(model(idx)[0], loaded(idx)[0])


def test_checkpoint_files_contain_no_pickle(tmp_path):
    cfg = GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=16)
    out = save_checkpoint(GPT(cfg), cfg, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    raw = (out / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header then raw tensor bytes
    stored = {"transformer.wte.weight", "lm_head.weight"} & set(header)
    assert len(stored) == 1  # tied embeddings are stored once
    assert b"\x80\x04\x95" not in raw[: 8 + header_len]  # no pickle protocol-4 frame
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_type"] == "lmforge-gpt" and meta["n_embd"] == 16
    # saving again over an existing checkpoint replaces it and leaves no temporary directory behind
    save_checkpoint(GPT(cfg), cfg, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_load_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="missing-ckpt"):
        load_checkpoint(tmp_path / "missing-ckpt")
    cfg = GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=16)
    out = save_checkpoint(GPT(cfg), cfg, tmp_path / "broken-ckpt")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match="broken-ckpt"):
        load_checkpoint(out)
    (out / "config.json").write_text("{")
    with pytest.raises(InputError, match="broken-ckpt"):
        load_checkpoint(out)


def test_perplexity_is_deterministic_and_restores_train_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    model.train()
    tokens = np.random.default_rng(0).integers(0, 50, 1000).astype(np.uint16)
    a = perplexity(model, tokens, seq_len=16, batch_size=4, max_batches=3)
    b = perplexity(model, tokens, seq_len=16, batch_size=4, max_batches=3)
    assert a == b  # eval mode: dropout is off
    assert model.training
    assert 40 < a < 60  # an untrained model is close to uniform over 50 tokens
    with pytest.raises(UserError, match="17"):
        perplexity(model, tokens[:16], seq_len=16)
