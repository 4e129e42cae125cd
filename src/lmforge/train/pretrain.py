"""Pretraining: next-token prediction on random windows of a flat token stream.

A deliberately plain loop (nanoGPT style): AdamW, linear warmup then cosine decay, gradient
clipping, bf16 autocast on GPUs that support it. Everything random is seeded from the config
so the same config and data give the same losses.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lmforge.errors import ConfigError, UserError
from lmforge.evaluate.perplexity import perplexity
from lmforge.models.gpt import GPT, PRESETS, GPTConfig, config_from_preset
from lmforge.train.checkpoint import resolve_device, save_checkpoint
from lmforge.train.config import PretrainConfig  # torch-free so recipes validate; re-exported here

logger = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "PretrainResult", "build_optimizer", "lr_at", "pretrain"]


@dataclass
class PretrainResult:
    checkpoint: Path
    steps: int
    train_losses: list[tuple[int, float]]
    val_ppl_before: float
    val_ppl_after: float
    tokens_per_second: float
    seconds: float


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last step (`step` is 0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(model: nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW where only matmul weights decay: shrinking norms, biases or embeddings only hurts."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # tied tensors appear once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def _check_tokens(name: str, tokens: np.ndarray, needed: int, vocab_size: int, cfg: PretrainConfig) -> None:
    if len(tokens) < needed:
        raise UserError(
            f"{name} has {len(tokens)} tokens but seq_len={cfg.seq_len} needs at least {needed}; "
            "add more text or lower seq_len"
        )
    top = int(np.max(tokens))
    if top >= vocab_size:
        raise UserError(f"{name} contains token id {top} but the vocabulary has only {vocab_size} ids")


class _Batches:
    """Random contiguous windows of seq_len + 1 tokens; inputs are the first seq_len, targets the last."""

    def __init__(self, tokens: np.ndarray, cfg: PretrainConfig, device: torch.device) -> None:
        self.tokens, self.cfg, self.device = tokens, cfg, device
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.cfg.seq_len
        starts = torch.randint(len(self.tokens) - L, (self.cfg.batch_size,), generator=self.gen).tolist()
        chunk = np.stack([np.asarray(self.tokens[s : s + L + 1]) for s in starts]).astype(np.int64)
        chunk = torch.from_numpy(chunk)  # (B, L + 1)
        if self.device.type == "cuda":
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]  # (B, L), (B, L)


def _model_config(cfg: PretrainConfig, vocab_size: int) -> GPTConfig:
    overrides = dict(cfg.model)
    if "block_size" not in overrides:
        overrides["block_size"] = max(PRESETS[cfg.preset]["block_size"], cfg.seq_len)
    gcfg = config_from_preset(cfg.preset, vocab_size, **overrides)
    if gcfg.block_size < cfg.seq_len:
        raise ConfigError(f"model.block_size ({gcfg.block_size}) must be at least seq_len ({cfg.seq_len})")
    return gcfg


def pretrain(
    config: PretrainConfig,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    vocab_size: int,
    out_dir: str | Path,
    on_step: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Train a fresh model and save it to `out_dir/checkpoint`; `on_step(step, loss)` sees every step."""
    t_start = time.perf_counter()
    _check_tokens("train_tokens", train_tokens, config.seq_len + 2, vocab_size, config)
    _check_tokens("val_tokens", val_tokens, config.seq_len + 1, vocab_size, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    device = resolve_device(config.device)
    gcfg = _model_config(config, vocab_size)
    model = GPT(gcfg).to(device)
    logger.info(
        "model: %s, %.2fM non-embedding params, device %s",
        config.preset,
        model.num_params() / 1e6,
        device,
    )
    optimizer = build_optimizer(model, config, device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    batches = _Batches(train_tokens, config, device)

    def evaluate() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return perplexity(model, val_tokens, config.seq_len, config.batch_size, config.eval_batches)

    val_before = evaluate()
    logger.info("val perplexity before training: %.2f", val_before)

    losses: list[tuple[int, float]] = []
    tokens_per_step = config.batch_size * config.seq_len
    train_seconds = 0.0
    with (out / "log.jsonl").open("w", encoding="utf-8") as log:

        def write(record: dict[str, Any]) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()

        write({"step": 0, "val_ppl": val_before, "elapsed": time.perf_counter() - t_start})
        model.train()
        window_start, window_tokens = time.perf_counter(), 0
        for step in range(1, config.steps + 1):
            t0 = time.perf_counter()
            lr = lr_at(step - 1, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batches.next()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                _, loss = model(x, y)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()  # also waits for the GPU, so the timing below is honest
            train_seconds += time.perf_counter() - t0
            window_tokens += tokens_per_step

            losses.append((step, loss_value))
            if on_step is not None:
                on_step(step, loss_value)
            if step % config.log_every == 0 or step in (1, config.steps):
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                write(
                    {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "tokens_per_s": tps,
                        "elapsed": now - t_start,
                    }
                )
                logger.info(
                    "step %d/%d loss %.4f lr %.2e %.0f tok/s", step, config.steps, loss_value, lr, tps
                )
                window_start, window_tokens = time.perf_counter(), 0
            if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                ppl = evaluate()
                write({"step": step, "val_ppl": ppl, "elapsed": time.perf_counter() - t_start})
                logger.info("step %d val perplexity %.2f", step, ppl)
                window_start = time.perf_counter()  # evaluation time is not training throughput

        val_after = evaluate()
        write({"step": config.steps, "val_ppl": val_after, "elapsed": time.perf_counter() - t_start})
    logger.info("val perplexity after training: %.2f (before %.2f)", val_after, val_before)

    tokens_per_second = config.steps * tokens_per_step / max(train_seconds, 1e-9)
    checkpoint = save_checkpoint(
        model,
        gcfg,
        out / "checkpoint",
        extra={
            "pretrain": config.model_dump(mode="json"),
            "steps": config.steps,
            "val_ppl_before": val_before,
            "val_ppl_after": val_after,
        },
    )
    return PretrainResult(
        checkpoint=checkpoint,
        steps=config.steps,
        train_losses=losses,
        val_ppl_before=val_before,
        val_ppl_after=val_after,
        tokens_per_second=tokens_per_second,
        seconds=time.perf_counter() - t_start,
    )
