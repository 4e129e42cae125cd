"""Find the model and tokenizer behind a path a user gives to `generate` or `serve`.

Accepted: a run directory (`RUN/pretrain/checkpoint` + `RUN/tokenizer`), an lmforge checkpoint
(its tokenizer beside it or in the run above it), an instruction-tuned model saved by
`lmforge finetune`, or a Hugging Face directory whose layout lmforge's GPT can hold (Llama,
Qwen3, GPT-2), which is then decoded by lmforge's own engine. Weights are read from
safetensors only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError

logger = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"


@dataclass
class LoadedModel:
    model: Any  # lmforge GPT, eval mode
    tokenizer: Any  # tokenizers.Tokenizer
    name: str
    path: Path
    chat_template: str | None = None
    stop_ids: list[int] = field(default_factory=list)  # end-of-text and end-of-turn ids


def _tokenizer_dir(model_dir: Path, given: str | Path | None) -> Path:
    if given is not None:
        return Path(given)
    for cand in (model_dir, model_dir.parent / "tokenizer", model_dir.parent.parent / "tokenizer"):
        if (cand / "tokenizer.json").is_file():
            return cand
    raise InputError(f"no tokenizer.json in {model_dir} or the run above it; pass --tokenizer DIR")


def _chat_template(tok_dir: Path) -> str | None:
    cfg = tok_dir / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # HF's named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _load_weights(path: Path, meta: dict[str, Any], device: str) -> Any:
    """The GPT at `path`: fine-tuned instruction model, lmforge checkpoint, or importable HF directory."""
    from lmforge.finetune.heads import HEAD_FILE, load_task_model
    from lmforge.train.checkpoint import load_checkpoint, resolve_device

    if (path / HEAD_FILE).is_file():
        model, info = load_task_model(path)
        if info.get("head") != "CausalLMAdapter":
            raise InputError(f"{path} is a fine-tuned {info.get('kind')} model; only causal LMs generate text")
        return model.backbone.to(resolve_device(device))
    model_type = str(meta.get("model_type", ""))
    if model_type.startswith("lmforge-"):
        model = load_checkpoint(path, device=device)
        if not hasattr(model, "new_kv_cache"):
            raise InputError(f"{path} holds a {model_type} encoder; only a GPT generates text")
        return model
    from lmforge.models.hf import import_gpt_hf

    return import_gpt_hf(path).to(resolve_device(device))


def load_generator(path: str | Path, tokenizer: str | Path | None = None, device: str = "auto",
                   name: str | None = None) -> LoadedModel:
    from lmforge.tokenize.bpe import EOS_TOKEN, load_tokenizer

    p = Path(path)
    if not p.exists():
        raise InputError(f"model path {p} does not exist")
    if (p / "pretrain" / "checkpoint").is_dir():  # a run directory
        p, tokenizer = p / "pretrain" / "checkpoint", tokenizer or p / "tokenizer"
    if not (p / "config.json").is_file():
        raise InputError(f"{p} is not a model directory (no config.json); give a checkpoint, run or HF directory")
    from lmforge.models.hf import read_hf_json

    meta = read_hf_json(p / "config.json")
    model = _load_weights(p, meta, device).eval()
    tok_dir = _tokenizer_dir(p, tokenizer)
    tok = load_tokenizer(tok_dir)
    if tok.get_vocab_size() > model.config.vocab_size:
        raise InputError(f"tokenizer {tok_dir} has {tok.get_vocab_size()} tokens but the model at {p} "
                         f"was trained for {model.config.vocab_size}: they do not belong together")
    stop_ids = [i for i in (tok.token_to_id(EOS_TOKEN), tok.token_to_id(END_OF_TURN)) if i is not None]
    hf_eos = meta.get("eos_token_id")
    for i in hf_eos if isinstance(hf_eos, list) else [hf_eos]:
        if isinstance(i, int) and i not in stop_ids:
            stop_ids.append(i)
    label = name or (p.parent.parent.name if p.name == "checkpoint" else p.name)
    logger.info("loaded %s (%s) on %s", label, p, next(model.parameters()).device)
    return LoadedModel(model, tok, label, p, _chat_template(tok_dir), stop_ids)
