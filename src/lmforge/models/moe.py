"""A mixture-of-experts feed-forward layer: each token goes through k of E SwiGLU experts.

A router scores every expert for every token; the k best are run and their outputs summed,
weighted by the router's probabilities. The families differ in small ways, all covered here:

    Mixtral, Qwen3-MoE (norm_topk_prob)   softmax over E, top k, renormalise the k to sum to 1
    Qwen2-MoE, Qwen3-MoE (default)        softmax over E, top k, weights kept as they are
    Qwen2-MoE                             plus a shared expert every token passes, sigmoid-gated

Expert weights are stacked, (E, 2*Hm, C) for [gate; up] and (E, C, Hm) for down, so the work
is grouped: the token-expert pairs are sorted by expert and each expert multiplies its whole
group at once. The only Python loop is over experts that received tokens, never over tokens.

While training, `aux` holds what the load-balancing loss needs (Switch Transformer's: E times
the sum over experts of the fraction of tokens routed to it times its mean probability); the
model combines the layers the way `transformers` does, so the loss matches theirs.

Shape letters: N tokens (B*T), C channels, E experts, k experts per token, Hm expert width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.cpu_kernels import Dropout, Linear, Packed, can_pack, pack, packed_linear
from lmforge.models.gpt_config import GPTConfig


def expert_ffn(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One expert's SwiGLU on its tokens: x (n, C), gate_up (2*Hm, C), down (C, Hm) -> (n, C)."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)  # (n, Hm) each
    return F.linear(F.silu(gate) * up, down)


def grouped_experts(x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, n_expert: int,
                    ffn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Sum over each token's k experts of weight * ffn(tokens, e); x (N, C), experts/weights (N, k)."""
    N, k = experts.shape
    flat = experts.reshape(-1)  # (N*k,) expert of each token-expert pair
    order = flat.argsort(stable=True)  # pairs grouped by expert
    token = order // k  # (N*k,) the token of each sorted pair
    counts = torch.bincount(flat, minlength=n_expert).tolist()
    rows = x[token]  # (N*k, C) each token copied once per expert it visits
    outs, start = [], 0
    for e, n in enumerate(counts):
        if n:
            outs.append(ffn(rows[start:start + n], e))
            start += n
    y = torch.cat(outs) * weights.reshape(-1)[order, None].to(x.dtype)  # (N*k, C)
    return torch.zeros_like(x).index_add_(0, token, y)  # (N, C)


