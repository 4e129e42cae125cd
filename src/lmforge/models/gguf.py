"""Write Hugging Face-layout decoder checkpoints as GGUF files, so llama.cpp and Ollama run them.

The input is the pair every exporter here can produce: a config.json dict as transformers writes it
and a state dict under the Hugging Face names (`lmforge.models.hf.hf_checkpoint(model)`, or a saved
directory read by `export_gguf_dir`). Working on that layout keeps this module independent of
lmforge's model classes; the name tables come from the `gguf` package itself (MODEL_ARCH,
get_tensor_name_map), exactly as llama.cpp's convert_hf_to_gguf.py uses them.

    model_type               GGUF architecture   q/k rows permuted
    llama, mistral, mixtral  llama               yes
    qwen2, qwen3, qwen3_moe  qwen2, qwen3, qwen3moe   no

Why the permutation: transformers rotates dimension i with i + d/2 ("rotate half"), llama.cpp's
`llama` graph applies the original interleaved rope (pairs 2i, 2i+1), so convert_hf_to_gguf.py
reorders the rows of each q and k head (and their biases) to pair them that way. llama.cpp's qwen
graphs use NEOX rope, which is rotate-half already, so their weights go through unchanged.

MoE experts are stored per expert on disk (`...experts.E.gate_proj.weight`, Mixtral's `w1/w3/w2`)
and fused in transformers 5's memory (`experts.gate_up_proj`, `experts.down_proj`); both become
llama.cpp's stacked ffn_{gate,up,down}_exps tensors.

Tensors are converted and written one at a time: the header is laid out from shapes first and
each tensor is read from the mapping only when its bytes go to disk, so a lazy mapping (as
`export_gguf_dir` passes) never holds the whole model in memory.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lmforge.errors import ConfigError, InputError, require
from lmforge.records import atomic_path, read_json

logger = logging.getLogger(__name__)

DType = Literal["f32", "f16", "bf16", "q8_0"]
DTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")
ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "mixtral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3",
         "qwen3_moe": "QWEN3MOE"}
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
_QTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$")
_FUSED = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(gate_up_proj|down_proj)$")
_EXPERT_PART = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}
_SKIPPED = ("rotary_emb.inv_freq",)  # buffers, not weights
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "rms_norm_eps")

# tokenizer.json pre-tokenizer regexes -> llama.cpp's `tokenizer.ggml.pre` with the same regex
_SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen35",
}
_DIGIT_SPLITS = (r"\p{Nd}", r"\p{N}")
PRE_SUPPORTED = (
    "Split(Llama 3 / Qwen2 / Qwen3.5 regex) + ByteLevel(use_regex=false), ByteLevel(use_regex=true) "
    "(GPT-2), or a single-digit split + ByteLevel(use_regex=true) (lmforge's byte_bpe, SmolLM)"
)


@dataclass(frozen=True)
class _Planned:
    """One GGUF tensor: its name, torch-order shape, llama.cpp role, how to produce it, storage type."""

    name: str
    shape: tuple[int, ...]
    kind: Any  # gguf.MODEL_TENSOR
    load: Callable[[], torch.Tensor]
    qtype: Any = None  # gguf.GGMLQuantizationType, set once the file's dtype is known


def write_gguf(hf_config: dict, tensors: Mapping[str, torch.Tensor], tokenizer_dir: Path | None,
               out: Path, dtype: DType = "f16") -> Path:
    """Write `out` (atomically) from a config.json dict and Hugging Face-named tensors; returns it.

    f16/bf16/q8_0 keep 1-D tensors, norms and the MoE router in f32, as llama.cpp's converter does;
    q8_0 applies to matrices whose rows are a multiple of 32 long (others fall back to f16).
    Without `tokenizer_dir` the file has no vocabulary, which llama.cpp refuses to run.
    """
    gguf = require("gguf", "train")
    if dtype not in DTYPES:
        raise ConfigError(f"GGUF dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    cfg = _checked_config(hf_config)
    arch = getattr(gguf.MODEL_ARCH, ARCHS[cfg["model_type"]])
    plan = _plan_tensors(gguf, arch, cfg, tensors, dtype)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    _add_hparams(gguf, writer, cfg, dtype, Path(out).stem)
    if tokenizer_dir is not None:
        _add_tokenizer(gguf, writer, Path(tokenizer_dir), cfg)
    else:
        logger.warning("GGUF without a tokenizer: llama.cpp and Ollama need one to load the model")
    _write_streaming(gguf, writer, plan, Path(out))
    logger.info("wrote %s: %s, %d tensors, %s", out, gguf.MODEL_ARCH_NAMES[arch], len(plan), dtype)
    return Path(out)


def _write_streaming(gguf: Any, writer: Any, plan: list[_Planned], out: Path) -> None:
    """Header and tensor table from the planned shapes, then each tensor loaded, encoded and written alone."""
    for item in plan:
        block, size = gguf.GGML_QUANT_SIZES[item.qtype]
        nbytes = math.prod(item.shape) // block * size
        writer.add_tensor_info(item.name, item.shape, np.float32, nbytes, raw_dtype=item.qtype)
    with atomic_path(out) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for item in plan:
                writer.write_tensor_data(_encode(gguf, item))
        finally:
            writer.close()


def export_gguf_dir(hf_dir: Path, out: Path, dtype: DType = "f16", tokenizer_dir: Path | None = None) -> Path:
    """Convert a saved transformers directory (config.json + safetensors) to GGUF; returns `out`.

    Tensors are read lazily through safetensors (never pickle). The tokenizer comes from
    `tokenizer_dir`, else from `hf_dir` when it holds a tokenizer.json.
    """
    from lmforge.models.hf import read_hf_json

    hf_dir = Path(hf_dir)
    if tokenizer_dir is None and (hf_dir / "tokenizer.json").is_file():
        tokenizer_dir = hf_dir
    tensors = SafetensorsDir(hf_dir)
    try:
        return write_gguf(read_hf_json(hf_dir / "config.json"), tensors, tokenizer_dir, out, dtype)
    finally:
        tensors.close()


class SafetensorsDir(Mapping[str, torch.Tensor]):
    """The tensors of a model.safetensors file or sharded index, each read only when asked for.

    The files are those `models.hf.weight_files` accepts (shard names checked, pickles refused) and
    they are read through `models.weights_io.WeightReader`, as an import reads them.
    """

    def __init__(self, hf_dir: Path):
        from lmforge.models.hf import weight_files
        from lmforge.models.weights_io import WeightReader

        self._reader = WeightReader(weight_files(Path(hf_dir)))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._reader.tensor(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._reader.shape(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._reader.names())

    def __len__(self) -> int:
        return len(self._reader.names())

    def close(self) -> None:
        self._reader.close()


def _checked_config(hf_config: dict) -> dict:
    """The config with defaults filled in, or a ConfigError for what llama.cpp would compute differently."""
    cfg = {**hf_config, **(hf_config.get("text_config") or {})}  # a multimodal wrapper's text model
    kind = cfg.get("model_type")
    if kind not in ARCHS:
        raise ConfigError(f"cannot export model_type {kind!r} to GGUF; supported: {', '.join(ARCHS)}")
    if missing := [key for key in _REQUIRED if cfg.get(key) is None]:
        raise ConfigError(f"the {kind} config lacks {', '.join(missing)}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"GGUF export needs hidden_act silu, got {cfg['hidden_act']!r}")
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["n_expert"] = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if kind == "qwen3_moe":
        # llama.cpp's qwen3moe graph always renormalises the top-k weights and has no dense layers
        if not cfg.get("norm_topk_prob", False):
            raise ConfigError("llama.cpp's qwen3moe renormalises the top-k router weights: needs norm_topk_prob=true")
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            raise ConfigError("llama.cpp's qwen3moe needs every layer sparse (no mlp_only_layers, decoder_sparse_step 1)")
    cfg["rope"] = _rope_parameters(cfg)
    return cfg


def _rope_parameters(cfg: dict) -> dict:
    """transformers 5's `rope_parameters`, or the older rope_theta + rope_scaling, as one dict."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params = dict(params.get("full_attention", params))
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    return params


