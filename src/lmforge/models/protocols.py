"""What a model can do, declared in one place and asked with `isinstance`.

Training, fine-tuning, serving and export each need to know a few things about the model in
hand: does it generate (a KV cache), does it pool a sentence (an encoder), is it a task head on
an lmforge backbone, can it be written as an lmforge checkpoint. The answers are structural
protocols here rather than `hasattr` probes scattered over the callers, so a new model class
learns what it must provide from this file, and a caller's question has one spelling.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class LmforgeModel(Protocol):
    """A model lmforge saves as `model.safetensors` + `config.json` (GPT, BERT): its class names its
    `model_type` and rebuilds from `config_class.from_dict(config.to_dict())`."""

    model_type: ClassVar[str]
    config: Any


@runtime_checkable
class CausalLM(Protocol):
    """A decoder that generates with a KV cache (lmforge's GPT)."""

    config: Any

    def new_kv_cache(self) -> Any: ...

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Encoder(Protocol):
    """A bidirectional encoder whose pretrained pooler turns the [CLS] state into a sentence vector (BERT)."""

    config: Any

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def pooled(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasBackbone(Protocol):
    """A task model built on an lmforge backbone (classifier, tagger, causal-LM adapter): saved as
    safetensors + finetune.json, never as a Hugging Face directory."""

    backbone: nn.Module


@runtime_checkable
class SavesPretrained(Protocol):
    """A Hugging Face model (or a peft wrapper around one): it writes its own directory."""

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> Any: ...


@runtime_checkable
class MergesAdapters(Protocol):
    """A model carrying LoRA adapters (peft) that can fold them into plain weights."""

    def merge_and_unload(self) -> nn.Module: ...


@runtime_checkable
class CountsFlops(Protocol):
    """A model that knows its training FLOPs per token, for MFU."""

    def flops_per_token(self, seq_len: int) -> int: ...


@runtime_checkable
class CheckpointsActivations(Protocol):
    """A model that can recompute block activations in the backward pass to save memory."""

    checkpoint_activations: bool


def is_hf_model(model: nn.Module) -> bool:
    """Whether `model` is saved the Hugging Face way rather than as an lmforge checkpoint or task head."""
    return isinstance(model, SavesPretrained) and not isinstance(model, HasBackbone | LmforgeModel)
