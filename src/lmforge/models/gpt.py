"""A decoder-only transformer in one readable file.

The same class covers the original GPT-2 layout (learned positions, LayerNorm, GELU MLP) and
the modern one (rotary positions, RMSNorm, SwiGLU, optionally Qwen3's per-head q/k RMSNorm) so
that presets can reproduce GPT-2 sizes while the small defaults use what trains best at small
scale; `lmforge.models.hf` maps these layouts to GPT2/Llama/Qwen3 in transformers. Generation
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
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmforge.config import DataclassConfig, short_repr
from lmforge.errors import ConfigError
from lmforge.models import cpu_kernels
from lmforge.models.cpu_kernels import Dropout, Linear
from lmforge.models.presets import PRESETS  # torch-free, so recipes can validate preset names
from lmforge.models.sizes import SizePart, check_fits

# gelu_tanh is GPT-2's own tanh approximation, kept so GPT-2 checkpoints import exactly.
_CHOICES = {
    "pos": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu_tanh", "swiglu"),
}


@dataclass
class GPTConfig(DataclassConfig):
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    pos: Literal["learned", "rope"] = "rope"
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] = "swiglu"
    tie_embeddings: bool = True
    qk_norm: bool = False  # RMSNorm over each head's q and k before rope (Qwen3): steadier attention logits
    norm_eps: float | None = None  # None: 1e-6 for rmsnorm, 1e-5 (GPT-2's) for layernorm
    rope_theta: float = 10000.0  # rope base; larger stretches the slowest rotation for long contexts
    mlp_hidden: int | None = None  # None: 4 * n_embd (gelu) or ~8/3 * n_embd rounded up to 64 (swiglu)

    def __post_init__(self) -> None:
        optional = {"mlp_hidden", "norm_eps"}  # None means "derive from the other fields"
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
            if bad and not (value is None and name in optional):
                raise ConfigError(f"model.{name} must be a positive integer (got {short_repr(value)})")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
            if bad and not (value is None and name in optional):
                raise ConfigError(f"model.{name} must be a positive number (got {short_repr(value)})")
        for name in ("bias", "tie_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name} must be true or false (got {short_repr(getattr(self, name))})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1) (got {short_repr(self.dropout)})")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model.{name} must be one of {list(allowed)} (got {short_repr(getattr(self, name))})"
                )
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"model.n_embd / model.n_head must be even for rope (got head size {self.n_embd // self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    # Defaults resolved on read, not stored, so `dataclasses.replace(cfg, norm=...)` stays right.
    @property
    def eps(self) -> float:
        if self.norm_eps is not None:
            return self.norm_eps
        return 1e-6 if self.norm == "rmsnorm" else 1e-5

    @property
    def mlp_hidden_size(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else default_mlp_hidden(self.n_embd, self.mlp)

    def size_parts(self) -> list[SizePart]:
        """What `GPT(self)` allocates, part by part, computed without allocating (see models.sizes)."""
        C, V, T, H = self.n_embd, self.vocab_size, self.block_size, self.mlp_hidden_size
        b = int(self.bias)
        norm = C * (1 + (b if self.norm == "layernorm" else 0))
        attn = 3 * C * C + 3 * C * b + C * C + C * b + (2 * self.head_dim if self.qk_norm else 0)
        mlp = C * H * (2 if self.mlp == "swiglu" else 1) + H * (2 if self.mlp == "swiglu" else 1) * b + H * C + C * b
        parts = [
            SizePart("embeddings", V * C * (1 if self.tie_embeddings else 2), ("vocab_size", "n_embd")),
            SizePart("layers", self.n_layer * (2 * norm + attn + mlp), ("n_layer", "n_embd", "mlp_hidden")),
            SizePart("final norm", norm, ("n_embd",)),
        ]
        if self.pos == "learned":
            parts.append(SizePart("positions", T * C, ("block_size", "n_embd")))
        else:  # cos and sin tables, (T, D/2) each, rebuilt from the config on load
            parts.append(SizePart("rotary tables", T * self.head_dim, ("block_size", "n_embd"), stored=False))
        return parts


def default_mlp_hidden(n_embd: int, mlp: str) -> int:
    """4x for GELU; for SwiGLU 2/3 of that (same parameter count), rounded up to a multiple of 64."""
    if mlp == "swiglu":
        return 64 * math.ceil(int(8 * n_embd / 3) / 64)
    return 4 * n_embd


def config_from_preset(preset: str, vocab_size: int, **overrides: Any) -> GPTConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; allowed: {sorted(PRESETS)}")
    return GPTConfig.from_dict({**PRESETS[preset], **overrides, "vocab_size": vocab_size})


# --------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """LayerNorm without mean-centering or bias: cheaper and as good for transformers."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 so bf16 activations do not lose the small-variance channels.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.eps)
    return nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias)


