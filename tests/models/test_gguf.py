"""GGUF export: tiny random transformers models of each family, read back with gguf's own reader.

The slow test runs the exported files in llama.cpp (llama-cpp-python) and compares its greedy
tokens with transformers' on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize

from lmforge.errors import ConfigError, InputError
from lmforge.models.gguf import (
    SafetensorsDir,
    export_gguf_dir,
    llama3_rope_factors,
    permute_rope,
    pre_tokenizer_name,
    write_gguf,
)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB = 320  # more than the tokenizer's ids, so the padding rows are exercised
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TEXT = ("The quick brown fox jumps over the lazy dog. It's 2024 and we're testing 123 tokens.\n"
        "Le renard brun saute; 狐狸跳过了懒狗。 Numbers: 3.14159, 42, 1000000!\n") * 20
SMALL = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 256, "bos_token_id": 0, "eos_token_id": 1}
FAMILIES = {
    # name: (config class, model class, config overrides, expected GGUF arch, tokenizer regex)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"intermediate_size": 128, "rope_theta": 5e5}, "llama", LLAMA3_REGEX),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"intermediate_size": 96}, "qwen2", QWEN2_REGEX),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"intermediate_size": 128, "head_dim": 32}, "qwen3", QWEN2_REGEX),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2,
                   "norm_topk_prob": True, "head_dim": 16}, "qwen3moe", QWEN2_REGEX),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"intermediate_size": 128, "sliding_window": None},
                "llama", LLAMA3_REGEX),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2}, "llama", LLAMA3_REGEX),
}
LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
         "block_sparse_moe.gate": "ffn_gate_inp"}
EXPERT_PART = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}


def train_tokenizer(regex: str, out: Path) -> Path:
    """A byte-level BPE like Llama 3's or Qwen2's (Split regex + ByteLevel without its own regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=regex == LLAMA3_REGEX))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT.splitlines(), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": SPECIALS[0], "eos_token": SPECIALS[3], "chat_template": TEMPLATE, "add_bos_token": False,
    }))
    return out


def train_lmforge_tokenizer(out: Path) -> Path:
    """lmforge's own byte_bpe tokenizer: single digits split off, then GPT-2's regex."""
    from lmforge.tokenize.bpe import _new_tokenizer

    tok, trainer = _new_tokenizer()
    tok.train_from_iterator(TEXT.splitlines(), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    """Keyed by pre-tokenizer regex, plus "lmforge" for lmforge's byte_bpe."""
    root = tmp_path_factory.mktemp("tok")
    dirs = {regex: train_tokenizer(regex, root / str(i)) for i, regex in enumerate((LLAMA3_REGEX, QWEN2_REGEX))}
    return dirs | {"lmforge": train_lmforge_tokenizer(root / "lmforge")}


def build_model(family: str, seed: int = 0, **overrides):
    config_cls, model_cls, extra, _, _ = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**SMALL, **extra, **overrides})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # norms away from 1 and biases away from 0, so a mix-up shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer_dirs) -> dict[str, Path]:
    """Each family saved with save_pretrained, its tokenizer files beside the weights."""
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for family, (*_, regex) in FAMILIES.items():
        out = root / family
        build_model(family).save_pretrained(out)
        for f in tokenizer_dirs[regex].iterdir():
            (out / f.name).write_bytes(f.read_bytes())
        dirs[family] = out
    return dirs


