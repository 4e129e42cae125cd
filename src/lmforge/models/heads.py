"""Task heads on lmforge backbones, and their on-disk form: `model.safetensors` + `finetune.json`.

An lmforge backbone (GPT or BERT) exposes `features(input_ids, attention_mask) -> (B, T, C)`; a
head reads it:
- sequence classification: BERT's pretrained [CLS] pooler, or a GPT's last real token (under
  causal attention only the last position has read the whole text);
- token classification: every position, with its neighbours (a convolution) and a CRF over the
  words' tags (`models.crf`) when asked.
The heads live with the models, not with fine-tuning, because serving, labelling, augmentation
and evaluation load fine-tuned models too and must not depend on the fine-tuning runner.
`finetune.json` holds the backbone config, head and labels: no pickle.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import InputError, UserError
from lmforge.models.attention import PackedDocuments
from lmforge.models.cpu_kernels import Dropout
from lmforge.models.crf import LinearChainCRF
from lmforge.models.protocols import CausalLM, Encoder, HasBackbone, MergesAdapters, is_hf_model
from lmforge.models.sizes import check_against_weights
from lmforge.records import temp_sibling

HEAD_FILE = "finetune.json"
# The transformers auto class that carries each task kind's head, for Hugging Face backbones.
HF_AUTO = {"classification": "AutoModelForSequenceClassification", "ner": "AutoModelForTokenClassification",
           "instruction": "AutoModelForCausalLM"}


class SequenceClassifier(nn.Module):
    """`pool`: "cls" (BERT's pretrained [CLS] pooler), "mean" (average of the real tokens' states) or
    "last" (a GPT's last real token); "auto" is mean. Mean pooling reads the token states that
    pretraining trained directly: on the built-in sentiment task a review-pretrained GPT reaches
    0.80 validation accuracy with it against 0.70 with its last token (the [CLS] pooler of a BERT
    was trained only for NSP)."""

    def __init__(self, backbone: nn.Module, n_labels: int, dropout: float = 0.1, pool: str = "auto") -> None:
        super().__init__()
        self.backbone = backbone
        self.is_encoder = isinstance(backbone, Encoder)
        if pool == "auto":
            pool = "mean"
        if pool not in ("cls", "mean", "last") or (pool == "cls" and not self.is_encoder):
            raise UserError(f"finetune.head.pool must be cls (encoders), mean or last (got {pool!r})")
        self.pool = pool
        width = backbone.config.n_embd
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(width, n_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.backbone.features(input_ids, attention_mask=attention_mask)  # (B, T, C)
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        if self.pool == "cls":
            pooled = self.backbone.pooled(x)  # (B, C)
        elif self.pool == "mean":
            weights = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)
        else:
            last = attention_mask.sum(1) - 1
            pooled = x[torch.arange(x.size(0), device=x.device), last]  # (B, C): the last real token
        return self.head(self.dropout(pooled))  # (B, n_labels)


class TokenTagger(nn.Module):
    """Per-token tag scores (B, T, L) from the backbone's states.

    `window` > 0 adds a convolution over each token's neighbours (up to `window` either side) to its
    state before the output layer: a small encoder learns to read its neighbours through attention
    only slowly, and a word's neighbours decide most entity boundaries (中 alone is not 中国). `crf`
    adds a linear-chain CRF (`models.crf`): the loss and the decoding then see whole tag sequences.
    On the built-in Chinese NER task (2,000 sentences, a tiny BERT from scratch, 250 steps at lr 5e-4)
    test F1 went from 0.32 (output layer alone, argmax) to 0.62 with the CRF and 0.72 with the CRF and
    a window of 1; with a window of 2 at lr 1e-3, 0.81. A wider window (3) added nothing.
    """

    def __init__(self, backbone: nn.Module, labels: Sequence[str] | int, dropout: float = 0.1, window: int = 0,
                 crf: bool = False) -> None:
        super().__init__()
        names = [str(i) for i in range(labels)] if isinstance(labels, int) else list(labels)
        width = backbone.config.n_embd
        self.backbone = backbone
        self.window = window
        self.context = nn.Conv1d(width, width, 2 * window + 1, padding=window) if window else None
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(width, len(names))
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.crf = LinearChainCRF(names) if crf else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.backbone.features(input_ids, attention_mask=attention_mask)  # (B, T, C)
        if self.context is not None:
            if attention_mask is not None:  # padding's states are not neighbours
                x = x * attention_mask.unsqueeze(-1).to(x.dtype)
            x = x + F.gelu(self.context(x.transpose(1, 2)).transpose(1, 2))  # (B, T, C)
        return self.head(self.dropout(x))  # (B, T, n_labels)

    def new_layers(self) -> list[nn.Module]:
        """What the tagger adds besides the output layer: trained in full even under LoRA."""
        return [m for m in (self.context, self.crf) if m is not None]


class CausalLMAdapter(nn.Module):
    """An lmforge GPT called like an HF model (`input_ids=`, `attention_mask=`) returning logits."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.backbone = gpt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, per_row: bool = False) -> torch.Tensor:
        """Logits (B, T, V); with `targets` (B, T) instead the summed next-token loss, computed without
        materialising the logits, or with `per_row` each row's sum (B,) (preference tuning). `doc_ids`/
        `positions` (B, T) mark packed documents. Right padding needs no mask under causal attention."""
        packed = None if doc_ids is None else PackedDocuments(doc_ids, positions)
        if targets is None:
            return self.backbone(input_ids, kv_cache=packed)[0]
        if per_row:
            return self._row_losses(input_ids, targets)
        return self.backbone(input_ids, targets, kv_cache=packed, reduction="sum", return_logits=False)[1]

    # Up to this size the logits of a whole batch are made at once (one matmul: fastest); beyond it,
    # one row's at a time. On the DPO benchmark (vocab 4,000) the whole batch's logits cost 25 MB and
    # the row-by-row path ran 0.98x TRL's steps/s against 1.30x; a 152k vocabulary at 16 x 1024 tokens
    # would need 10 GB of logits.
    full_logits_bytes = 512 << 20

    def _row_losses(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's summed next-token loss (B,). Large logits never exist for more than one row, in the
        forward or the backward pass (recomputed there), so a 150k vocabulary costs (T, V), not (B, T, V)."""
        from torch.utils.checkpoint import checkpoint

        from lmforge.models import cpu_kernels

        x = self.backbone.features(input_ids)  # (B, T, C)
        weight = self.backbone.lm_head.weight  # (V, C)
        if targets.numel() * weight.shape[0] * 4 <= self.full_logits_bytes:
            logits = F.linear(x, weight).float()  # (B, T, V)
            nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
            return nll.view(targets.shape).sum(-1)

        def row(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return cpu_kernels.linear_cross_entropy(h, weight, t, -100, "sum")

        return torch.stack([checkpoint(row, x[b], targets[b], use_reentrant=False) if torch.is_grad_enabled()
                            else row(x[b], targets[b]) for b in range(x.size(0))])  # (B,)


def save_task_model(model: nn.Module, out: Path, info: dict[str, Any], tokenizer=None) -> Path:
    """Save where `load_task_model` finds it: HF `save_pretrained` for HF models, else safetensors +
    finetune.json. LoRA adapters are merged first, so the saved model needs no peft to load."""
    from safetensors.torch import save_model

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        if isinstance(model, MergesAdapters):  # merged on a copy: the live model keeps training its adapters
            model = copy.deepcopy(model).merge_and_unload()
            _merge_expert_lora(model)
            _retie(model)
        if is_hf_model(model):
            model.save_pretrained(str(tmp), safe_serialization=True)
        else:
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            backbone = model.backbone
            pool = model.pool if isinstance(model, SequenceClassifier) else None
            tagger = {"window": model.window, "crf": model.crf is not None} if isinstance(model, TokenTagger) else None
            (tmp / HEAD_FILE).write_text(json.dumps({
                **info, "backbone_type": backbone.model_type, "backbone": backbone.config.to_dict(),
                "head": type(model).__name__, "pool": pool, "tagger": tagger}, indent=2, ensure_ascii=False),
                encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _merge_expert_lora(model: nn.Module) -> None:
    """MoE experts carry lmforge's own LoRA (peft adapts Linear modules only): fold it in too."""
    from lmforge.models.moe import MoE

    for module in model.modules():
        if isinstance(module, MoE):
            module.merge_lora()


def _retie(model: nn.Module) -> None:
    """peft's merge unties a GPT's shared embedding/output matrix (both stay frozen and equal): tie them again."""
    gpt = model.backbone if isinstance(model, HasBackbone) else None
    if isinstance(gpt, CausalLM) and gpt.config.tie_embeddings:
        if not torch.equal(gpt.lm_head.weight, gpt.transformer.wte.weight):
            raise RuntimeError("tied embeddings diverged during LoRA training")
        gpt.lm_head.weight = gpt.transformer.wte.weight


def load_task_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned model saved by `save_task_model`, in eval mode, with its info (labels, kind)."""
    from safetensors.torch import load_model

    from lmforge.models.checkpoint_io import model_class

    p = Path(path)
    if not (p / HEAD_FILE).is_file():
        raise InputError(f"{p} has no {HEAD_FILE}: not an lmforge fine-tuned model")
    info = json.loads((p / HEAD_FILE).read_text(encoding="utf-8"))
    cls = model_class(info["backbone_type"])
    config = cls.config_class.from_dict(info["backbone"])
    check_against_weights(config, [p / "model.safetensors"], where=str(p / HEAD_FILE))  # before allocating
    backbone = cls(config)
    head = {"SequenceClassifier": SequenceClassifier, "TokenTagger": TokenTagger,
            "CausalLMAdapter": CausalLMAdapter}[info["head"]]
    if head is CausalLMAdapter:
        model = head(backbone)
    elif head is SequenceClassifier:
        model = head(backbone, len(info["labels"]), pool=info.get("pool") or "auto")
    else:  # a tagger saved before it had a context layer and a CRF has neither
        tagger = info.get("tagger") or {}
        model = head(backbone, info["labels"], window=tagger.get("window", 0), crf=tagger.get("crf", False))
    load_model(model, str(p / "model.safetensors"), strict=True)
    return model.eval(), info
