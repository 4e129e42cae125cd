"""A BERT encoder with its two pretraining heads, in one readable file.

The math is exactly Hugging Face's `BertForPreTraining` (post-LN layers, erf GELU, an MLM head
tied to the word embeddings, a tanh pooler feeding the next-sentence head), so a checkpoint
exported by `lmforge.models.hf_bert` gives the same logits in `transformers`. The only layout
difference is that query, key and value share one fused projection: one matmul instead of three.

Shape letters: B batch, T time (tokens), C channels (n_embd), H heads, D head dim, V vocab,
I intermediate (FFN) width, N masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmforge.config import DataclassConfig, short_repr
from lmforge.errors import ConfigError
from lmforge.models import cpu_kernels
from lmforge.models.cpu_kernels import Dropout, Linear  # faster CPU matmuls and dropout masks
from lmforge.models.presets import BERT_PRESETS  # torch-free, so recipes validate preset names
from lmforge.models.sizes import SizePart, check_fits

# The sizes of Google's "well-read students" checkpoints (Turc et al. 2019) and BERT-base.


@dataclass
class BertConfig(DataclassConfig):
    vocab_size: int
    max_position: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    intermediate: int | None = None  # None or 0: 4 * n_embd, as in every published BERT size
    dropout: float = 0.1
    attn_dropout: float = 0.1
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not self.intermediate:
            self.intermediate = 4 * self.n_embd if _is_int(self.n_embd) else self.intermediate
        for name in ("vocab_size", "max_position", "n_layer", "n_head", "n_embd", "intermediate", "type_vocab_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer (got {short_repr(value)})")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1) (got {short_repr(value)})")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, int | float) \
                or not self.layer_norm_eps > 0:
            raise ConfigError(f"model.layer_norm_eps must be a positive number (got {short_repr(self.layer_norm_eps)})")
        if not _is_int(self.pad_id) or not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"model.pad_id must be a token id in [0, {self.vocab_size}) (got {short_repr(self.pad_id)})")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def size_parts(self) -> list[SizePart]:
        """What `BertForPretraining(self)` allocates, part by part, computed without allocating."""
        C, V, I = self.n_embd, self.vocab_size, self.intermediate  # noqa: E741 - the docstring's letters
        layer = 3 * C * C + 3 * C + C * C + C + C * I + I + I * C + C + 4 * C  # qkv, out, ffn, two LayerNorms
        return [
            SizePart("word embeddings", V * C, ("vocab_size", "n_embd")),
            SizePart("positions", self.max_position * C, ("max_position", "n_embd")),
            SizePart("token types", self.type_vocab_size * C, ("type_vocab_size", "n_embd")),
            SizePart("layers", self.n_layer * layer, ("n_layer", "n_embd", "intermediate")),
            # embedding LayerNorm; MLM transform, its LayerNorm and decoder bias (weight tied); pooler; NSP
            SizePart("heads", 2 * C + C * C + C + 2 * C + V + C * C + C + 2 * C + 2, ("n_embd", "vocab_size")),
        ]

    def derived_fields(self) -> tuple[str, ...]:
        """Fields whose value follows from the others (so a size error blames the one really set)."""
        return ("intermediate",) if self.intermediate == 4 * self.n_embd else ()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bert_config_from_preset(preset: str, vocab_size: int, **overrides: Any) -> BertConfig:
    if preset not in BERT_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; allowed: {sorted(BERT_PRESETS)}")
    return BertConfig.from_dict({**BERT_PRESETS[preset], **overrides, "vocab_size": vocab_size})


# --------------------------------------------------------------------------- building blocks


class Embeddings(nn.Module):
    """Word + absolute position + segment (token type) embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        # padding_idx as in HF: the pad row gets no gradient from the lookup.
        self.word = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_position, config.n_embd)
        self.token_type = nn.Embedding(config.type_vocab_size, config.n_embd)
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.drop = Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(pos)  # (B, T, C)
        return self.drop(self.ln(x))