def rope_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1[i], x2[i]) by a position-dependent angle so q.k depends on relative position."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, D/2), broadcast over B and H
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Keys and values of every token seen so far, one pair per layer, all rows the same length.

    The attention layers talk to a cache through three calls: `positions(T)` (where the new
    tokens sit), `update(layer, k, v)` (store them; return every key and value plus the mask of
    which keys each query may see, or None for plain causal attention) and `length`. A cache with
    a row per request and rows of different lengths (lmforge.serve.cache.SlotCache) fits the same
    seam, which is how the server batches requests that arrive at different times.
    """

    def __init__(self, n_layer: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    @property
    def length(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].size(2)

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.length, self.length + T, device=device)[None, :]  # (1, T)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        past = self.layers[layer]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, T_past + T, D)
            v = torch.cat([past[1], v], dim=2)
        self.layers[layer] = (k, v)
        T, S = k.size(2) - (0 if past is None else past[0].size(2)), k.size(2)
        if S == T:
            return k, v, None
        # is_causal aligns the mask to the top-left corner, which is wrong once keys include a
        # cached prefix: query i sits at absolute position S - T + i and may see keys 0..S-T+i.
        q_pos = torch.arange(S - T, S, device=k.device)[:, None]  # (T, 1)
        k_pos = torch.arange(S, device=k.device)[None, :]  # (1, S)
        return k, v, k_pos <= q_pos


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.eps)
            self.k_norm = RMSNorm(config.head_dim, config.eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, C // self.n_head)  # (B, T, H, D)
        k = k.view(B, T, self.n_head, C // self.n_head)  # (B, T, H, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # each head's vector normalised on its own
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        mask = None
        if cache is not None:
            k, v, mask = cache.update(layer, k, v)  # (B, H, S, D) with S = past + T; mask (T, S) or (B, 1, T, S)

        dropout = self.dropout if self.training else 0.0
        if mask is None:
            y = cpu_kernels.attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = cpu_kernels.attention(q, k, v, mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


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
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

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
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            # Not persistent: derived from the config, so they stay out of checkpoints.
            cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
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
            cos, sin = rope_tables(self.config.head_dim, self.config.block_size, self.config.rope_theta)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
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
        """Training FLOPs per token: 6N for the matmuls plus 12*L*C*T for the attention scores.

        N counts the output projection even when tied, because that matmul is real compute. T is
        `seq_len` (the length trained on) or, if not given, the full context; the attention term
        counts the whole T x T score matrix, as the PaLM paper's MFU does, not the causal half.
        """
        cfg = self.config
        n = self.num_params(exclude_embeddings=True)
        if cfg.tie_embeddings:
            n += cfg.vocab_size * cfg.n_embd
        T = cfg.block_size if seq_len is None else seq_len
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * T

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

        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device) if pos is None else pos)  # (B, T, C)
        elif pos is None:
            rope = (self.rope_cos[:T], self.rope_sin[:T])  # (T, D/2) each
        else:
            rope = (self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1))  # (1 or B, 1, T, D/2) each
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
            return None, loss
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=ignore_index,
                reduction=reduction,
            )
        return logits, loss

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)
