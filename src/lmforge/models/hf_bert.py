"""Move BERT weights between lmforge and Hugging Face `transformers` directories.

Export writes what `BertForPreTraining.from_pretrained` expects (config.json, model.safetensors,
tokenizer files), so `AutoModel`, `AutoModelForMaskedLM` and `AutoTokenizer` load it offline.
Import reads `BertForPreTraining`, `BertForMaskedLM` or bare `BertModel` directories; only
safetensors, because unpickling a `.bin` file can run arbitrary code.

The one layout difference is lmforge's fused query/key/value projection: export splits it into
HF's three Linear layers and import concatenates them back, rows in q, k, v order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import ConfigError, InputError, require
from lmforge.models.bert import BertConfig, BertForPretraining
from lmforge.models.hf import read_hf_json, read_hf_weights, save_hf_dir, weight_files
from lmforge.models.sizes import check_against_weights

logger = logging.getLogger(__name__)
# BertConfig field -> the config.json key it comes from, so size errors name the user's key
HF_FIELDS = {"n_layer": "num_hidden_layers", "n_embd": "hidden_size", "intermediate": "intermediate_size",
             "max_position": "max_position_embeddings", "n_head": "num_attention_heads"}


def _name_map(n_layer: int) -> dict[str, str]:
    """lmforge parameter name -> HF name, for everything but the fused qkv and the tied decoder weight."""
    names = {
        "embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
        "embeddings.position.weight": "bert.embeddings.position_embeddings.weight",
        "embeddings.token_type.weight": "bert.embeddings.token_type_embeddings.weight",
        "embeddings.ln.weight": "bert.embeddings.LayerNorm.weight",
        "embeddings.ln.bias": "bert.embeddings.LayerNorm.bias",
        "mlm_dense.weight": "cls.predictions.transform.dense.weight",
        "mlm_dense.bias": "cls.predictions.transform.dense.bias",
        "mlm_ln.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_ln.bias": "cls.predictions.transform.LayerNorm.bias",
        "decoder.bias": "cls.predictions.bias",
        "pooler.weight": "bert.pooler.dense.weight",
        "pooler.bias": "bert.pooler.dense.bias",
        "nsp.weight": "cls.seq_relationship.weight",
        "nsp.bias": "cls.seq_relationship.bias",
    }
    for i in range(n_layer):
        ours, hf = f"layers.{i}", f"bert.encoder.layer.{i}"
        for mine, theirs in (
            ("attn_out", "attention.output.dense"),
            ("ln_attn", "attention.output.LayerNorm"),
            ("fc", "intermediate.dense"),
            ("fc_out", "output.dense"),
            ("ln_ffn", "output.LayerNorm"),
        ):
            for p in ("weight", "bias"):
                names[f"{ours}.{mine}.{p}"] = f"{hf}.{theirs}.{p}"
    return names


def _hf_config(config: BertConfig) -> Any:
    transformers = require("transformers", "train")
    return transformers.BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=config.intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attn_dropout,
        max_position_embeddings=config.max_position,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_id,
        architectures=["BertForPreTraining"],
    )


def hf_state_dict(model: BertForPretraining) -> dict[str, torch.Tensor]:
    """The model's weights under HF's names, float32 on CPU (without the tied decoder weight)."""
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {hf: ours[name] for name, hf in _name_map(model.config.n_layer).items()}
    for i in range(model.config.n_layer):
        for p in ("weight", "bias"):
            q, k, v = ours[f"layers.{i}.qkv.{p}"].chunk(3, dim=0)
            for part, t in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"bert.encoder.layer.{i}.attention.self.{part}.{p}"] = t.contiguous()
    return out


def export_bert_hf(model: BertForPretraining, tokenizer_dir: str | Path | None, out_dir: str | Path) -> Path:
    """Write a `transformers` BertForPreTraining directory; readers never see a half-written one."""
    transformers = require("transformers", "train")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    hf = transformers.BertForPreTraining(_hf_config(model.config))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # Only the tied decoder weight may be absent: HF re-ties it to the word embeddings.
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}, (
        missing, unexpected,
    )
    out = save_hf_dir(hf, tokenizer_dir, out, model.config.max_position)
    logger.info("exported BERT (%d layers, %d dim) to %s", model.config.n_layer, model.config.n_embd, out)
    return out


# --------------------------------------------------------------------------- import


def _read_config(path: Path) -> BertConfig:
    file = path / "config.json"
    raw = read_hf_json(file)
    if raw.get("model_type") != "bert":
        raise InputError(f"{file} is not a BERT config (model_type must be 'bert', got {raw.get('model_type')!r})")
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
        raise InputError(f"{file}: hidden_act must be 'gelu' for lmforge's BERT (got {act!r})")
    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise InputError(f"{file}: position_embedding_type must be 'absolute' (got {pos!r})")
    if raw.get("is_decoder"):
        raise InputError(f"{file}: is_decoder must be false; lmforge's BERT is a bidirectional encoder")
    try:
        return BertConfig(
            vocab_size=raw["vocab_size"], max_position=raw.get("max_position_embeddings", 512),
            n_layer=raw["num_hidden_layers"], n_head=raw["num_attention_heads"], n_embd=raw["hidden_size"],
            intermediate=raw.get("intermediate_size"), dropout=raw.get("hidden_dropout_prob", 0.1),
            attn_dropout=raw.get("attention_probs_dropout_prob", 0.1),
            type_vocab_size=raw.get("type_vocab_size", 2), layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            pad_id=raw.get("pad_token_id") or 0,
        )
    except KeyError as exc:
        raise InputError(f"{file} lacks the field {exc.args[0]!r}") from None
    except ConfigError as exc:
        raise InputError(f"{file} describes a model lmforge cannot build: {exc}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    tensors = read_hf_weights(path)
    # Old TF conversions name LayerNorm parameters gamma/beta; a bare BertModel has no "bert." prefix.
    renamed = {}
    bare = not any(k.startswith(("bert.", "cls.")) for k in tensors)
    for key, t in tensors.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[f"bert.{key}" if bare else key] = t
    return renamed


def import_bert_hf(path: str | Path) -> BertForPretraining:
    """Load a HF BERT directory into lmforge's model; heads the checkpoint lacks keep their fresh init."""
    path = Path(path)
    config = _read_config(path)
    check_against_weights(config, weight_files(path), where=str(path / "config.json"), field_names=HF_FIELDS)
    hf = _read_weights(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # heads missing from the checkpoint get the same init every time
        model = BertForPretraining(config)
    state = model.state_dict()
    used, fresh = set(), []

    def take(ours: str, tensor: torch.Tensor, source: str) -> None:
        if tuple(tensor.shape) != tuple(state[ours].shape):
            raise InputError(
                f"{path}: {source} has shape {tuple(tensor.shape)} but config.json implies {tuple(state[ours].shape)}"
            )
        state[ours] = tensor.to(state[ours].dtype)

    for ours, theirs in _name_map(config.n_layer).items():
        if ours == "decoder.bias" and theirs not in hf:
            theirs = "cls.predictions.decoder.bias"  # some exports keep only the decoder's copy
        if theirs in hf:
            take(ours, hf[theirs], theirs)
            used.add(theirs)
        else:
            fresh.append(ours)
    for i in range(config.n_layer):
        for p in ("weight", "bias"):
            parts = [f"bert.encoder.layer.{i}.attention.self.{n}.{p}" for n in ("query", "key", "value")]
            absent = [n for n in parts if n not in hf]
            if absent:
                raise InputError(f"{path} is missing encoder weights such as {absent[0]!r}")
            take(f"layers.{i}.qkv.{p}", torch.cat([hf[n] for n in parts], dim=0), parts[0])
            used.update(parts)
    encoder_fresh = [n for n in fresh if n.startswith(("embeddings.", "layers."))]
    if encoder_fresh:
        raise InputError(f"{path} is missing encoder weights such as {_name_map(config.n_layer)[encoder_fresh[0]]!r}")
    if fresh:
        logger.info("%s has no %s; they keep a fresh random init", path, ", ".join(fresh))
    decoder = hf.get("cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, hf["bert.embeddings.word_embeddings.weight"]):
        logger.warning("%s has an untied MLM decoder; lmforge ties it to the word embeddings", path)
    used.update({"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"})
    ignored = sorted(k for k in hf if k not in used and not k.endswith(("position_ids", "token_type_ids")))
    if ignored:
        logger.warning("%s: ignored %d weights lmforge's BERT has no place for, e.g. %s", path, len(ignored), ignored[0])
    state["decoder.weight"] = state["embeddings.word.weight"]  # tied: one tensor under both names
    model.load_state_dict(state, strict=True)
    return model.eval()