def _window(cfg: dict) -> int | None:
    """The sliding-attention window transformers applies, if any (Qwen only with use_sliding_window)."""
    window = cfg.get("sliding_window")
    if cfg["model_type"].startswith("qwen") and not cfg.get("use_sliding_window", False):
        return None
    return window if window and window < cfg.get("max_position_embeddings", window + 1) else None


def _add_hparams(gguf: Any, w: Any, cfg: dict, dtype: str, name: str) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    _add_rope(gguf, w, cfg)
    if cfg["n_expert"]:
        w.add_expert_count(cfg["n_expert"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        if cfg.get("moe_intermediate_size"):
            w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if (window := _window(cfg)) is not None:
        # llama.cpp's llama/qwen2 graphs attend to the whole context: outputs differ past the window
        logger.warning("sliding_window=%d is recorded, but llama.cpp's %s graph does not apply it",
                       window, cfg["model_type"])
        w.add_sliding_window(window)


def _add_rope(gguf: Any, w: Any, cfg: dict) -> None:
    """Rope base and scaling as convert_hf_to_gguf.py writes them (llama3 goes in a rope_freqs tensor)."""
    rope = cfg["rope"]
    w.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        orig = rope.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        w.add_rope_scaling_orig_ctx_len(int(orig))
        optional = {"attention_factor": w.add_rope_scaling_yarn_attn_factor,
                    "beta_fast": w.add_rope_scaling_yarn_beta_fast, "beta_slow": w.add_rope_scaling_yarn_beta_slow}
        for key, add in optional.items():
            if rope.get(key) is not None:
                add(float(rope[key]))
    elif kind == "llama3":
        if ARCHS[cfg["model_type"]] != "LLAMA":
            raise ConfigError(f"llama3 rope scaling is only supported by llama.cpp's llama graph, not {cfg['model_type']}")
    elif kind != "default":
        raise ConfigError(f"rope type {kind!r} has no GGUF export; supported: default, linear, yarn, llama3")


def llama3_rope_factors(cfg: dict) -> torch.Tensor:
    """The per-frequency divisors of Llama 3.1 rope scaling (llama.cpp's rope_freqs tensor)."""
    rope, dim = cfg["rope"], cfg["head_dim"]
    freqs = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen < old_ctx / high, torch.ones_like(freqs),
                      torch.where(wavelen > old_ctx / low, torch.full_like(freqs, factor), mid))
    return out.float()


def _plan_tensors(gguf: Any, arch: Any, cfg: dict, tensors: Mapping[str, torch.Tensor], dtype: str) -> list[_Planned]:
    """Every GGUF tensor in file order, with the load (and permute or stack) it needs, none run yet."""
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    shape_of = getattr(tensors, "shape_of", None) or (lambda n: tuple(tensors[n].shape))
    plan, experts = [], {}
    for hf_name in tensors:
        if hf_name.endswith(_SKIPPED) or (hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings")):
            continue
        if (m := _EXPERT.match(hf_name)) and m[3] in _EXPERT_PART:
            experts.setdefault((int(m[1]), _EXPERT_PART[m[3]]), {})[int(m[2])] = hf_name
            continue
        if m := _FUSED.match(hf_name):
            plan += _fused_experts(tmap, tensors, hf_name, int(m[1]), m[2], shape_of(hf_name))
            continue
        mapped = tmap.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConfigError(f"tensor {hf_name} has no place in GGUF architecture {gguf.MODEL_ARCH_NAMES[arch]}")
        load = _permuted(tensors, hf_name, cfg) if ARCHS[cfg["model_type"]] == "LLAMA" else _getter(tensors, hf_name)
        plan.append(_Planned(mapped[1], shape_of(hf_name), mapped[0], load))
    for (layer, part), by_id in sorted(experts.items()):
        plan.append(_stacked_experts(tmap, tensors, layer, part, by_id, cfg["n_expert"], shape_of))
    if cfg["rope"]["rope_type"] == "llama3":
        factors = llama3_rope_factors(cfg)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plan.append(_Planned(name, tuple(factors.shape), gguf.MODEL_TENSOR.ROPE_FREQS, lambda: factors))
    if not any(p.name == "token_embd.weight" for p in plan):
        raise ConfigError("the tensors hold no model.embed_tokens.weight")
    return [replace(p, qtype=_storage_type(gguf, p, dtype)) for p in plan]


def _getter(tensors: Mapping[str, torch.Tensor], name: str) -> Callable[[], torch.Tensor]:
    return lambda: tensors[name]


def _permuted(tensors: Mapping[str, torch.Tensor], name: str, cfg: dict) -> Callable[[], torch.Tensor]:
    """q/k rows reordered from rotate-half to interleaved pairs per head (llama.cpp's `llama` rope)."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        heads = cfg["num_attention_heads"]
    elif name.endswith(("k_proj.weight", "k_proj.bias")):
        heads = cfg["num_key_value_heads"]
    else:
        return _getter(tensors, name)
    return lambda: permute_rope(tensors[name], heads)


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from [x0..x(d/2-1), y0..] to [x0, y0, x1, y1, ...], as convert_hf_to_gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _stacked_experts(tmap: Any, tensors: Mapping[str, torch.Tensor], layer: int, part: str,
                     by_id: dict[int, str], n_expert: int, shape_of: Callable) -> _Planned:
    """Per-expert matrices of one layer stacked into llama.cpp's [expert, rows, cols] tensor."""
    if sorted(by_id) != list(range(n_expert)):
        raise ConfigError(f"layer {layer} has {part} weights for experts {sorted(by_id)}, expected {n_expert}")
    names = [by_id[e] for e in range(n_expert)]
    kind, name = _experts_name(tmap, layer, part)
    return _Planned(name, (n_expert, *shape_of(names[0])), kind,
                    lambda: torch.stack([tensors[n] for n in names]))


def _experts_name(tmap: Any, layer: int, part: str) -> tuple[Any, str]:
    """llama.cpp's stacked-experts tensor (role, name) for part gate/up/down of a layer."""
    return tmap.get_type_and_name(f"model.layers.{layer}.mlp.experts.{part}_proj.weight", try_suffixes=(".weight",))


def _fused_experts(tmap: Any, tensors: Mapping[str, torch.Tensor], hf_name: str, layer: int, which: str,
                   shape: tuple[int, ...]) -> list[_Planned]:
    """transformers 5's in-memory experts: gate_up_proj [E, 2F, H] (gate rows first), down_proj [E, H, F]."""
    def planned(part: str, shape: tuple[int, ...], load: Callable[[], torch.Tensor]) -> _Planned:
        kind, name = _experts_name(tmap, layer, part)
        return _Planned(name, shape, kind, load)

    if which == "down_proj":
        return [planned("down", shape, _getter(tensors, hf_name))]
    n, half, cols = shape[0], shape[1] // 2, shape[2]
    return [planned("gate", (n, half, cols), lambda: tensors[hf_name][:, :half]),
            planned("up", (n, half, cols), lambda: tensors[hf_name][:, half:])]


def _storage_type(gguf: Any, p: _Planned, dtype: str) -> Any:
    """llama.cpp's rule: vectors, norms and the router stay f32; q8_0 needs rows of whole 32-blocks."""
    T = gguf.GGMLQuantizationType
    keep_f32 = (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.ROPE_FREQS)
    if len(p.shape) <= 1 or p.name.endswith("_norm.weight") or p.kind in keep_f32 or not p.name.endswith(".weight"):
        return T.F32
    if dtype == "q8_0" and p.shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] != 0:
        logger.warning("%s: rows of %d are not whole q8_0 blocks, stored as f16", p.name, p.shape[-1])
        return T.F16
    return getattr(T, _QTYPES[dtype])


def _encode(gguf: Any, p: _Planned) -> np.ndarray:
    """The bytes (as a numpy array) of one planned tensor in its storage type."""
    T = gguf.GGMLQuantizationType
    t = p.load().detach().to("cpu").contiguous()
    if tuple(t.shape) != p.shape:
        raise ConfigError(f"{p.name}: got shape {tuple(t.shape)}, planned {p.shape}")
    if p.qtype == T.F32:
        return t.float().numpy()
    if p.qtype == T.F16:
        return t.to(torch.float16).numpy()
    if p.qtype == T.BF16:  # torch rounds to nearest even, as gguf.quants does
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
    return gguf.quants.quantize(t.float().numpy(), p.qtype)


# --- tokenizer -------------------------------------------------------------------------------


def _add_tokenizer(gguf: Any, w: Any, tokenizer_dir: Path, cfg: dict) -> None:
    """A byte-level BPE tokenizer.json as llama.cpp's "gpt2" vocabulary, specials and chat template."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{tokenizer_dir} holds no tokenizer.json")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if (spec.get("model") or {}).get("type") != "BPE":
        raise ConfigError(f"{path}: GGUF export needs a byte-level BPE tokenizer, got {spec['model'].get('type')}")
    tokens, types = token_table(gguf, spec, cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(spec))
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=cfg["vocab_size"])
    _fill_special_ids(special, tokenizer_dir, spec, cfg)
    # llama.cpp adds BOS by default for some pre-tokenizers; transformers adds it only when told to
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(w, quiet=True)


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` whose regex is the one in this tokenizer.json, or a ConfigError.

    lmforge's byte_bpe splits decimal digits (\\p{Nd}) where llama.cpp's "smollm" splits every
    numeric (\\p{N}); they differ only on characters such as "½" or "²". llama.cpp's "llama-bpe"
    also takes a pre-token found whole in the vocabulary without merging (Llama 3's
    ignore_merges=true); a Llama-3-regex tokenizer trained without that flag can differ there.
    """
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        raise ConfigError(f"no llama.cpp pre-tokenizer for {_describe(pre)}; supported: {PRE_SUPPORTED}")
    *first, _ = steps
    regex = steps[-1].get("use_regex", True)
    if not first and regex:
        return "gpt-2"
    if len(first) == 1 and regex and _splits_digits(first[0]):
        return "smollm"
    if len(first) == 1 and not regex and first[0].get("type") == "Split" and not first[0].get("invert"):
        name = _SPLIT_PRE.get((first[0].get("pattern") or {}).get("Regex"))
        if name and first[0].get("behavior") == "Isolated":
            return name
    raise ConfigError(f"no llama.cpp pre-tokenizer for {_describe(pre)}; supported: {PRE_SUPPORTED}")


def _splits_digits(step: dict) -> bool:
    if step.get("type") == "Digits":
        return bool(step.get("individual_digits"))
    return (step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert")
            and (step.get("pattern") or {}).get("Regex") in _DIGIT_SPLITS)


def _describe(pre: dict) -> str:
    return json.dumps(pre, ensure_ascii=False)[:300]


def token_table(gguf: Any, spec: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and types for ids 0..n_vocab-1; ids the tokenizer lacks become unused [PADi]."""
    by_id = {i: tok for tok, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= n_vocab:
        raise ConfigError(f"the tokenizer has id {max(by_id)}, but the model's vocab_size is {n_vocab}")
    T = gguf.TokenType
    tokens, types = [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        tokens.append(tok if tok is not None else f"[PAD{i}]")
        if tok is None:
            types.append(T.UNUSED)
        elif i not in added:
            types.append(T.NORMAL)
        elif added[i].get("special") or (tok.startswith("<|") and tok.endswith("|>")):
            types.append(T.CONTROL)
        else:
            types.append(T.USER_DEFINED)
    return tokens, [int(t) for t in types]


def _fill_special_ids(special: Any, tokenizer_dir: Path, spec: dict, cfg: dict) -> None:
    """bos/eos/pad/unk ids gguf's SpecialVocab missed: special_tokens_map.json, then the model config."""
    ids = {**spec["model"]["vocab"], **{a["content"]: a["id"] for a in spec.get("added_tokens", [])}}
    smap_path = tokenizer_dir / "special_tokens_map.json"
    smap = read_json(smap_path) if smap_path.is_file() else {}
    for typ in ("bos", "eos", "pad", "unk"):
        if typ in special.special_token_ids:
            continue
        entry = smap.get(f"{typ}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        tid = ids.get(content) if isinstance(content, str) else None
        if tid is None:
            tid = cfg.get(f"{typ}_token_id")
            tid = tid[0] if isinstance(tid, list) and tid else tid
        if isinstance(tid, int) and 0 <= tid < cfg["vocab_size"]:
            special.special_token_ids[typ] = tid