def expected_tensors(hf_dir: Path, arch: str) -> dict[str, np.ndarray]:
    """The GGUF tensors (torch order, f32) the source should become, from an independent name table."""
    config = json.loads((hf_dir / "config.json").read_text())
    src = {k: v.float() for k, v in SafetensorsDir(hf_dir).items()}
    out, experts = {}, {}
    for name, t in src.items():
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = t
        elif name == "model.norm.weight":
            out["output_norm.weight"] = t
        elif name == "lm_head.weight":
            out["output.weight"] = t
        elif ".experts." in name:
            parts = name.split(".")  # model.layers.L.<mlp|block_sparse_moe>.experts.E.<part>.weight
            experts.setdefault((int(parts[2]), EXPERT_PART[parts[6]]), {})[int(parts[5])] = t
        else:
            parts = name.split(".")
            module, kind = ".".join(parts[3:-1]), parts[-1]
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = config["num_attention_heads" if "q_proj" in module else "num_key_value_heads"]
                t = t.reshape(heads, 2, -1, *t.shape[1:]).transpose(1, 2).reshape(t.shape)
            out[f"blk.{parts[2]}.{LAYER[module]}.{kind}"] = t
    for (layer, part), by_id in experts.items():
        out[f"blk.{layer}.ffn_{part}_exps.weight"] = torch.stack([by_id[e] for e in sorted(by_id)])
    return {k: v.numpy() for k, v in out.items()}


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def read_tensors(reader: gguf.GGUFReader) -> dict[str, tuple[gguf.GGMLQuantizationType, np.ndarray]]:
    return {t.name: (t.tensor_type, np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
        tuple(int(n) for n in reversed(t.shape)))) for t in reader.tensors}


def assert_close(name: str, got: np.ndarray, want: np.ndarray, qtype) -> None:
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        np.testing.assert_array_equal(got, want, err_msg=name)
    elif qtype == T.F16:
        np.testing.assert_allclose(got, want, rtol=2**-11, atol=1e-7, err_msg=name)
    elif qtype == T.BF16:
        np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-30, err_msg=name)
    else:  # q8_0: a block of 32 is round(x / d) * d, d = max|block| / 127 stored in f16 (127 * its error)
        blocks = want.reshape(-1, 32)
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= d * (0.5 + 127 * 2**-11) * 1.001 + 1e-12), name
        assert np.abs(got - want).max() > 0, "q8_0 stored the values exactly: not quantized?"


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tensors_read_back_equal_to_the_source(family, dtype, saved, tmp_path):
    arch = FAMILIES[family][3]
    path = export_gguf_dir(saved[family], tmp_path / "m.gguf", dtype)
    got = read_tensors(gguf.GGUFReader(path))
    want = expected_tensors(saved[family], arch)
    assert set(got) == set(want)
    T = gguf.GGMLQuantizationType
    for name, (qtype, values) in got.items():
        assert values.shape == want[name].shape, name
        vector_like = want[name].ndim == 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight"))
        assert (qtype == T.F32) if vector_like or dtype == "f32" else qtype == getattr(T, dtype.upper()), name
        assert_close(name, values, want[name], qtype)
    assert not list(tmp_path.glob(".*tmp")), "the temp file was left behind"


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata_and_tokenizer(family, saved, tmp_path):
    config = json.loads((saved[family] / "config.json").read_text())
    arch = FAMILIES[family][3]
    reader = gguf.GGUFReader(export_gguf_dir(saved[family], tmp_path / "m.gguf", "f16"))
    assert field(reader, "general.architecture") == arch
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    expected = {"block_count": 2, "embedding_length": 64, "context_length": 256,
                "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": head_dim,
                "attention.value_length": head_dim, "rope.dimension_count": head_dim, "vocab_size": VOCAB,
                "feed_forward_length": config["intermediate_size"]}
    for key, value in expected.items():
        assert field(reader, f"{arch}.{key}") == value, key
    assert field(reader, f"{arch}.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    if family in ("qwen3_moe", "mixtral"):
        assert field(reader, f"{arch}.expert_count") == 4
        assert field(reader, f"{arch}.expert_used_count") == 2
    if family == "qwen3_moe":
        assert field(reader, f"{arch}.expert_feed_forward_length") == 32

    spec = json.loads((saved[family] / "tokenizer.json").read_text())
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == ("llama-bpe" if FAMILIES[family][4] == LLAMA3_REGEX else "qwen2")
    assert len(tokens) == len(types) == VOCAB
    for tok, i in spec["model"]["vocab"].items():
        assert tokens[i] == tok
        assert types[i] == (gguf.TokenType.CONTROL if tok in SPECIALS else gguf.TokenType.NORMAL)
    n_tok = len(spec["model"]["vocab"])
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, VOCAB)]
    assert set(types[n_tok:]) == {gguf.TokenType.UNUSED}
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    assert field(reader, "tokenizer.ggml.merges") == merges
    assert field(reader, "tokenizer.ggml.bos_token_id") == spec["model"]["vocab"][SPECIALS[0]]
    assert field(reader, "tokenizer.ggml.eos_token_id") == spec["model"]["vocab"][SPECIALS[3]]
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert field(reader, "tokenizer.chat_template") == TEMPLATE


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_in_memory_fused_experts_give_the_same_file(family, saved, tmp_path):
    """transformers 5 fuses experts in memory (gate_up_proj, down_proj); the file must not change."""
    model = build_model(family)
    state = model.state_dict()
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    config = json.loads((saved[family] / "config.json").read_text())
    a = write_gguf(config, state, saved[family], tmp_path / "mem.gguf", "f32")
    b = export_gguf_dir(saved[family], tmp_path / "disk.gguf", "f32")
    got, want = read_tensors(gguf.GGUFReader(a)), read_tensors(gguf.GGUFReader(b))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name][1], want[name][1], err_msg=name)