class EncoderLayer(nn.Module):
    """Post-LN: each sub-block's output is added to its input and the sum normalised (BERT, not GPT-2)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.attn_dropout = config.attn_dropout
        self.qkv = Linear(config.n_embd, 3 * config.n_embd)
        self.attn_out = Linear(config.n_embd, config.n_embd)
        self.ln_attn = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.fc = Linear(config.n_embd, config.intermediate)
        self.fc_out = Linear(config.intermediate, config.n_embd)
        self.ln_ffn = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.drop = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        dropout = self.attn_dropout if self.training else 0.0
        # mask (B, 1, 1, T): True where the key is a real token; every query sees every real key.
        y = cpu_kernels.attention(q, k, v, mask, dropout_p=dropout)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        x = self.ln_attn(x + self.drop(self.attn_out(y)))
        # F.gelu defaults to the exact erf form, which is what HF's "gelu" means.
        h = F.gelu(self.fc(x))  # (B, T, I)
        return self.ln_ffn(x + self.drop(self.fc_out(h)))  # (B, T, C)


# --------------------------------------------------------------------------- the model


class BertForPretraining(nn.Module):
    model_type = "lmforge-bert"
    config_class = BertConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if torch.get_default_device().type != "meta":  # a meta model allocates nothing
            check_fits(config)
        self.config = config
        # Recompute each layer's activations in backward instead of storing them: less memory for
        # longer sequences or bigger batches at about one extra forward pass of compute.
        self.checkpoint_activations: bool = False
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.n_layer)])
        # MLM head: a transform, then scores against every word embedding plus a per-token bias.
        self.mlm_dense = Linear(config.n_embd, config.n_embd)
        self.mlm_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.decoder = Linear(config.n_embd, config.vocab_size)
        # NSP/SOP head: the pooled [CLS] state decides "B follows A" or not.
        self.pooler = Linear(config.n_embd, config.n_embd)
        self.nsp = nn.Linear(config.n_embd, 2)

        self.apply(self._init_weights)
        # Tie after init so the decoder's init does not overwrite the embedding's pad row.
        self.decoder.weight = self.embeddings.word.weight
        with torch.no_grad():
            self.embeddings.word.weight[config.pad_id].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """HF's BERT init: N(0, 0.02) weights, zero biases, LayerNorm at identity."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP wraps one by one: each encoder layer gathers its weights only while it runs."""
        return list(self.layers)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; embeddings are lookups, not compute, so scaling laws leave them out."""
        n = sum(p.numel() for p in self.parameters())  # the tied decoder weight is counted once
        if exclude_embeddings:
            emb = self.embeddings
            n -= emb.word.weight.numel() + emb.position.weight.numel() + emb.token_type.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, mlm_fraction: float = 0.15) -> int:
        """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4) plus attention scores.

        The MLM decoder counts even though its weight is the tied embedding: scoring against the
        vocabulary is a real (V x C) matmul, often the largest one in small models. The head runs on
        `mlm_fraction` of the tokens: the masked ones (BERT's 15%) when the objective passes
        `mlm_positions`, as `MaskedLM` does; 1.0 when logits are taken everywhere. Counting it on
        every token would overstate MFU by up to 2x for small models. Attention adds
        12 * n_layer * n_embd * seq_len (QK^T and AV, forward and backward). Biases, norms and the
        once-per-sequence pooler are left out.
        """
        if not _is_int(seq_len) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer (got {seq_len!r})")
        cfg = self.config
        C, inner = cfg.n_embd, cfg.intermediate
        per_layer = 4 * C * C + 2 * C * inner  # qkv + attention output + the two FFN matmuls
        head = C * C + cfg.vocab_size * C  # transform + decoder
        n = cfg.n_layer * per_layer + mlm_fraction * head
        return int(6 * n + 12 * cfg.n_layer * C * seq_len)

    def features(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The encoder's last hidden states (B, T, C): what fine-tuning heads read."""
        if input_ids.size(1) > self.config.max_position:
            raise ValueError(
                f"sequence of {input_ids.size(1)} tokens exceeds max_position {self.config.max_position}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries

        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        for layer in self.layers:
            if self.checkpoint_activations and self.training:
                x = checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)  # (B, T, C)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pretrained [CLS] pooler (B, C), which NSP trained to summarise a pair."""
        return torch.tanh(self.pooler(x[:, 0]))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return MLM logits (B, T, V) and NSP logits (B, 2).

        `attention_mask` (B, T) is 1 for real tokens and 0 for padding; a row must have at least
        one real token. With `mlm_positions` (bool, B x T) the MLM head runs only there and its
        logits are (N, V) in row-major order of the True entries, as the original BERT gathers
        masked positions: at 15% masking that skips most of the vocabulary matmul.
        """
        x = self.features(input_ids, token_type_ids, attention_mask)  # (B, T, C)
        h = x if mlm_positions is None else x[mlm_positions]  # (B, T, C) or (N, C)
        h = self.mlm_ln(F.gelu(self.mlm_dense(h)))
        mlm_logits = self.decoder(h)  # (B, T, V) or (N, V)
        nsp_logits = self.nsp(self.pooled(x))  # (B, 2)
        return mlm_logits, nsp_logits
