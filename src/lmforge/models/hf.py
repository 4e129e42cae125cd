"""Move decoder weights between lmforge and Hugging Face `transformers` directories, offline.

Each supported family has an adapter in `lmforge.models.families` (found by config.json's
`model_type`) that says which GPTConfig a config.json means and which HF tensors each lmforge
tensor is cut from. This module does the rest once for all of them:

- import: read config.json, refuse what lmforge cannot compute exactly (naming the field), size
  the model from the config and the safetensors headers before allocating anything, build it
  on the meta device, then copy each stored tensor straight into its place in the final
  parameters in the requested dtype (`weights_io`: memory-mapped, copied once);
- export: the same mapping backwards, config.json written by transformers' own config class so
  `AutoModelForCausalLM.from_pretrained` reads it, weights as safetensors only.

Families: Llama 2/3.x, Qwen2/2.5, Qwen3, Qwen3-MoE, Qwen2-MoE, Mistral, Mixtral, GPT-2. Rotary
embeddings need no permutation: lmforge's `apply_rope` pairs dimension i with i + D/2 ("rotate
half"), as these families do in transformers. Pickled weights (`.bin`) are refused: unpickling
runs code.
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
from lmforge.models.families import FAMILIES, Family, Pair
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.sizes import check_against_weights
from lmforge.models.weights_io import WeightReader
from lmforge.records import temp_sibling
from lmforge.tokenize.bpe import copy_tokenizer_files

logger = logging.getLogger(__name__)

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def family_named(model_type: Any, file: Path | str = "config.json") -> Family:
    if model_type not in FAMILIES:
        supported = ", ".join(f"{k} ({f.architecture})" for k, f in FAMILIES.items())
        raise InputError(f"{file}: model_type {short_repr(model_type)} is not supported; lmforge imports {supported}")
    return FAMILIES[model_type](str(file))


def family_of(config: GPTConfig) -> Family:
    """The family whose layout `config` is (GPT-2, a MoE family, Qwen3, Qwen2, Mistral, else Llama)."""
    if config.pos == "learned":
        name = "gpt2"
    elif config.n_expert:
        name = "qwen2_moe" if config.moe_shared_hidden else "qwen3_moe" if config.qk_norm else "mixtral"
    elif config.qk_norm:
        name = "qwen3"
    elif config.attn_bias and not config.bias:
        name = "qwen2"
    elif config.sliding_window is not None:
        name = "mistral" if config.window_layers is None else "qwen2"
    else:
        name = "llama"
    family = FAMILIES[name]()
    family.check_exportable(config)
    return family


# --------------------------------------------------------------------------- export


def save_hf_dir(hf: Any, tokenizer_dir: str | Path | None, out_dir: str | Path, max_length: int) -> Path:
    """A transformers model's `save_pretrained` (safetensors only in transformers 5), written atomically."""
    return write_hf_dir(lambda tmp: hf.save_pretrained(tmp), tokenizer_dir, out_dir, max_length)


