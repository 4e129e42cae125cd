"""A decoder-only transformer in one readable file.

The same class covers the original GPT-2 layout (learned positions, LayerNorm, GELU MLP), the
modern one lmforge trains by default (rotary positions, RMSNorm, SwiGLU) and the open-weight
families built on it: Llama 3, Qwen2.5/3, Mistral and the mixtures of experts Qwen3-MoE, Qwen2-MoE
and Mixtral. Their differences are config fields (models.gpt_config) handled by three pieces, each
in its own file: attention with grouped-query heads, biases, q/k norms and sliding windows
(models.attention), rope and its scalings (models.rope), and the expert layer (models.moe).
`lmforge.models.hf` moves weights to and from each family's `transformers` class. Generation
uses a KV cache: each new token attends to stored keys/values instead of re-running the prefix.

Speed: q, k, v come from one fused matmul and the SwiGLU gate and up projections from another;
rotary tables are computed once; attention is SDPA with `is_causal` (no mask tensor). On CPUs,
float32 matmuls and the output layer + loss go through `cpu_kernels` (oneDNN, fused chunked
cross-entropy) when that is exact and faster; call with `return_logits=False` when training.
`torch.compile` (or `model.compile()`) fuses the element-wise work: essential on GPUs, and
about 1.2x more on CPUs once its ~15 s compile is paid (benchmarks/train_cpu.py --compile).

Shape letters: B batch, T time (tokens), C channels (n_embd), H heads, D head dim, V vocab.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmforge.models import cpu_kernels
from lmforge.models.attention import CausalSelfAttention, KVCache, RMSNorm
from lmforge.models.cpu_kernels import Dropout, Linear
from lmforge.models.gpt_config import GPTConfig, config_from_preset, default_mlp_hidden
from lmforge.models.moe import MoE, load_balancing_loss
from lmforge.models.presets import PRESETS  # torch-free, so recipes can validate preset names
from lmforge.models.rope import apply_rope, is_dynamic, rope_tables
from lmforge.models.sizes import check_fits

# Re-exported: callers import the whole decoder's vocabulary from here.
__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "RMSNorm", "apply_rope", "config_from_preset",
           "default_mlp_hidden", "rope_tables"]


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.eps)
    return nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"
        hidden = config.mlp_hidden_size
        # SwiGLU's gate and up projections are one matmul: rows [gate; up].
        self.c_fc = Linear(config.n_embd, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden) or (B, T, 2 * hidden)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MoE(config) if config.is_moe_layer(layer) else MLP(config)

    def forward(self, x, rope, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


# --------------------------------------------------------------------------- the model


class GPT(nn.Module):
    """Token embedding, `n_layer` pre-norm blocks, final norm, output projection (tied by default)."""

    model_type = "lmforge-gpt"
    config_class = GPTConfig
    # Recompute each block's activations in the backward pass instead of storing them: about
    # a third more compute for a fraction of the activation memory. Set it on the instance.
    checkpoint_activations: bool = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if torch.get_default_device().type != "meta":  # a meta model allocates nothing
            check_fits(config)
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            # Not persistent: derived from the config, so they stay out of checkpoints.
            cos, sin = self._rope_tables(config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh weights and rope tables; call again after `to_empty()` of a model built on "meta"."""
        self.apply(self._init_weights)
        # Each residual branch adds to the stream; scaling the projections into it keeps the
        # stream's variance from growing with depth (GPT-2 paper).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        if self.config.pos == "rope" and self.rope_cos.device.type != "meta":
            self.reset_rope()

    @torch.no_grad()
    def reset_rope(self) -> None:
        """Recompute the rope tables (after `to_empty()`, which leaves buffers uninitialised)."""
        if self.config.pos == "rope":
            cos, sin = self._rope_tables(self.config.block_size)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def _rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        return rope_tables(cfg.head_dim, length, cfg.rope_theta, cfg.rope_scaling, cfg.block_size)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, MoE):
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def shard_units(self) -> list[nn.Module]:
        """The modules to wrap one by one with FSDP2's `fully_shard` (then the model itself)."""
        return list(self.transformer.h)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; embeddings are lookups, not compute, so scaling laws leave them out."""
        n = sum(p.numel() for p in self.parameters())  # shared (tied) tensors are counted once
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the matmuls plus 12*L*H*D*T for the attention scores.

        N counts the output projection even when tied, because that matmul is real compute. T is
        `seq_len` (the length trained on) or, if not given, the full context; the attention term
        counts the whole T x T score matrix, as the PaLM paper's MFU does, not the causal half.
        """
        cfg = self.config
        n = self.num_params(exclude_embeddings=True)
        if cfg.tie_embeddings:
            n += cfg.vocab_size * cfg.n_embd
        idle_experts = cfg.n_expert - cfg.n_expert_active  # an MoE layer computes k experts per token
        n -= len(self.moe_layers()) * idle_experts * 3 * cfg.n_embd * cfg.expert_hidden
        T = cfg.block_size if seq_len is None else seq_len
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T

    def features(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """The final hidden states (B, T, C), before the output layer: what fine-tuning heads read.

        `attention_mask` is accepted for a uniform head interface and not needed: with right
        padding, causal attention never lets a real token see the padding after it.
        """
        B, T = idx.size()
        # Positions: 0..T-1 without a cache; with one, they continue each row's cached tokens.
        pos = None if kv_cache is None else kv_cache.positions(T, idx.device)  # (1 or B, T)
        end = T if pos is None else int(pos.max()) + 1
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens exceeds block_size {self.config.block_size}")

        for moe in self.moe_layers():
            moe.aux = None  # router statistics of this pass only
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device) if pos is None else pos)  # (B, T, C)
        else:
            cos, sin = self.rope_cos, self.rope_sin  # (block_size, D/2) each
            if is_dynamic(self.config.rope_scaling):  # the base depends on this sequence's length
                cos, sin = (t.to(idx.device) for t in self._rope_tables(end))
            # (T, D/2) each without a cache; (1 or B, 1, T, D/2) each with one
            rope = (cos[:T], sin[:T]) if pos is None else (cos[pos].unsqueeze(1), sin[pos].unsqueeze(1))
        x = self.transformer.drop(x)
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:
                x = checkpoint(block, x, rope, kv_cache, i, use_reentrant=False)  # (B, T, C)
            else:
                x = block(x, rope, kv_cache, i)  # (B, T, C)
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        ignore_index: int = -100,
        kv_cache: KVCache | None = None,
        *,
        reduction: Literal["mean", "sum"] = "mean",
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return logits and, given targets, the cross-entropy over non-ignored tokens.

        `reduction` "mean" averages over those tokens, "sum" adds them up (for a trainer that
        divides by a global token count). With targets and `return_logits=False` the logits are
        None and never materialised in full: on CPUs the output layer and loss are then fused
        (cpu_kernels), the fastest way to train. With `kv_cache`, `idx` holds only the new tokens;
        their positions continue after the cached ones and the cache is extended in place.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")
        x = self.features(idx, kv_cache=kv_cache)  # (B, T, C)
        B, T = idx.size()
        if targets is not None and not return_logits:
            loss = cpu_kernels.linear_cross_entropy(
                x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1), ignore_index, reduction
            )
            return None, self._with_aux_loss(loss, targets, ignore_index, reduction)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=ignore_index,
                reduction=reduction,
            )
            loss = self._with_aux_loss(loss, targets, ignore_index, reduction)
        return logits, loss

    def pack_for_inference(self, budget_bytes: int) -> int:
        """Packed weight copies for CPU decoding (cpu_kernels.Linear), Linear layers first, then each
        MoE layer's experts, within `budget_bytes`; returns the bytes used."""
        used = cpu_kernels.pack_for_inference(self, budget_bytes)
        for moe in self.moe_layers():
            used += moe.pack_weights(budget_bytes - used)
        return used

    def moe_layers(self) -> list[MoE]:
        return [block.mlp for block in self.transformer.h if isinstance(block.mlp, MoE)]

    def _with_aux_loss(self, loss: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str):
        """Add the experts' load-balancing loss while training; a summed loss gets it once per token."""
        self.last_aux_loss = None
        if not self.config.moe_aux_loss or not self.training:
            return loss
        aux = load_balancing_loss(self.moe_layers())
        if aux is None:
            return loss
        self.last_aux_loss = aux.detach()
        weight = self.config.moe_aux_loss
        if reduction == "sum":  # the trainer divides by the token count afterwards
            weight = weight * (targets != ignore_index).sum()
        return loss + weight * aux

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)
