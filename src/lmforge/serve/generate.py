"""Autoregressive sampling from a trained checkpoint.

The prompt is run once to fill the KV cache; afterwards each step feeds only the newest
token. Sampling draws from a CPU generator seeded per prompt, so a given seed gives the same
text regardless of batch composition and (up to float differences) of the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.errors import ConfigError, InputError, UserError
from lmforge.models.gpt import GPT, KVCache
from lmforge.tokenize.bpe import EOS_TOKEN, load_tokenizer
from lmforge.train.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 means greedy
    top_k: int | None = 50  # 0 or None disables
    top_p: float = 1.0  # 1.0 disables nucleus sampling
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (got {self.temperature})")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 or None (got {self.top_k})")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p})")


def _next_token(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> int:
    """Pick one id from the last position's logits (V,)."""
    logits = logits.float().cpu()
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (V,)
    if cfg.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= cfg.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.no_grad()
def generate_tokens(
    model: GPT, prompt_ids: list[int], cfg: GenerationConfig, eos_id: int | None
) -> list[int]:
    """Return only the new tokens (without the EOS that stopped generation)."""
    context = list(prompt_ids)
    if not context:
        if eos_id is None:
            raise UserError("cannot generate from an empty prompt without an end-of-text token")
        context = [eos_id]  # documents follow an EOS in training, so it is the natural start
    block = model.config.block_size
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)

    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        cache: KVCache | None = None
        feed = context[-block:]
        for _ in range(cfg.max_new_tokens):
            if cache is None or cache.length + len(feed) > block:
                # Start over on the last `block` tokens: the same context a model without a cache sees.
                cache = model.new_kv_cache()
                feed = (context + out)[-block:]
            idx = torch.tensor([feed], dtype=torch.long, device=device)  # (1, T)
            logits, _ = model(idx, kv_cache=cache)  # (1, T, V)
            token = _next_token(logits[0, -1], cfg, gen)
            if cfg.stop_at_eos and token == eos_id:
                break
            out.append(token)
            feed = [token]
    finally:
        model.train(was_training)
    return out


def generate(model: GPT, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig) -> list[str]:
    """Continue each prompt; returns the continuation text only."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    results = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        new = generate_tokens(model, ids, cfg, eos)
        results.append(tokenizer.decode(new, skip_special_tokens=True))
    return results


def load_for_generation(
    checkpoint_dir: str | Path, tokenizer_dir: str | Path, device: str = "auto"
) -> tuple[GPT, Tokenizer]:
    model = load_checkpoint(checkpoint_dir, device=device)
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise InputError(
            f"tokenizer {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens but checkpoint "
            f"{checkpoint_dir} was trained for {model.config.vocab_size}: they do not belong together"
        )
    logger.info("loaded %s on %s", checkpoint_dir, next(model.parameters()).device)
    return model, tokenizer