def hf_state_dict(model: GPT, family: Family | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under the family's HF names, on CPU in their own dtype (a tied lm_head left out)."""
    family = family or family_of(model.config)
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for pair in family.weights(model.config):
        tensor = ours.get(pair.ours)
        if tensor is None:  # a GPT-2 bias of a bias-free model: zeros compute the same function
            weight = ours[pair.ours.replace(".bias", ".weight")]
            tensor = weight.new_zeros(weight.size(0))
        for hf_name, part in _cut(pair, tensor, model.config):
            out[hf_name] = (part.t() if pair.transposed else part).contiguous()
    return out


def _cut(pair: Pair, tensor: torch.Tensor, config: GPTConfig) -> list[tuple[str, torch.Tensor]]:
    """Split one lmforge tensor into the HF tensors of `pair` (row blocks, per expert)."""
    groups = pair.groups()
    pieces = list(tensor.unbind(0)) if pair.experts else [tensor]
    out = []
    for names, piece in zip(groups, pieces, strict=True):
        out += zip(names, piece.split(_row_sizes(names, piece.size(0), config), dim=0), strict=True)
    return out


def _row_sizes(names: tuple[str, ...], rows: int, config: GPTConfig) -> list[int]:
    """q, k, v blocks are n_head and n_kv_head heads; every other fused block splits evenly."""
    if len(names) == 3 and names[0].endswith(("q_proj.weight", "q_proj.bias")):
        q, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        return [q, kv, kv]
    return [rows // len(names)] * len(names)


def hf_checkpoint(model: GPT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as transformers writes it, weights under HF names) for GGUF and other writers."""
    family = family_of(model.config)
    return _hf_config(model.config, family, {}).to_dict(), hf_state_dict(model, family)


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


def _hf_config(config: GPTConfig, family: Family, ids: dict[str, int | None]) -> Any:
    transformers = require("transformers", "train")
    fields = {**family.hf_config(config), "architectures": [family.architecture], **ids}
    return getattr(transformers, family.config_class)(**fields)


def write_hf_dir(write: Any, tokenizer_dir: str | Path | None, out_dir: str | Path, max_length: int) -> Path:
    """`save_pretrained` plus the tokenizer into a sibling temp dir, then swapped in whole: readers
    never see half an export, and an old export is replaced only once the new one is complete."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        write(tmp)
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

    Weights go to model.safetensors in the model's dtype; the tokenizer files are copied when
    `tokenizer_dir` is given, and its bos/eos/pad ids go into config.json and
    generation_config.json. The directory is built beside `out_dir` and renamed into place, so
    readers never see half of it.
    """
    from safetensors.torch import save_file

    transformers = require("transformers", "train")
    family = family_of(model.config)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    ids = _special_ids(tok_dir)
    hf_config = _hf_config(model.config, family, ids)
    hf_config.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")

    def write(tmp: Path) -> None:
        hf_config.save_pretrained(tmp)
        transformers.GenerationConfig(**ids).save_pretrained(tmp)
        save_file(hf_state_dict(model, family), str(tmp / _SINGLE), metadata={"format": "pt"})

    out = write_hf_dir(write, tok_dir, out_dir, model.config.block_size)
    logger.info("exported %s (%d layers, %d dim) to %s", family.architecture, model.config.n_layer,
                model.config.n_embd, out)
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


def import_gpt_hf(path: str | Path, dtype: str | torch.dtype | None = None) -> GPT:
    """Load a supported HF causal-LM directory as lmforge's GPT (eval mode), in `dtype` (default float32).

    Nothing is allocated before the config has been checked against the weights on disk and the
    memory there is; each stored tensor is then copied once, into its final place.
    """
    path = Path(path)
    file = path / "config.json"
    raw = read_hf_json(file)
    family = family_named(raw.get("model_type"), file)
    target = torch_dtype(dtype)
    fields = family.config_from_hf(raw)
    config = _build_config(fields, file)
    files = weight_files(path)
    check_against_weights(config, files, where=str(file), field_names=family.field_names,
                          bytes_per_element=target.itemsize, dtype_name=str(target).removeprefix("torch."))
    with WeightReader(files) as reader:
        names = _prefixed(reader, family)
        config = _build_config(family.refine(fields, _Renamed(reader, names)), file)  # GPT-2: zero biases
        with torch.device("meta"):
            model = GPT(config)
        model.to(target).to_empty(device="cpu")
        state = dict(model.named_parameters())
        for pair in family.weights(config):
            if pair.ours in state:  # absent: a bias of a GPT-2 model whose biases are all zero
                _load_pair(reader, names, pair, state[pair.ours], config, path)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    model.reset_rope()
    logger.info("imported %s from %s (%.1fM parameters, %s)", family.architecture, path,
                model.num_params(False) / 1e6, str(target).removeprefix("torch."))
    return model.eval()


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 (None), bfloat16 or float16, by name or as a torch dtype; a ConfigError otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)} (got {short_repr(dtype)})")
    return DTYPES[dtype]


def _build_config(fields: dict[str, Any], file: Path) -> GPTConfig:
    try:
        return GPTConfig(**fields)
    except (ConfigError, TypeError) as exc:
        raise InputError(f"{file} describes a model lmforge cannot build: {exc}") from None


def _prefixed(reader: WeightReader, family: Family) -> dict[str, str]:
    """HF name -> stored name: bare GPT2Model / LlamaModel checkpoints lack the causal-LM prefix."""
    prefix = "transformer." if family.model_type == "gpt2" else "model."
    stored = reader.names()
    if any(k.startswith(prefix) for k in stored):
        return {k: k for k in stored}
    return {(k if k.startswith("lm_head.") else prefix + k): k for k in stored}


class _Renamed:
    """A reader seen through HF names (for family.refine)."""

    def __init__(self, reader: WeightReader, names: dict[str, str]) -> None:
        self.reader, self.map = reader, names

    def names(self) -> list[str]:
        return list(self.map)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(self.map[name])

    def tensor(self, name: str) -> torch.Tensor:
        return self.reader.tensor(self.map[name])


@torch.no_grad()
def _load_pair(reader: WeightReader, names: dict[str, str], pair: Pair, dest: torch.Tensor,
               config: GPTConfig, path: Path) -> None:
    """Copy the pair's HF tensors into their row blocks (and expert slots) of `dest`."""
    slots = list(dest.unbind(0)) if pair.experts else [dest]
    for group, slot in zip(pair.groups(), slots, strict=True):
        absent = [n for n in group if n not in names]
        if absent:
            raise InputError(f"{path} is missing the weight {absent[0]!r}")
        blocks = slot.split(_row_sizes(group, slot.size(0), config), dim=0) if len(group) > 1 else [slot]
        for name, block in zip(group, blocks, strict=True):
            try:
                reader.copy_into(names[name], block, pair.transposed)
            except ValueError:
                want = tuple(reversed(block.shape)) if pair.transposed else tuple(block.shape)
                raise InputError(f"{path}: {name} has shape {reader.shape(names[name])} but config.json "
                                 f"implies {want} for {pair.ours}") from None
