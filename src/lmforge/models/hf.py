"""Move decoder-only GPT weights between lmforge and Hugging Face `transformers` directories, offline.

Three lmforge layouts have an exact counterpart in transformers (same logits up to float32
rounding), and only those are exported or imported:

    pos      norm       mlp              qk_norm  bias   transformers class
    rope     rmsnorm    swiglu           false    any    LlamaForCausalLM
    rope     rmsnorm    swiglu           true     false  Qwen3ForCausalLM (its MLP has no biases)
    learned  layernorm  gelu, gelu_tanh  false    any    GPT2LMHeadModel

The layouts differ only in how weights are cut: lmforge computes q, k, v with one matmul and
SwiGLU's gate and up with another (rows [q; k; v] and [gate; up]), which Llama and Qwen3 split
into separate Linear layers; GPT-2's Conv1D stores every matmul weight transposed; GPT-2 always
has biases, so a bias-free model is written with zero biases (and a GPT-2 directory whose
biases are all exactly zero imports as bias-free, which computes the same function). Rotary
embeddings need no permutation: lmforge's `apply_rope` pairs dimension i with i + D/2 ("rotate
half"), as transformers' Llama and Qwen3 do, and Qwen3 normalises each head's q and k before
rope, as lmforge's `qk_norm` does.

Import reads safetensors only (unpickling a `.bin` file can run arbitrary code) and default
rope only (no rope scaling), full multi-head attention only (no grouped-query attention).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmforge.config import short_repr, shorten
from lmforge.errors import ConfigError, InputError, require
from lmforge.models.gpt import GPT, GPTConfig, default_mlp_hidden
from lmforge.models.sizes import check_against_weights
from lmforge.records import temp_sibling
from lmforge.tokenize.bpe import copy_tokenizer_files

logger = logging.getLogger(__name__)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}
SUPPORTED = (
    "pos=rope, norm=rmsnorm, mlp=swiglu (Llama; with qk_norm=true and bias=false: Qwen3) or "
    "pos=learned, norm=layernorm, mlp=gelu|gelu_tanh, qk_norm=false (GPT-2)"
)
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_GPT2_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# lmforge's GPTConfig field -> the config.json key it comes from, so size errors name the user's key
HF_FIELDS = {
    "gpt2": {"n_layer": "n_layer", "n_embd": "n_embd", "mlp_hidden": "n_inner", "block_size": "n_positions",
             "n_head": "n_head"},
    "llama": {"n_layer": "num_hidden_layers", "n_embd": "hidden_size", "mlp_hidden": "intermediate_size",
              "block_size": "max_position_embeddings", "n_head": "num_attention_heads"},
}
HF_FIELDS["qwen3"] = HF_FIELDS["llama"]


def hf_family(config: GPTConfig) -> str:
    """ "llama", "qwen3" or "gpt2": the transformers model this layout is, or a ConfigError."""
    modern = (config.pos, config.norm, config.mlp) == ("rope", "rmsnorm", "swiglu")
    classic = (config.pos, config.norm) == ("learned", "layernorm") and config.mlp in ("gelu", "gelu_tanh")
    if modern and not config.qk_norm:
        return "llama"
    if modern and not config.bias:
        return "qwen3"
    if modern:
        raise ConfigError(
            "model.bias must be false to export with model.qk_norm=true: Qwen3's MLP has no biases"
        )
    if classic and not config.qk_norm:
        return "gpt2"
    raise ConfigError(
        f"cannot export model.pos={config.pos}, model.norm={config.norm}, model.mlp={config.mlp}, "
        f"model.qk_norm={config.qk_norm} to transformers; supported: {SUPPORTED}"
    )


def _pairs(config: GPTConfig, family: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """(lmforge name, HF names, transposed) for every weight; several HF names = row blocks of ours."""
    pairs: list[tuple[str, tuple[str, ...], bool]] = []
    if family == "gpt2":  # nanoGPT kept GPT-2's names, so only the Conv1D transposes differ
        pairs += [
            ("transformer.wte.weight", ("transformer.wte.weight",), False),
            ("transformer.wpe.weight", ("transformer.wpe.weight",), False),
        ]
        for i in range(config.n_layer):
            h = f"transformer.h.{i}."
            for norm in ("ln_1", "ln_2"):
                pairs += [(h + f"{norm}.{p}", (h + f"{norm}.{p}",), False) for p in ("weight", "bias")]
            for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                pairs += [
                    (h + f"{lin}.weight", (h + f"{lin}.weight",), True),
                    (h + f"{lin}.bias", (h + f"{lin}.bias",), False),
                ]
        pairs += [(f"transformer.ln_f.{p}", (f"transformer.ln_f.{p}",), False) for p in ("weight", "bias")]
    else:
        pairs += [
            ("transformer.wte.weight", ("model.embed_tokens.weight",), False),
            ("transformer.ln_f.weight", ("model.norm.weight",), False),
        ]
        params = ("weight", "bias") if config.bias else ("weight",)
        for i in range(config.n_layer):
            h, m = f"transformer.h.{i}.", f"model.layers.{i}."
            pairs += [
                (h + "ln_1.weight", (m + "input_layernorm.weight",), False),
                (h + "ln_2.weight", (m + "post_attention_layernorm.weight",), False),
            ]
            for p in params:
                qkv = tuple(m + f"self_attn.{n}_proj.{p}" for n in "qkv")
                pairs += [
                    (h + f"attn.c_attn.{p}", qkv, False),
                    (h + f"attn.c_proj.{p}", (m + f"self_attn.o_proj.{p}",), False),
                    (h + f"mlp.c_fc.{p}", (m + f"mlp.gate_proj.{p}", m + f"mlp.up_proj.{p}"), False),
                    (h + f"mlp.c_proj.{p}", (m + f"mlp.down_proj.{p}",), False),
                ]
            if config.qk_norm:
                pairs += [
                    (h + f"attn.{n}_norm.weight", (m + f"self_attn.{n}_norm.weight",), False) for n in "qk"
                ]
    if not config.tie_embeddings:
        pairs.append(("lm_head.weight", ("lm_head.weight",), False))
    return pairs


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names, float32 on CPU (a tied lm_head left out)."""
    config = model.config
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, hf_names, transposed in _pairs(config, hf_family(config)):
        if name not in ours:  # a GPT-2 bias of a bias-free model: zeros compute the same function
            weight = ours[name.replace(".bias", ".weight")]
            ours[name] = weight.new_zeros(weight.size(0))
        for hf_name, part in zip(hf_names, ours[name].chunk(len(hf_names), dim=0), strict=True):
            out[hf_name] = (part.t() if transposed else part).contiguous()
    return out


