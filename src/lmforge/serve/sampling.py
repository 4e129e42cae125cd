"""Sampling parameters and the choice of each row's next token, vectorised over a batch.

Every row keeps its own parameters and its own random generator, seeded per request and per
sample, so a seed reproduces a text whatever else happens to share the batch. Greedy rows take
the arg-max (ties to the lowest id, as `transformers` does), so greedy output matches HF's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from lmforge.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 picks the most likely token (greedy)
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # nucleus: the smallest set of tokens holding this much probability
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL style)
    n: int = 1  # samples per prompt
    stop: list[str] = field(default_factory=list)  # texts that end generation (not included in the output)
    seed: int | None = None  # None draws one from the OS: unrepeatable on purpose
    ignore_eos: bool = False  # keep going past the end-of-text token (benchmarks)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (-100..100)
    logprobs: int | None = None  # report each new token's log-probability and this many alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (the first has none)

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
            ("temperature", self.temperature >= 0, ">= 0 (0 is greedy)"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 disables)"),
            ("n", self.n >= 1, ">= 1"),
            ("logprobs", self.logprobs is None or self.logprobs >= 0, ">= 0 or None"),
            ("prompt_logprobs", self.prompt_logprobs is None or self.prompt_logprobs >= 0, ">= 0 or None"),
            ("logit_bias", all(-100 <= b <= 100 for b in self.logit_bias.values()), "values in [-100, 100]"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name} must be {allowed} (got {getattr(self, name)!r})")
        if self.stop is None or isinstance(self.stop, str):
            self.stop = [self.stop] if self.stop else []
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop must be non-empty strings (got {self.stop!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, sample: int) -> torch.Generator:
        """The random stream of sample `sample` (0..n-1) of a request."""
        seed = int.from_bytes(os.urandom(8), "little") >> 1 if self.seed is None else self.seed
        return torch.Generator().manual_seed((seed * 1_000_003 + sample) % (2**63))


def apply_logit_bias(logits: torch.Tensor, biases: list[dict[int, float]]) -> torch.Tensor:
    """Add each row's {token id: bias} to its logits (B, V), as OpenAI's logit_bias does before sampling."""
    rows, cols, values = [], [], []
    for row, bias in enumerate(biases):
        rows += [row] * len(bias)
        cols += list(bias)
        values += list(bias.values())
    if not rows:
        return logits
    out = logits.clone()
    out[rows, cols] += torch.tensor(values, dtype=logits.dtype, device=logits.device)
    return out


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Scale the logits (B, V) of tokens already seen (B, V) bool by penalty (B, 1) toward less likely."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _top_k(logits: torch.Tensor, ks: list[int]) -> torch.Tensor:
    if not any(ks):
        return logits
    V = logits.size(-1)
    k = torch.tensor([min(k, V) if k else V for k in ks], device=logits.device)  # (B,)
    values = torch.topk(logits, int(k.max()), dim=-1).values  # (B, kmax), descending
    kth = values.gather(1, (k - 1)[:, None])  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(probs: torch.Tensor, ps: list[float]) -> torch.Tensor:
    if all(p >= 1.0 for p in ps):
        return probs
    p = torch.tensor(ps, device=probs.device, dtype=probs.dtype)[:, None]  # (B, 1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches p; the most likely token always survives.
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(1, order, sorted_probs)


def choose(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    seen: torch.Tensor | None = None,
) -> list[int]:
    """Next token per row of logits (B, V); `seen` (B, V) marks tokens for the repetition penalty."""
    logits = apply_logit_bias(logits.float(), [p.logit_bias for p in params])
    if seen is not None and any(p.repetition_penalty != 1.0 for p in params):
        penalty = torch.tensor([p.repetition_penalty for p in params], device=logits.device)[:, None]
        logits = apply_repetition_penalty(logits, seen, penalty)
    picks = logits.argmax(dim=-1).tolist()  # greedy rows keep these
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:
        return picks
    rows = logits[sampled] if len(sampled) < len(params) else logits  # (S, V)
    temps = torch.tensor([params[i].temperature for i in sampled], device=rows.device)[:, None]
    rows = _top_k(rows / temps, [params[i].top_k for i in sampled])
    probs = _top_p(torch.softmax(rows, dim=-1), [params[i].top_p for i in sampled])  # (S, V)
    cdf = probs.double().cumsum(dim=-1).cpu()  # (S, V)
    # Inverse-CDF sampling with one uniform per row from that row's own generator.
    u = torch.stack([torch.rand((), generator=generators[i], dtype=torch.float64) for i in sampled])  # (S,)
    target = u.clamp(min=1e-12)[:, None] * cdf[:, -1:]  # (S, 1)
    drawn = torch.searchsorted(cdf, target).clamp(max=cdf.size(-1) - 1)[:, 0].tolist()
    for i, token in zip(sampled, drawn, strict=True):
        picks[i] = token
    return picks
