"""GPT export to and import from transformers' Llama, Qwen3 and GPT-2 classes, all offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.collect.builtin import corpus_records
from lmforge.errors import ConfigError, InputError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.hf import export_gpt_hf, import_gpt_hf

transformers = pytest.importorskip("transformers")

VOCAB = 300
FAMILIES = {
    "LlamaForCausalLM": {"bias": True, "rope_theta": 5e5, "norm_eps": 1e-5},
    "Qwen3ForCausalLM": {"qk_norm": True, "tie_embeddings": False},
    "GPT2LMHeadModel": {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True},
}


def random_model(seed: int = 0, **overrides) -> GPT:
    """A tiny model whose norms and biases are not at their init values, so a mix-up shows."""
    torch.manual_seed(seed)
    cfg = {"vocab_size": VOCAB, "block_size": 48, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    out = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([out]))
        out.append(int(logits[0, -1].argmax()))
    return out[len(prompt) :]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits(family, tmp_path):
    model = random_model(**FAMILIES[family])
    out = export_gpt_hf(model, None, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == family
    idx = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(input_ids=idx, attention_mask=torch.ones_like(idx)).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    prompt = [5, 17, 42, 7]
    with torch.no_grad():
        generated = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, 4, dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
        )
    assert generated[0, 4:].tolist() == greedy(model, prompt, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_import_of_export_is_the_same_model(family, tmp_path):
    model = random_model(**FAMILIES[family])
    back = import_gpt_hf(export_gpt_hf(model, None, tmp_path / "hf"))
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert back.config.tie_embeddings == (back.lm_head.weight is back.transformer.wte.weight)


def test_bias_free_gpt2_layout_round_trips_through_zero_biases(tmp_path):
    model = random_model(pos="learned", norm="layernorm", mlp="gelu_tanh")
    out = export_gpt_hf(model, None, tmp_path / "hf")
    raw = json.loads((out / "config.json").read_text())
    assert raw["activation_function"] == "gelu_pytorch_tanh"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert (model(idx)[0] - hf(input_ids=idx).logits).abs().max() < 1e-4
    back = import_gpt_hf(out)
    assert back.config == model.config and not back.config.bias


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    texts = [r.text for name in ("peoples_daily", "python_docs") for r in corpus_records(name, 150)]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=VOCAB), tmp_path_factory.mktemp("tok"))


def test_tokenizer_is_copied_and_encodes_the_same(tokenizer_dir, tmp_path):
    from lmforge.tokenize.bpe import EOS_TOKEN, PAD_TOKEN, load_tokenizer

    ours = load_tokenizer(tokenizer_dir)
    out = export_gpt_hf(random_model(), tokenizer_dir, tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("Hello 世界! 价格是 12345 元 in 2024年。", "def f(x):\n    return x  # 注释"):
        assert theirs(text)["input_ids"] == ours.encode(text).ids
    eos, pad = ours.token_to_id(EOS_TOKEN), ours.token_to_id(PAD_TOKEN)
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (eos, pad)
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (eos, pad)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 48


def test_export_replaces_an_existing_directory(tmp_path):
    out = tmp_path / "hf"
    export_gpt_hf(random_model(seed=1), None, out)
    (out / "stale.txt").write_text("old")
    export_gpt_hf(random_model(seed=2), None, out)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temp siblings left behind
    assert torch.equal(import_gpt_hf(out).transformer.wte.weight, random_model(seed=2).transformer.wte.weight)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"norm": "layernorm"}, r"model\.norm=layernorm cannot be exported as LlamaForCausalLM: it needs pos=rope"),
        ({"pos": "learned", "norm": "layernorm", "mlp": "swiglu"}, r"model\.mlp=swiglu"),
        ({"pos": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": True}, r"model\.qk_norm=True"),
        ({"qk_norm": True, "bias": True}, r"model\.bias.*Qwen3"),
    ],
)
def test_unsupported_layouts_are_config_errors(overrides, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        export_gpt_hf(random_model(**overrides), None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def edit_config(path: Path, **changes) -> None:
    file = path / "config.json"
    raw = json.loads(file.read_text())
    raw.update(changes)
    file.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model_type": "gemma"}, r"'gemma' is not supported.*LlamaForCausalLM.*MixtralForCausalLM"),
        (
            {"rope_parameters": {"rope_type": "longrope", "factor": 2.0, "rope_theta": 1e4}},
            r"rope_type 'longrope' is not supported",
        ),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
         r"describes a model lmforge cannot build: model.rope_scaling.low_freq_factor is required"),
        ({"num_key_value_heads": 3}, r"n_head \(2\) must be a multiple of model.n_kv_head \(3\)"),
        ({"hidden_act": "gelu"}, r"hidden_act"),
    ],
)
def test_import_refuses_what_it_cannot_represent(changes, needle, tmp_path):
    out = export_gpt_hf(random_model(), None, tmp_path / "hf")
    edit_config(out, **changes)
    with pytest.raises(InputError, match=needle):
        import_gpt_hf(out)


def test_import_reads_legacy_rope_keys_and_refuses_pickles(tmp_path):
    out = export_gpt_hf(random_model(rope_theta=2e4), None, tmp_path / "hf")
    raw = json.loads((out / "config.json").read_text())
    del raw["rope_parameters"]
    raw.update(rope_theta=2e4, rope_scaling=None)  # how transformers 4.x wrote it
    (out / "config.json").write_text(json.dumps(raw))
    assert import_gpt_hf(out).config.rope_theta == 2e4
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"found pytorch_model\.bin.*safetensors only"):
        import_gpt_hf(out)
    with pytest.raises(InputError, match="config.json is missing"):
        import_gpt_hf(tmp_path / "nowhere")