def _special_ids(tokenizer_dir: Path | None) -> dict[str, int | None]:
    """bos/eos/pad ids from the tokenizer's special_tokens_map.json (None without a tokenizer)."""
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer_dir is None:
        return ids
    from lmforge.tokenize.bpe import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    roles_file = tokenizer_dir / "special_tokens_map.json"
    roles = json.loads(roles_file.read_text(encoding="utf-8")) if roles_file.is_file() else {}
    for role in ("bos", "eos", "pad"):
        token = roles.get(f"{role}_token")
        if isinstance(token, dict):  # transformers also writes {"content": ..., ...}
            token = token.get("content")
        if isinstance(token, str):
            ids[f"{role}_token_id"] = tok.token_to_id(token)
    return ids


def _hf_config(config: GPTConfig, family: str, ids: dict[str, int | None]) -> Any:
    transformers = require("transformers", "train")
    common = dict(
        vocab_size=config.vocab_size,
        tie_word_embeddings=config.tie_embeddings,
        architectures=[ARCHITECTURES[family]],
        **ids,
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.mlp_hidden_size,
            activation_function="gelu" if config.mlp == "gelu" else "gelu_pytorch_tanh",
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            layer_norm_epsilon=config.eps,
            **common,
        )
    modern = dict(
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_bias=config.bias,
        attention_dropout=0.0,
        **common,
    )
    if family == "llama":
        return transformers.LlamaConfig(mlp_bias=config.bias, **modern)
    return transformers.Qwen3Config(**modern)