def rope_scores(q: torch.Tensor, k: torch.Tensor, interleaved: bool, pos_q: int, pos_k: int) -> torch.Tensor:
    """q·k after rope at the given positions, pairing (i, i+d/2) or (2i, 2i+1)."""
    d = q.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))

    def rot(x, pos):
        cos, sin = torch.cos(pos * inv), torch.sin(pos * inv)
        a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2 :])
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    return (rot(q, pos_q) * rot(k, pos_k)).sum(-1)


def test_permuted_weights_under_interleaved_rope_give_the_same_attention_scores():
    torch.manual_seed(0)
    heads, d, hidden = 3, 8, 16
    wq, wk = (torch.randn(heads * d, hidden, dtype=torch.float64) for _ in range(2))
    x = torch.randn(hidden, dtype=torch.float64)

    def scores(wq, wk, interleaved):
        return rope_scores((wq @ x).view(heads, d), (wk @ x).view(heads, d), interleaved, 5, 2)

    torch.testing.assert_close(scores(permute_rope(wq, heads), permute_rope(wk, heads), True), scores(wq, wk, False))
    assert not torch.allclose(scores(wq, wk, True), scores(wq, wk, False)), "the two ropes should differ unpermuted"


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path, tokenizer_dirs):
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = build_model("llama", rope_parameters=rope)
    config = model.config.to_dict()
    reader = gguf.GGUFReader(write_gguf(config, model.state_dict(), tokenizer_dirs[LLAMA3_REGEX],
                                        tmp_path / "m.gguf", "f16"))
    freqs = read_tensors(reader)["rope_freqs.weight"]
    assert freqs[0] == gguf.GGMLQuantizationType.F32
    # transformers' own llama3 inverse frequencies are the default ones divided by these factors
    inv_freq, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    default = 1.0 / (5e5 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    np.testing.assert_allclose(freqs[1], (default / inv_freq).numpy(), rtol=1e-5)
    np.testing.assert_allclose(freqs[1], llama3_rope_factors({"rope": rope, "head_dim": 16}).numpy())


def test_linear_and_yarn_rope_scaling_metadata(tmp_path):
    model = build_model("qwen2")
    config = model.config.to_dict()
    for rope, scaling in ((({"rope_type": "linear", "factor": 2.0}), "linear"),
                          ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, "yarn")):
        config["rope_parameters"] = {"rope_theta": 1e6, **rope}
        reader = gguf.GGUFReader(write_gguf(config, model.state_dict(), None, tmp_path / "m.gguf", "f32"))
        assert field(reader, "qwen2.rope.scaling.type") == scaling
        assert field(reader, "qwen2.rope.scaling.factor") == rope["factor"]
        assert field(reader, "qwen2.rope.freq_base") == 1e6
    assert field(reader, "qwen2.rope.scaling.original_context_length") == 64


