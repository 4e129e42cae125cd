"""The decoder's config: every layout lmforge builds, from GPT-2 to Llama 3, Qwen2.5/3, Mistral and MoE.

The fields read as a checklist of how the open-weight families differ from one another:

    n_kv_head       fewer key/value heads than query heads (grouped-query; 1 = multi-query)
    head_size       a head width not equal to n_embd / n_head (Qwen3)
    qkv_bias        biases on q, k, v only (Qwen2), independent of `bias` for every other matmul
    rope_scaling    linear, dynamic NTK, llama3 or YaRN (see models.rope)
    sliding_window  each token sees only the last W tokens (Mistral; Qwen2 on `window_layers`)
    n_expert        > 0: a mixture-of-experts FFN with `n_expert_active` experts per token (models.moe)

Everything defaults to the plain multi-head dense decoder that lmforge trains from scratch, so
older checkpoints' config.json files load unchanged. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lmforge.config import DataclassConfig, short_repr
from lmforge.errors import ConfigError
from lmforge.models.presets import PRESETS
from lmforge.models.sizes import SizePart

# gelu_tanh is GPT-2's own tanh approximation, kept so GPT-2 checkpoints import exactly.
_CHOICES = {
    "pos": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu_tanh", "swiglu"),
}
_POSITIVE_INTS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden", "n_kv_head", "head_size",
                  "sliding_window", "moe_hidden")
_OPTIONAL = {"mlp_hidden", "norm_eps", "n_kv_head", "head_size", "qkv_bias", "sliding_window", "moe_hidden"}


def _bad_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < minimum


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
    n_kv_head: int | None = None  # None: n_head
    head_size: int | None = None  # None: n_embd // n_head
    qkv_bias: bool | None = None  # None: same as bias
    rope_scaling: dict[str, Any] | None = None
    sliding_window: int | None = None
    window_layers: list[int] | None = None  # the layers that slide; None: all of them
    n_expert: int = 0  # 0: a dense MLP in every layer
    n_expert_active: int = 2  # experts each token is routed to (top-k)
    moe_hidden: int | None = None  # each expert's hidden width; None: mlp_hidden_size
    moe_renorm: bool = True  # top-k weights renormalised to sum to 1 (Mixtral) or left as softmax probs
    moe_shared_hidden: int = 0  # > 0: a shared expert every token also passes through, sigmoid-gated
    moe_dense_layers: list[int] = field(default_factory=list)  # layers that keep a dense MLP
    moe_aux_loss: float = 0.0  # weight of the load-balancing loss added while training

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_choices()
        self._check_attention()
        self._check_moe()

    def _check_numbers(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if _bad_int(value) and not (value is None and name in _OPTIONAL):
                raise ConfigError(f"model.{name} must be a positive integer (got {short_repr(value)})")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
            if bad and not (value is None and name in _OPTIONAL):
                raise ConfigError(f"model.{name} must be a positive number (got {short_repr(value)})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1) (got {short_repr(self.dropout)})")

    def _check_choices(self) -> None:
        for name in ("bias", "tie_embeddings", "qk_norm", "moe_renorm", "qkv_bias"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name in _OPTIONAL):
                raise ConfigError(f"model.{name} must be true or false (got {short_repr(value)})")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model.{name} must be one of {list(allowed)} (got {short_repr(getattr(self, name))})"
                )

    def _check_attention(self) -> None:
        from lmforge.models.rope import check_scaling

        if self.head_size is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head ({self.kv_heads})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.n_embd / model.n_head must be even for rope (got head size {self.head_dim})")
        if self.pos == "learned" and (self.rope_scaling is not None or self.kv_heads != self.n_head):
            raise ConfigError("model.rope_scaling and model.n_kv_head need model.pos=rope")
        check_scaling(self.rope_scaling)
        self._check_layer_list("window_layers", self.window_layers)
        if self.window_layers is not None and self.sliding_window is None:
            raise ConfigError("model.window_layers needs model.sliding_window")

    def _check_moe(self) -> None:
        if _bad_int(self.n_expert, 0):
            raise ConfigError(f"model.n_expert must be 0 or a positive integer (got {short_repr(self.n_expert)})")
        if _bad_int(self.moe_shared_hidden, 0):
            raise ConfigError(f"model.moe_shared_hidden must be 0 or more (got {short_repr(self.moe_shared_hidden)})")
        if not self.n_expert:
            return
        if _bad_int(self.n_expert_active) or self.n_expert_active > self.n_expert:
            raise ConfigError(f"model.n_expert_active must be in 1..n_expert ({self.n_expert}) "
                              f"(got {short_repr(self.n_expert_active)})")
        if self.mlp != "swiglu":
            raise ConfigError("model.n_expert > 0 needs model.mlp=swiglu (experts are SwiGLU MLPs)")
        aux = self.moe_aux_loss
        if isinstance(aux, bool) or not isinstance(aux, (int, float)) or not 0 <= aux < math.inf:
            raise ConfigError(f"model.moe_aux_loss must be a number >= 0 (got {short_repr(aux)})")
        self._check_layer_list("moe_dense_layers", self.moe_dense_layers)

    def _check_layer_list(self, name: str, layers: Any) -> None:
        if layers is None:
            return
        if not isinstance(layers, list) or any(_bad_int(i, 0) or i >= self.n_layer for i in layers):
            raise ConfigError(f"model.{name} must list layer indices in 0..{self.n_layer - 1} "
                              f"(got {short_repr(layers)})")

    @property
    def head_dim(self) -> int:
        return self.head_size if self.head_size is not None else self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def attn_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    # Defaults resolved on read, not stored, so `dataclasses.replace(cfg, norm=...)` stays right.
    @property
    def eps(self) -> float:
        if self.norm_eps is not None:
            return self.norm_eps
        return 1e-6 if self.norm == "rmsnorm" else 1e-5

    @property
    def mlp_hidden_size(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else default_mlp_hidden(self.n_embd, self.mlp)

    @property
    def expert_hidden(self) -> int:
        return self.moe_hidden if self.moe_hidden is not None else self.mlp_hidden_size

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_expert > 0 and layer not in self.moe_dense_layers

    def window_of(self, layer: int) -> int | None:
        """How many past tokens (itself included) layer `layer` lets a token see; None: all of them."""
        if self.sliding_window is None or (self.window_layers is not None and layer not in self.window_layers):
            return None
        return self.sliding_window

    def size_parts(self) -> list[SizePart]:
        """What `GPT(self)` allocates, part by part, computed without allocating (see models.sizes)."""
        C, V, T, D = self.n_embd, self.vocab_size, self.block_size, self.head_dim
        b, qb = int(self.bias), int(self.attn_bias)
        qkv = (self.n_head + 2 * self.kv_heads) * D
        norm = C * (1 + (b if self.norm == "layernorm" else 0))
        attn = C * qkv + qkv * qb + self.n_head * D * C + C * b + (2 * D if self.qk_norm else 0)
        gated = 2 if self.mlp == "swiglu" else 1

        def ffn(hidden: int) -> int:
            return C * hidden * gated + hidden * gated * b + hidden * C + C * b

        n_moe = sum(self.is_moe_layer(i) for i in range(self.n_layer))
        moe = self.n_expert * 3 * C * self.expert_hidden + self.n_expert * C  # experts + router
        if self.moe_shared_hidden:
            moe += ffn(self.moe_shared_hidden) + C
        parts = [
            SizePart("embeddings", V * C * (1 if self.tie_embeddings else 2), ("vocab_size", "n_embd")),
            SizePart("layers", self.n_layer * (2 * norm + attn) + (self.n_layer - n_moe) * ffn(self.mlp_hidden_size),
                     ("n_layer", "n_embd", "mlp_hidden")),
            SizePart("final norm", norm, ("n_embd",)),
        ]
        if n_moe:
            parts.append(SizePart("experts", n_moe * moe, ("n_layer", "n_expert", "moe_hidden")))
        if self.pos == "learned":
            parts.append(SizePart("positions", T * C, ("block_size", "n_embd")))
        else:  # cos and sin tables, (T, D/2) each, rebuilt from the config on load
            parts.append(SizePart("rotary tables", T * D, ("block_size", "head_size"), stored=False))
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