def save_hf_dir(hf: Any, tokenizer_dir: str | Path | None, out_dir: str | Path, max_length: int) -> Path:
    """`save_pretrained` plus the tokenizer into a sibling temp dir, then swapped in whole: readers
    never see half an export, and an old export is replaced only once the new one is complete."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        hf.save_pretrained(tmp)  # safetensors: transformers 5 writes nothing else
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp, max_length)
        else:
            logger.info("no tokenizer_dir given: %s holds the model only", out)
        if out.exists():
            old = temp_sibling(out)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_gpt_hf(model: GPT, tokenizer_dir: str | Path | None, out_dir: str | Path) -> Path:
    """Write a directory `AutoModelForCausalLM.from_pretrained` loads offline with the same logits.

    Weights go to model.safetensors; the tokenizer files are copied when `tokenizer_dir` is given,
    and its bos/eos/pad ids go into config.json and generation_config.json. The directory is built
    beside `out_dir` and renamed into place, so readers never see half of it.
    """
    transformers = require("transformers", "train")
    config = model.config
    family = hf_family(config)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    ids = _special_ids(tok_dir)
    hf_config = _hf_config(config, family, ids)
    hf = getattr(transformers, ARCHITECTURES[family])(hf_config)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # Only the tied output weight may be absent: transformers re-ties it to the embeddings.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(
            f"weight names out of step with transformers: missing {missing}, unexpected {unexpected}"
        )
    hf.generation_config = transformers.GenerationConfig(**ids)

    out = save_hf_dir(hf, tok_dir, out_dir, config.block_size)
    logger.info(
        "exported %s (%d layers, %d dim) to %s", ARCHITECTURES[family], config.n_layer, config.n_embd, out
    )
    return out


# --------------------------------------------------------------------------- import


MAX_JSON_BYTES = 64 * 1024 * 1024  # config.json and the shard index; the largest real index is a few MB


def read_hf_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise InputError(f"no Hugging Face model at {file.parent}: {file.name} is missing")
    try:
        if file.stat().st_size > MAX_JSON_BYTES:
            raise InputError(f"{file} is too large ({file.stat().st_size:,} bytes) for a model's JSON file")
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, huge ints
        raise InputError(f"{file} is unreadable: {shorten(str(exc), 200)}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{file} is not a JSON object")
    return raw


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF model directory (one file or a sharded index); pickles refused."""
    if (path / _SINGLE).is_file():
        return [path / _SINGLE]
    if (path / _INDEX).is_file():
        weight_map = read_hf_json(path / _INDEX).get("weight_map", {})
        names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or not n.endswith(".safetensors")]
        if bad or not names:
            raise InputError(f"{path / _INDEX}: weight_map must name .safetensors files in {path} "
                             f"(got {short_repr(bad[0]) if bad else 'none'})")
        return [path / name for name in names]
    pickled = [name for name in _PICKLED if (path / name).exists()]
    found = f" (found {', '.join(pickled)})" if pickled else ""
    raise InputError(
        f"no {_SINGLE} in {path}{found}: lmforge loads safetensors only, since pickled weights can run "
        "code; convert with `model.save_pretrained(dir)` in transformers"
    )


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF model directory (one safetensors file or a sharded index); no pickles."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            tensors.update(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise InputError(f"cannot read {file}: {shorten(str(exc))}") from None
    return tensors


