"""Causal self-attention with every variant the open-weight families use, and the KV cache seam.

One module covers multi-head, grouped-query and multi-query attention (`n_kv_head` key/value heads
shared by groups of `n_head / n_kv_head` query heads), q/k/v biases (Qwen2), per-head q/k RMSNorm
(Qwen3), a head width of its own (Qwen3) and sliding windows (Mistral). q, k and v come from one
fused matmul: rows [q; k; v], of n_head, n_kv_head and n_kv_head heads.

Grouped-query attention never copies keys while decoding: the G query heads that share a key
head are laid side by side as G*T query rows of that head, so one attention call over n_kv_head
heads does the work, and the cache holds n_kv_head heads (Qwen2.5-0.5B: 2 instead of 14, 7x less).

Shape letters: B batch, T new tokens, S keys (cached + new), C channels, H query heads,
K key/value heads, G = H / K, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.models import cpu_kernels
from lmforge.models.cpu_kernels import Dropout, Linear
from lmforge.models.gpt_config import GPTConfig
from lmforge.models.rope import apply_rope


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


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """True where a query at q_pos may see a key at k_pos: not after it, and within the window."""
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (q_pos - k_pos < window)
    return mask


class KVCache:
    """Keys and values of every token seen so far, one pair per layer, all rows the same length.

    The attention layers talk to a cache through three calls: `positions(T)` (where the new
    tokens sit), `update(layer, k, v, window)` (store them; return every key and value plus the
    mask of which keys each query may see, or None for plain causal attention) and `length`. A
    cache with a row per request and rows of different lengths (lmforge.serve.cache.SlotCache)
    fits the same seam, which is how the server batches requests that arrive at different times.
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
        self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        past = self.layers[layer]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, K, S, D) with S = T_past + T
            v = torch.cat([past[1], v], dim=2)
        self.layers[layer] = (k, v)
        T, S = k.size(2) - (0 if past is None else past[0].size(2)), k.size(2)
        if S == T and window is None:
            return k, v, None
        # is_causal aligns the mask to the top-left corner, which is wrong once keys include a
        # cached prefix: query i sits at absolute position S - T + i and may see keys 0..S-T+i.
        q_pos = torch.arange(S - T, S, device=k.device)[:, None]  # (T, 1)
        k_pos = torch.arange(S, device=k.device)[None, :]  # (1, S)
        return k, v, visible(q_pos, k_pos, window)


class PackedDocuments:
    """Several documents per row (packed fine-tuning): attention stays inside each one, positions restart.

    It plugs into the KV-cache seam but stores nothing: `positions` are each token's place in its
    own document, and `update` hands back the keys and values it is given with a mask where a
    query sees only earlier keys of the same document. Packed rows then compute exactly what each
    document alone would (tests/finetune/test_chat.py holds losses and gradients to 1e-5).
    """

    length = 0

    def __init__(self, doc_ids: torch.Tensor, positions: torch.Tensor) -> None:
        self.doc_ids, self.pos = doc_ids, positions  # (B, T) each
        self._masks: dict[int | None, torch.Tensor] = {}

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        return self.pos.to(device)  # (B, T)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if window not in self._masks:  # one mask per window size, shared by the layers
            doc, pos = self.doc_ids.to(k.device), self.pos.to(k.device)
            same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
            self._masks[window] = (same & visible(pos[:, :, None], pos[:, None, :], window)).unsqueeze(1)
        return k, v, self._masks[window]  # mask (B, 1, T, T)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      dropout: float) -> torch.Tensor:
    """Attention of H query heads over K <= H key/value heads; q (B, H, T, D), k/v (B, K, S, D)."""
    B, H, T, D = q.shape
    K = k.size(1)
    if K == H:
        if mask is None:
            return cpu_kernels.attention(q, k, v, dropout_p=dropout, is_causal=True)
        return cpu_kernels.attention(q, k, v, mask, dropout_p=dropout)
    G = H // K
    if mask is None or dropout:  # training: the causal kernel needs one key head per query head
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, H, S, D)
        return grouped_attention(q, k, v, mask, dropout)
    # The G query heads of key head j (heads j*G .. j*G+G-1) become G*T rows attending to head j.
    mask = mask.repeat(*([1] * (mask.dim() - 2)), G, 1)  # (G*T, S) or (B, 1, G*T, S)
    y = cpu_kernels.attention(q.reshape(B, K, G * T, D), k, v, mask)  # (B, K, G*T, D)
    return y.view(B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.window = config.window_of(layer)
        self.dropout = config.dropout
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.c_attn = Linear(config.n_embd, q_width + 2 * kv_width, bias=config.attn_bias)
        self.c_proj = Linear(q_width, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.eps)
            self.k_norm = RMSNorm(self.head_dim, config.eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, _ = x.size()
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([H * D, K * D, K * D], dim=2)  # (B, T, H*D), (B, T, K*D) x 2
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # each head's vector normalised on its own
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or K, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        mask = None
        if cache is not None:
            k, v, mask = cache.update(layer, k, v, self.window)  # (B, K, S, D); mask (T, S) or (B, 1, T, S)
        elif self.window is not None and self.window < T:
            pos = torch.arange(T, device=x.device)
            mask = visible(pos[:, None], pos[None, :], self.window)  # (T, T)

        y = grouped_attention(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.resid_dropout(self.c_proj(y))
