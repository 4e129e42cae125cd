"""Find the model and tokenizer behind a path a user gives to `generate` or `serve`.

Accepted: a run directory (`RUN/pretrain/checkpoint` + `RUN/tokenizer`), an lmforge checkpoint
(its tokenizer beside it or in the run above it), an instruction-tuned model saved by
`lmforge finetune`, or a Hugging Face directory of a family lmforge imports (Llama, Qwen2/2.5,
Qwen3, Qwen3-MoE, Qwen2-MoE, Mistral, Mixtral, GPT-2; see docs/models.md), which is then decoded by
lmforge's own engine. Which is which, and where the
tokenizer is, is decided by `lmforge.models.source`, the resolver fine-tuning and evaluation
share. Weights are read from safetensors only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError
from lmforge.tokenize.chat import chat_template_of, chat_tokens_of, tokenizer_config

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
    chat_tokens: dict[str, str] = field(default_factory=dict)  # bos_token / eos_token the template may write


def _generation_eos(model_dir: Path) -> Any:
    """generation_config.json's eos ids: chat models list their end-of-turn token there."""
    file = model_dir / "generation_config.json"
    if not file.is_file() or file.stat().st_size > 1 << 20:
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def load_generator(path: str | Path, tokenizer: str | Path | None = None, device: str = "auto",
                   name: str | None = None, dtype: str = "auto") -> LoadedModel:
    from lmforge.models.source import load_causal_lm, resolve_source
    from lmforge.tokenize.bpe import EOS_TOKEN, load_tokenizer

    source = resolve_source(path, tokenizer)
    p, meta = source.path, source.meta
    model = load_causal_lm(source, device, dtype).eval()
    tok_dir = source.require_tokenizer()
    tok = load_tokenizer(tok_dir)
    if tok.get_vocab_size() > model.config.vocab_size:
        raise InputError(f"tokenizer {tok_dir} has {tok.get_vocab_size()} tokens but the model at {p} "
                         f"was trained for {model.config.vocab_size}: they do not belong together")
    stop_ids = [i for i in (tok.token_to_id(EOS_TOKEN), tok.token_to_id(END_OF_TURN)) if i is not None]
    for hf_eos in (meta.get("eos_token_id"), _generation_eos(p)):  # Llama 3: <|eot_id|>; Qwen2.5: <|im_end|>
        for i in hf_eos if isinstance(hf_eos, list) else [hf_eos]:
            if isinstance(i, int) and i not in stop_ids:
                stop_ids.append(i)
    label = name or (p.parent.parent.name if p.name == "checkpoint" else p.name)
    logger.info("loaded %s (%s) on %s", label, p, next(model.parameters()).device)
    config = tokenizer_config(tok_dir)
    return LoadedModel(model, tok, label, p, chat_template_of(config), stop_ids, chat_tokens_of(config))