def _rope_theta(raw: dict[str, Any], file: Path) -> float:
    """The rope base; any rope scaling (linear, dynamic, yarn, llama3, ...) is refused."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if params and all(isinstance(v, dict) for v in params.values()):  # one entry per attention type
        variants = list(params.values())
        if any(v != variants[0] for v in variants):
            raise InputError(f"{file}: rope_parameters differ between layer types; lmforge uses one rope")
        params = variants[0]
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise InputError(
            f"{file}: rope_type {kind!r} is not supported; lmforge's GPT implements default rope only"
        )
    if params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
        raise InputError(f"{file}: partial_rotary_factor must be 1.0 (rope on every head dimension)")
    return float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))


def _config_from_hf(raw: dict[str, Any], hf: dict[str, torch.Tensor], file: Path) -> tuple[GPTConfig, str]:
    family = raw.get("model_type")
    if family not in ARCHITECTURES:
        supported = ", ".join(f"{k} ({v})" for k, v in ARCHITECTURES.items())
        raise InputError(f"{file}: model_type {family!r} is not supported; lmforge imports {supported}")

    def need(key: str) -> Any:
        if key not in raw:
            raise InputError(f"{file} lacks the field {key!r}")
        return raw[key]

    if family == "gpt2":
        act = raw.get("activation_function", "gelu_new")
        if act not in _GPT2_ACT:
            raise InputError(f"{file}: activation_function must be one of {sorted(_GPT2_ACT)} (got {act!r})")
        if not raw.get("scale_attn_weights", True) or raw.get("scale_attn_by_inverse_layer_idx"):
            raise InputError(f"{file}: attention scaling other than 1/sqrt(head_dim) is not supported")
        if raw.get("add_cross_attention"):
            raise InputError(f"{file}: add_cross_attention must be false (lmforge's GPT is decoder-only)")
        biases = [t for k, t in hf.items() if k.endswith(".bias") and t.dim() == 1]
        n_embd, eps = need("n_embd"), raw.get("layer_norm_epsilon", 1e-5)
        fields: dict[str, Any] = dict(
            block_size=need("n_positions"),
            n_layer=need("n_layer"),
            n_head=need("n_head"),
            n_embd=n_embd,
            mlp_hidden=raw.get("n_inner"),
            pos="learned",
            norm="layernorm",
            mlp=_GPT2_ACT[act],
            dropout=raw.get("resid_pdrop", 0.1),
            norm_eps=None if eps == 1e-5 else eps,
            bias=not all(bool((t == 0).all()) for t in biases),
            tie_embeddings=raw.get("tie_word_embeddings", True),
        )
    else:
        heads, hidden = need("num_attention_heads"), need("hidden_size")
        if raw.get("hidden_act", "silu") != "silu":
            raise InputError(f"{file}: hidden_act must be 'silu' (got {raw.get('hidden_act')!r})")
        if raw.get("num_key_value_heads") not in (None, heads):
            raise InputError(
                f"{file}: num_key_value_heads ({raw['num_key_value_heads']}) must equal num_attention_heads "
                f"({heads}); lmforge's GPT has no grouped-query attention"
            )
        if raw.get("head_dim") not in (None, hidden // heads):
            raise InputError(
                f"{file}: head_dim must be hidden_size / num_attention_heads ({hidden // heads})"
            )
        bias = bool(raw.get("attention_bias", False))
        if family == "llama" and bool(raw.get("mlp_bias", False)) != bias:
            raise InputError(
                f"{file}: attention_bias and mlp_bias must be equal (lmforge has one bias switch)"
            )
        if family == "qwen3" and bias:
            raise InputError(f"{file}: attention_bias must be false for Qwen3 import")
        if family == "qwen3" and (
            raw.get("use_sliding_window") or any(t != "full_attention" for t in raw.get("layer_types") or [])
        ):
            raise InputError(
                f"{file}: sliding-window attention is not supported; use_sliding_window must be false"
            )
        if raw.get("attention_dropout"):
            logger.info(
                "%s: attention_dropout %s is not carried over (lmforge's dropout is 0)",
                file,
                raw["attention_dropout"],
            )
        eps = raw.get("rms_norm_eps", 1e-6)
        fields = dict(
            block_size=need("max_position_embeddings"),
            n_layer=need("num_hidden_layers"),
            n_head=heads,
            n_embd=hidden,
            mlp_hidden=need("intermediate_size"),
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            qk_norm=family == "qwen3",
            bias=bias,
            norm_eps=None if eps == 1e-6 else eps,
            rope_theta=_rope_theta(raw, file),
            tie_embeddings=raw.get("tie_word_embeddings", False),
        )
    if fields["mlp_hidden"] == default_mlp_hidden(fields["n_embd"], fields["mlp"]):
        fields["mlp_hidden"] = None  # the default size: keep the config as lmforge itself writes it
    try:
        config = GPTConfig(vocab_size=need("vocab_size"), **fields)
    except ConfigError as exc:
        raise InputError(f"{file} describes a model lmforge cannot build: {exc}") from None
    return config, family


def _with_prefix(hf: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Bare GPT2Model / LlamaModel checkpoints name weights without the causal-LM prefix."""
    prefix = "transformer." if family == "gpt2" else "model."
    if any(k.startswith(prefix) for k in hf):
        return hf
    return {(k if k.startswith("lm_head.") else prefix + k): t for k, t in hf.items()}


def import_gpt_hf(path: str | Path) -> GPT:
    """Load a LlamaForCausalLM / Qwen3ForCausalLM / GPT2LMHeadModel directory as lmforge's GPT (eval mode)."""
    path = Path(path)
    file = path / "config.json"
    raw = read_hf_json(file)
    if raw.get("model_type") in ARCHITECTURES:  # read weights only for a model we can build
        # Sized from config.json and the safetensors headers before any tensor is read or allocated;
        # the config is built again with the weights (a GPT-2's all-zero biases make it bias-free).
        sized, family = _config_from_hf(raw, {}, file)
        check_against_weights(sized, weight_files(path), where=str(file), field_names=HF_FIELDS[family])
        hf = _with_prefix(read_hf_weights(path), raw["model_type"])
    else:
        hf = {}
    config, family = _config_from_hf(raw, hf, file)
    model = GPT(config)
    state = model.state_dict()
    for name, hf_names, transposed in _pairs(config, family):
        if name not in state:
            continue  # a bias of a GPT-2 model whose biases are all zero (imported bias-free)
        absent = [n for n in hf_names if n not in hf]
        if absent:
            raise InputError(f"{path} is missing the weight {absent[0]!r}")
        parts = [hf[n].t() if transposed else hf[n] for n in hf_names]
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise InputError(
                f"{path}: {hf_names[0]} has shape {tuple(parts[0].shape)} but config.json implies "
                f"{tuple(state[name].shape)} for {name}"
            )
        state[name] = tensor.to(torch.float32)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # one tensor under both names
    model.load_state_dict(state, strict=True)
    logger.info(
        "imported %s from %s (%.1fM parameters)", ARCHITECTURES[family], path, model.num_params(False) / 1e6
    )
    return model.eval()