def test_old_style_rope_theta_is_read(tmp_path):
    model = build_model("llama")
    config = {k: v for k, v in model.config.to_dict().items() if k != "rope_parameters"}
    config |= {"rope_theta": 1234.0, "rope_scaling": None}
    reader = gguf.GGUFReader(write_gguf(config, model.state_dict(), None, tmp_path / "m.gguf", "f32"))
    assert field(reader, "llama.rope.freq_base") == 1234.0


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "longrope"),
    ({"hidden_act": "gelu"}, "silu"),
])
def test_unsupported_configs_are_refused_and_leave_no_file(change, message, tmp_path):
    model = build_model("llama")
    with pytest.raises(ConfigError, match=message):
        write_gguf(model.config.to_dict() | change, model.state_dict(), None, tmp_path / "m.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_qwen3_moe_without_normalised_top_k_is_refused(tmp_path):
    model = build_model("qwen3_moe", norm_topk_prob=False)
    with pytest.raises(ConfigError, match="norm_topk_prob"):
        write_gguf(model.config.to_dict(), model.state_dict(), None, tmp_path / "m.gguf", "f16")


def test_q8_0_keeps_rows_that_are_not_whole_blocks_in_f16(tmp_path):
    model = build_model("qwen2", intermediate_size=80)  # ffn_down rows are 80 long: 2.5 blocks of 32
    reader = gguf.GGUFReader(write_gguf(model.config.to_dict(), model.state_dict(), None, tmp_path / "m.gguf", "q8_0"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    model = build_model("qwen3", tie_word_embeddings=True)
    state = model.state_dict()
    assert "lm_head.weight" in state
    reader = gguf.GGUFReader(write_gguf(model.config.to_dict(), state, None, tmp_path / "m.gguf", "f32"))
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


class FailingMapping(dict):
    """A state dict whose last tensor cannot be read, as a truncated shard would be."""

    def __getitem__(self, name):
        if name == list(self)[-1]:
            raise OSError("disk went away")
        return super().__getitem__(name)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    model = build_model("llama")
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous export")
    with pytest.raises(OSError, match="disk went away"):
        write_gguf(model.config.to_dict(), FailingMapping(model.state_dict()), None, out, "f16")
    assert out.read_bytes() == b"previous export"
    assert [f.name for f in tmp_path.iterdir()] == ["m.gguf"]


def test_sharded_safetensors_export_like_a_single_file(saved, tmp_path):
    model = build_model("qwen2")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a = read_tensors(gguf.GGUFReader(export_gguf_dir(tmp_path / "sharded", tmp_path / "a.gguf", "f32",
                                                     tokenizer_dir=saved["qwen2"])))
    b = read_tensors(gguf.GGUFReader(export_gguf_dir(saved["qwen2"], tmp_path / "b.gguf", "f32")))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)


def test_a_pickled_checkpoint_is_not_read(tmp_path, saved):
    (tmp_path / "config.json").write_bytes((saved["llama"] / "config.json").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InputError, match="pickled"):
        export_gguf_dir(tmp_path, tmp_path / "m.gguf")


def test_pre_tokenizer_names():
    def spec(*steps):
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": list(steps)}}

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    no_regex = dict(byte_level, use_regex=False)
    split = {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False}
    digits = {"type": "Split", "pattern": {"Regex": r"\p{Nd}"}, "behavior": "Isolated", "invert": False}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    assert pre_tokenizer_name(spec(split, no_regex)) == "qwen2"
    assert pre_tokenizer_name(spec(dict(split, pattern={"Regex": LLAMA3_REGEX}), no_regex)) == "llama-bpe"
    assert pre_tokenizer_name(spec(digits, byte_level)) == "smollm"
    with pytest.raises(ConfigError, match="pre-tokenizer"):
        pre_tokenizer_name(spec(dict(split, pattern={"Regex": r"\w+"}), no_regex))
    with pytest.raises(ConfigError, match="pre-tokenizer"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})


def test_lmforge_byte_bpe_tokenizer_exports(tmp_path, tokenizer_dirs):
    """lmforge's own byte_bpe tokenizer (digit split + GPT-2 regex) maps to llama.cpp's "smollm"."""
    spec = json.loads((tokenizer_dirs["lmforge"] / "tokenizer.json").read_text())
    model = build_model("llama", vocab_size=len(spec["model"]["vocab"]) + 31)
    reader = gguf.GGUFReader(write_gguf(model.config.to_dict(), model.state_dict(), tokenizer_dirs["lmforge"],
                                        tmp_path / "m.gguf", "f16"))
    assert field(reader, "tokenizer.ggml.pre") == "smollm"
    types = field(reader, "tokenizer.ggml.token_type")
    assert [types[a["id"]] for a in spec["added_tokens"]] == [gguf.TokenType.CONTROL] * len(spec["added_tokens"])


# --- llama.cpp -------------------------------------------------------------------------------

PROMPTS = [[5, 17, 200, 33], [3, 3, 3, 3], [250, 11, 90, 2], [100, 101, 102, 103]]


def wide_margin_model(family: str):
    """Random weights with large logits (init 0.1, lm_head x10), so greedy rarely meets a near-tie."""
    model = build_model(family, seed=1, hidden_size=128, num_attention_heads=4, initializer_range=0.1)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return model


def llama_cpp_model(path: Path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (lmforge[bench])")
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, n_batch=64, logits_all=True, verbose=False)


def llama_cpp_greedy(llm, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """n greedy tokens after `prompt` (no EOS stop) and the logits after the prompt's last token."""
    out = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            break
    return out, np.array(llm.scores[len(prompt) - 1])


def transformers_greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """n greedy tokens and, per step, the gap between the best and second-best logit."""
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    margins = [float(s[0].topk(2).values.diff().abs()) for s in out.scores]
    return out.sequences[0, len(prompt):].tolist(), margins


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_greedy_tokens_equal_transformers(family, tmp_path, tokenizer_dirs):
    """f32 GGUF in llama.cpp: the same 16 greedy ids as transformers.

    llama.cpp keeps its KV cache in f16, so logits agree to ~1e-3 of their range; a step whose
    top-2 logits (in transformers) are closer than that may legitimately go either way, and the
    sequences are compared up to it. Every prompt must get past its first few tokens.
    """
    model = wide_margin_model(family)
    path = write_gguf(model.config.to_dict(), model.state_dict(), tokenizer_dirs[FAMILIES[family][4]],
                      tmp_path / "m.gguf", "f32")
    llm = llama_cpp_model(path)
    full = 0
    for prompt in PROMPTS:
        want, margins = transformers_greedy(model, prompt, 16)
        got, logits = llama_cpp_greedy(llm, prompt, 16)
        hf_logits = model(torch.tensor([prompt])).logits[0, -1].detach().numpy()
        scale = np.abs(hf_logits).max()
        np.testing.assert_allclose(logits, hf_logits, rtol=1e-3, atol=2e-3 * scale)
        split = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), None)
        full += split is None
        if split is not None:
            assert margins[split] < 2e-3 * scale and split >= 1, (prompt, got, want, margins[split])
    assert full >= len(PROMPTS) - 1


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_llama_cpp_runs_reduced_precision_files(dtype, tmp_path, tokenizer_dirs):
    """Smaller dtypes: llama.cpp's logits stay near transformers' (q8_0 also rounds activations)."""
    model = wide_margin_model("llama")
    path = write_gguf(model.config.to_dict(), model.state_dict(), tokenizer_dirs[LLAMA3_REGEX],
                      tmp_path / "m.gguf", dtype)
    llm = llama_cpp_model(path)
    for prompt in PROMPTS:
        _, logits = llama_cpp_greedy(llm, prompt, 1)
        hf_logits = model(torch.tensor([prompt])).logits[0, -1].detach().numpy()
        tolerance = {"f16": 5e-3, "bf16": 3e-2, "q8_0": 8e-2}[dtype]
        assert np.abs(logits - hf_logits).max() < tolerance * np.abs(hf_logits).max()
        assert np.corrcoef(logits, hf_logits)[0, 1] > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("key", [LLAMA3_REGEX, QWEN2_REGEX, "lmforge"], ids=["llama-bpe", "qwen2", "lmforge"])
def test_llama_cpp_tokenizes_like_the_tokenizer_json(key, tmp_path, tokenizer_dirs):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_dirs[key] / "tokenizer.json"))
    model = build_model("llama", vocab_size=hf.get_vocab_size() + 31)
    path = write_gguf(model.config.to_dict(), model.state_dict(), tokenizer_dirs[key], tmp_path / "m.gguf", "f16")
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (lmforge[bench])")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in ["The quick brown fox jumps over the lazy dog.", "It's 2024: we're testing 123456 tokens!\n\n  x",
                 "狐狸跳过了懒狗。 3.14159", "<|im_start|>user\nhi<|im_end|>"]:
        ids = hf.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert llm.detokenize(ids, special=True).decode() == text