class MoE(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C, E, Hm = config.n_embd, config.n_expert, config.expert_hidden
        self.k, self.renorm = config.n_expert_active, config.moe_renorm
        self.router = Linear(C, E, bias=False)  # (E, C)
        self.gate_up = nn.Parameter(torch.empty(E, 2 * Hm, C))  # rows [gate; up] per expert
        self.down = nn.Parameter(torch.empty(E, C, Hm))
        self.shared = self.shared_gate = None
        if config.moe_shared_hidden:
            self.shared = nn.ModuleDict(dict(
                c_fc=Linear(C, 2 * config.moe_shared_hidden, bias=config.bias),
                c_proj=Linear(config.moe_shared_hidden, C, bias=config.bias),
            ))
            self.shared_gate = Linear(C, 1, bias=False)
        self.dropout = Dropout(config.dropout)
        self.aux: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lora: list[str] = []  # expert weights with LoRA updates (add_lora)
        self.packed: list[tuple[Packed, Packed]] = []  # per expert (gate_up, down), for CPU decoding
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.gate_up.device.type != "meta":
            nn.init.normal_(self.gate_up, std=0.02)
            nn.init.normal_(self.down, std=0.02 / math.sqrt(2))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, E), top-k weights (N, k), top-k experts (N, k)) for tokens x (N, C)."""
        logits = self.router(x)  # (N, E)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.k, dim=-1)  # (N, k) each
        if self.renorm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.training and torch.is_grad_enabled():
            chosen = F.one_hot(experts, probs.size(-1)).float().mean(dim=0)  # (k, E) share of tokens per slot
            self.aux = (chosen, probs.mean(dim=0))  # with (E,) mean probability per expert
        return logits, weights, experts

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert `e` on its tokens x (n, C), plus its LoRA updates while they are being trained."""
        if self.packed and not self.lora:  # decoding on a CPU (cpu_kernels.pack_for_inference)
            gate, up = packed_linear(x, self.packed[e][0], self.gate_up[e]).chunk(2, dim=-1)
            return packed_linear(F.silu(gate) * up, self.packed[e][1], self.down[e])
        if not self.lora:
            return expert_ffn(x, self.gate_up[e], self.down[e])
        h = F.linear(x, self.gate_up[e]) + self._lora_delta(x, "gate_up", e)  # (n, 2*Hm)
        gate, up = h.chunk(2, dim=-1)
        h = F.silu(gate) * up
        return F.linear(h, self.down[e]) + self._lora_delta(h, "down", e)

    def pack_weights(self, budget_bytes: int) -> int:
        """Packed per-expert copies for CPU decoding (see cpu_kernels.Linear), if they fit the budget."""
        size = (self.gate_up.numel() + self.down.numel()) * self.gate_up.element_size()
        current = self.packed and self.packed[0][0][0] == self.gate_up._version
        if current or self.lora or size > budget_bytes or not can_pack(self.gate_up):
            return 0
        self.packed = [(pack(self.gate_up[e]), pack(self.down[e])) for e in range(self.gate_up.size(0))]
        return size

    # ---- LoRA on the stacked experts: one rank-r update B[e] @ A[e] per expert and weight

    def add_lora(self, r: int, alpha: float, weights: tuple[str, ...] = ("gate_up", "down")) -> None:
        """Trainable low-rank updates for each expert; named lora_* so peft leaves them trainable."""
        self.lora_scale = alpha / r
        for name in weights:
            out_dim, in_dim = getattr(self, name).shape[1:]
            a = torch.empty(self.gate_up.size(0), r, in_dim, device=self.gate_up.device, dtype=self.gate_up.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as peft initialises A; B starts at zero
            setattr(self, f"lora_{name}_A", nn.Parameter(a))
            setattr(self, f"lora_{name}_B", nn.Parameter(a.new_zeros(a.size(0), out_dim, r)))
            self.lora.append(name)

    def _lora_delta(self, x: torch.Tensor, name: str, e: int) -> torch.Tensor | float:
        if name not in self.lora:
            return 0.0
        a, b = getattr(self, f"lora_{name}_A")[e], getattr(self, f"lora_{name}_B")[e]  # (r, in), (out, r)
        return F.linear(F.linear(x, a), b) * self.lora_scale

    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold the updates into the expert weights and drop them: the result is a plain MoE again."""
        for name in self.lora:
            a, b = getattr(self, f"lora_{name}_A"), getattr(self, f"lora_{name}_B")
            getattr(self, name).add_(torch.bmm(b, a) * self.lora_scale)  # (E, out, r) @ (E, r, in)
            delattr(self, f"lora_{name}_A")
            delattr(self, f"lora_{name}_B")
        self.lora = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        _, weights, experts = self.route(flat)
        y = grouped_experts(flat, experts, weights, self.gate_up.size(0), self.expert)  # (N, C)
        if self.shared is not None:
            gate, up = self.shared.c_fc(flat).chunk(2, dim=-1)
            shared = self.shared.c_proj(F.silu(gate) * up)  # (N, C)
            y = y + torch.sigmoid(self.shared_gate(flat)) * shared
        return self.dropout(y.view(B, T, C))


def load_balancing_loss(layers: list[MoE]) -> torch.Tensor | None:
    """E * sum_e(f_e * P_e) with f and P averaged over layers first, as `transformers` computes it."""
    stats = [m.aux for m in layers if m.aux is not None]
    if not stats:
        return None
    chosen = torch.stack([c for c, _ in stats]).mean(dim=0)  # (k, E)
    probs = torch.stack([p for _, p in stats]).mean(dim=0)  # (E,)
    return probs.numel() * (chosen * probs[None, :]).sum()
