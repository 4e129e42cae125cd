"""Build the model a fine-tuning run trains: a task head on an lmforge backbone (checkpoint or fresh),
or the matching `AutoModelFor*` class for a Hugging Face directory (the head is then HF's own), so
`from: path/to/bert-base-chinese` fine-tunes a downloaded checkpoint offline. Decoder families that
lmforge's GPT holds exactly (Llama, Qwen2/3, Qwen MoE, Mistral, Mixtral) are imported into it
instead, so they train with lmforge's kernels, LoRA on experts, and export back to HF or GGUF.

The heads themselves and their saved form live in `lmforge.models.heads`, where serving and
evaluation load them without importing fine-tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from lmforge.errors import InputError, UserError
from lmforge.models.heads import HF_AUTO, CausalLMAdapter, SequenceClassifier, TokenTagger
from lmforge.models.protocols import CausalLM
from lmforge.models.source import SourceKind, resolve_source


def _hf_task_model(kind: str, source: Path, labels: list[str], fresh: bool) -> nn.Module:
    import transformers

    from lmforge.models.sizes import check_hf_dir

    auto = getattr(transformers, HF_AUTO[kind])
    kwargs: dict[str, Any] = {}
    if kind != "instruction":
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {label: i for i, label in enumerate(labels)}}
    check_hf_dir(source)
    try:
        if fresh:
            return auto.from_config(transformers.AutoConfig.from_pretrained(str(source), **kwargs)).train()
        model = auto.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load {source} as {HF_AUTO[kind]}: {exc}") from None
    return model.train()


def _imports_natively(meta: dict[str, Any]) -> bool:
    """A decoder family lmforge's GPT holds exactly (GPT-2 keeps going through transformers' own classes)."""
    from lmforge.models.families import FAMILIES

    return meta.get("model_type") in FAMILIES and meta.get("model_type") != "gpt2"


def build_task_model(kind: str, source: str | Path | None, labels: list[str], dropout: float,
                     scratch: nn.Module | None = None, fresh: bool = False, pool: str = "auto",
                     window: int = 0, crf: bool = False) -> nn.Module:
    """The task model on the backbone at `source`, or on `scratch` (a fresh backbone).

    `fresh` keeps `source`'s architecture but not its weights: the from-scratch baseline. Whether
    the result is a Hugging Face model is asked of the model later (`models.protocols.is_hf_model`).
    `window` and `crf` shape an lmforge tagger's head (`models.heads.TokenTagger`); a Hugging Face
    token classifier keeps its own head, and its tags are decoded under the BIO rules instead.
    """
    resolved = None if source is None else resolve_source(source)
    native = resolved is not None and resolved.kind is SourceKind.HF and _imports_natively(resolved.meta)
    if resolved is not None and resolved.kind is SourceKind.HF and not native:
        return _hf_task_model(kind, resolved.path, labels, fresh)
    if resolved is not None and resolved.kind is SourceKind.TASK and kind == "instruction" \
            and resolved.meta.get("kind") == "instruction":  # SFT, then preference tuning: go on from the chat model
        from lmforge.models.heads import load_task_model

        tuned, _ = load_task_model(resolved.path)
        return CausalLMAdapter(type(tuned.backbone)(tuned.backbone.config) if fresh else tuned.backbone).train()
    if resolved is not None and resolved.kind not in (SourceKind.CHECKPOINT, SourceKind.HF):
        raise UserError(f"finetune.model.from: {resolved.path} is already a fine-tuned {resolved.meta.get('kind')} "
                        "model; give the pretrained checkpoint or Hugging Face directory it came from")
    if native:  # Llama, Qwen, Mistral, ... run as lmforge's own GPT: its Trainer, LoRA, engine, export
        from lmforge.models.hf import import_gpt_hf

        backbone = import_gpt_hf(resolved.path).train()
    elif resolved is not None:
        from lmforge.models.checkpoint_io import load_checkpoint

        backbone = load_checkpoint(resolved.path).train()
    else:
        backbone = scratch
    if fresh and backbone is not None:
        backbone = type(backbone)(backbone.config).train()
    if backbone is None:
        raise UserError("finetune: give model.from (a checkpoint or HF directory) or a model.preset to train from scratch")
    if kind == "instruction":
        if not isinstance(backbone, CausalLM):
            raise UserError("instruction tuning needs a causal LM (a GPT), not an encoder")
        return CausalLMAdapter(backbone)
    if kind == "classification":
        return SequenceClassifier(backbone, len(labels), dropout, pool)
    return TokenTagger(backbone, labels, dropout, window=window, crf=crf)
