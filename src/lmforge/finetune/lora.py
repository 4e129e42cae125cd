"""LoRA adapters for fine-tuning: low-rank updates on the attention and MLP projections (peft) and,
in a mixture of experts, on every expert's stacked weights (models.moe: one rank-r update per
expert, no dropout); the new task head trained in full. The adapters are merged back into the weights when the model is
saved (`models.heads.save_task_model`), so a LoRA-tuned model loads like any other."""

from __future__ import annotations

import logging

import torch

from lmforge.errors import ConfigError, UserError
from lmforge.finetune.config import LoraSettings

log = logging.getLogger(__name__)

# Projection names of lmforge's GPT and BERT and of common Hugging Face models.
KNOWN_PROJECTIONS = {"c_attn", "c_proj", "c_fc", "qkv", "proj", "fc1", "fc2", "query", "key", "value", "dense",
                     "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_qkv",
                     "attn_out", "ffn_in", "ffn_out"}
HEAD_NAMES = ("head", "classifier", "score")
EXPERT_WEIGHTS = ("gate_up", "down")  # lmforge's stacked MoE experts (models.moe)


def apply_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    from lmforge.errors import require

    require("peft", "train")
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    if targets is None:
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = sorted(names & KNOWN_PROJECTIONS)
        if not targets:
            raise UserError("finetune.lora.target_modules: found no known projection names; list them")
    # The task head is new, so it trains in full (an lm_head is not a task head: it stays tied and frozen).
    heads = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in HEAD_NAMES
             and isinstance(m, torch.nn.Linear)]
    lora = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, modules_to_save=heads or None)
    model = get_peft_model(model, lora)
    experts = _add_expert_lora(model, settings)  # after peft, which freezes every parameter it did not add
    _train_tagger_layers(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s%s: %.2fM trainable parameters", settings.r, targets,
             f" and the experts' {experts}" if experts else "", trainable / 1e6)
    return model


def _train_tagger_layers(model: torch.nn.Module) -> None:
    """A tagger's context layer and CRF are new like its output layer: trained in full, not frozen by peft."""
    from lmforge.models.heads import TokenTagger

    for module in model.modules():
        if isinstance(module, TokenTagger):
            for layer in module.new_layers():
                layer.requires_grad_(True)


def _add_expert_lora(model: torch.nn.Module, settings: LoraSettings) -> list[str]:
    """LoRA on every MoE layer's stacked experts (lmforge's own: peft's adapts Linear modules only)."""
    from lmforge.models.moe import MoE

    wanted = EXPERT_WEIGHTS if settings.target_parameters is None else tuple(settings.target_parameters)
    unknown = sorted(set(wanted) - set(EXPERT_WEIGHTS))
    if unknown:
        raise ConfigError(f"finetune.lora.target_parameters: unknown {unknown}; allowed: {list(EXPERT_WEIGHTS)}")
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    for moe in layers:
        moe.add_lora(settings.r, settings.alpha, wanted)
    return list(wanted) if layers else []

