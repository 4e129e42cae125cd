"""The training loop shared by pretraining (GPT, BERT) and fine-tuning.

One optimizer step = `grad_accum` micro-batches on each of `world_size` processes. Micro-batch
`m` of step `s` on rank `r` is global batch number `(s * grad_accum + m) * world_size + r` of the
batch source, so a 2-process run with grad_accum 1 sees exactly the batches of a 1-process run
with grad_accum 2. Every loss term is summed over its units and divided by the units of the
whole step (counted before the forward passes and summed over ranks): the gradient is the
large-batch gradient however the batch is split.

Resumable checkpoints (`save_every`) hold weights, optimizer state, RNG states and the step; the
data position *is* the step, since batches are fetched by index. A run killed at any point and
started again continues the loss curve bit for bit on CPU.

`fit` is a short loop over three components, one job each: `TrainLogger` (loss windows,
throughput, log.jsonl), `Evaluator` (validation, best value, early stopping) and `Checkpointer`
(final, best and resumable checkpoints, and resuming from them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge.models.checkpoint_io import resolve_device
from lmforge.models.protocols import CheckpointsActivations
from lmforge.train import distributed
from lmforge.train.checkpointer import Checkpointer, ModelExport
from lmforge.train.config import TrainConfig
from lmforge.train.evaluation import Evaluator, ValidationPolicy
from lmforge.train.objectives import BatchSource, Objective, reported
from lmforge.train.optim import build_optimizers, lr_factor, set_lr
from lmforge.train.runtime import Runtime, autocast_settings, bf16_is_fast
from lmforge.train.trainlog import PEAK_FLOPS, TrainLogger, peak_flops

log = logging.getLogger(__name__)

__all__ = ["PEAK_FLOPS", "TrainResult", "Trainer", "bf16_is_fast", "peak_flops"]


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    train_losses: list[tuple[int, float]]
    val_losses: list[tuple[int, dict[str, float]]]
    tokens_per_second: float
    seconds: float
    stopped_early: bool = False
    train_seconds: float = 0.0  # optimizer steps only: no evaluation, checkpointing or setup
    resumed_from: int | None = None

    @property
    def val_before(self) -> dict[str, float]:
        return self.val_losses[0][1] if self.val_losses else {}

    @property
    def val_after(self) -> dict[str, float]:
        return self.val_losses[-1][1] if self.val_losses else {}


def _due(every: int, step: int, last: int) -> bool:
    """Periodic work (evaluation, resumable checkpoints) at multiples of `every`, except the last step,
    which the end of `fit` covers anyway."""
    return bool(every) and step % every == 0 and step != last


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_source: BatchSource,
        cfg: TrainConfig,
        out_dir: str | Path,
        val_source: BatchSource | None = None,
        on_step: Callable[[int, float], None] | None = None,
        extra: dict[str, Any] | None = None,
        *,
        policy: ValidationPolicy | None = None,
        export: ModelExport | None = None,
    ) -> None:
        """`policy` adds task metrics to validation and picks the best one (for early stopping and,
        with `keep_best`, `out_dir/best`); `export` writes finished models that are not plain lmforge
        models (task heads, HF models); `extra` is stored with them; `on_step(step, loss)` runs on rank 0."""
        self.model, self.objective, self.cfg = model, objective, cfg
        self.train_source, self.val_source = train_source, val_source
        self.policy = policy or ValidationPolicy()
        self.out = Path(out_dir)
        self.on_step = on_step
        self.extra = extra or {}
        self.dist = distributed.from_env()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.checkpointer = Checkpointer(self.out, self.dist, cfg.keep_checkpoints, export)
        self.rt = Runtime(self.device, self.dist)
        self.evaluator = Evaluator(objective, val_source, self.policy, cfg.eval_batches, cfg.early_stopping)

    # ------------------------------------------------------------------ setup

    def setup(self) -> dict[str, Any] | None:
        """Build the wrapped model and optimizers; restore the newest checkpoint if there is one."""
        resume = self.checkpointer.restore_weights(self.model)
        torch.manual_seed(self.cfg.seed + 1000 + self.dist.rank)  # dropout draws differ per rank
        self.model.to(self.device)
        for module in self.model.modules():  # the GPT may sit inside a task head or a peft wrapper
            if isinstance(module, CheckpointsActivations):
                module.checkpoint_activations = self.cfg.activation_checkpointing
        self.wrapped = distributed.wrap(self.model, self.dist, self.cfg.distributed, self.device)
        if self.cfg.compile:
            self.wrapped.compile()  # in place: parameter names (and checkpoints) stay unchanged
        self.optimizers = build_optimizers(self.model, self.cfg, self.device)
        amp, amp_dtype = autocast_settings(self.cfg.precision, self.device)
        self.rt = Runtime(self.device, self.dist, amp, amp_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and amp_dtype == torch.float16)
        self.checkpointer.bind(self.model, self.wrapped, self.optimizers, self.scaler)
        if resume is None:
            return None
        trainer = self.checkpointer.restore_state(resume)
        self.evaluator = Evaluator(self.objective, self.val_source, self.policy, self.cfg.eval_batches,
                                   self.cfg.early_stopping, resumed=trainer)
        log.info("resumed from %s (step %d)", resume, trainer["step"])
        return trainer

    # ------------------------------------------------------------------ one step

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients over ranks only on the last micro-batch of a step."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        from torch.distributed.fsdp import FSDPModule

        if isinstance(self.wrapped, FSDPModule):
            self.wrapped.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()

    def backward(self, step: int) -> tuple[dict[str, float], int]:
        """Forward/backward every micro-batch of 0-based `step`; (mean per term and metric, tokens).

        Afterwards each parameter's .grad is the gradient of the whole step's token-mean loss.
        """
        cfg, d, terms = self.cfg, self.dist, self.objective.terms
        names = reported(self.objective)
        first = step * cfg.grad_accum
        batches = [self.train_source.micro_batch((first + m) * d.world_size + d.rank) for m in range(cfg.grad_accum)]
        local = [sum(self.objective.counts(b)[t] for b in batches) for t in names]
        local.append(sum(b["input_ids"].numel() for b in batches))
        totals = distributed.all_sum(torch.tensor(local, dtype=torch.float64), d).tolist()
        counts, tokens = totals[:-1], int(totals[-1])
        sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        for m, batch in enumerate(batches):
            with self._sync(m == len(batches) - 1):
                with self.rt.autocast():
                    parts = self.objective.sums(self.wrapped, self.rt.to_device(batch))
                # DDP and FSDP average gradients over ranks; scaling by world_size makes that a sum.
                loss = sum(parts[t] / max(c, 1.0) for t, c in zip(terms, counts, strict=False)) * d.world_size
                self.scaler.scale(loss).backward()
            sums += torch.stack([parts[t].detach().double() for t in names])  # no GPU sync per micro-batch
        sums = distributed.all_sum(sums.cpu(), d)
        return {t: float(s / max(c, 1.0)) for t, s, c in zip(names, sums.tolist(), counts, strict=True)}, tokens

    def update(self) -> float | None:
        """Clip, step every optimizer, clear gradients; returns the gradient norm before clipping."""
        from torch.distributed.tensor import DTensor

        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        grad_norm = None
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return grad_norm

    def train_step(self, step: int, logger: TrainLogger) -> None:
        """Optimizer step `step` (1-based), recorded in `logger`; a non-finite loss stops the run."""
        t0 = time.perf_counter()
        factor = lr_factor(step - 1, self.cfg)
        set_lr(self.optimizers, factor)
        losses, tokens = self.backward(step - 1)
        grad_norm = self.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        metrics = {k: losses.pop(k) for k in reported(self.objective)[len(self.objective.terms):]}
        loss = logger.step(step, losses, tokens, time.perf_counter() - t0, self.cfg.lr * factor, grad_norm, metrics)
        if self.on_step is not None and self.dist.main:
            self.on_step(step, loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower lr or enable grad_clip")

    # ------------------------------------------------------------------ validation

    def evaluate(self) -> dict[str, float]:
        """Validation loss terms and task metrics of the current model ({} without validation data)."""
        return self.evaluator.measure(self.wrapped, self.rt)

    def validate(self, step: int, logger: TrainLogger) -> None:
        """Evaluate during training; keep the model when it is the best so far (with `keep_best`)."""
        val = self.evaluate()
        if not val:
            return
        if step == 0:
            self.evaluator.first(val)
        improved = step == 0 or self.evaluator.record(step, val)
        logger.validation(step, val, f"step {step}")
        if improved and self.policy.keep_best:
            self.checkpointer.save_best({**self.extra, "step": step, "val": val})
        logger.pause()  # evaluation time is not training throughput

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        cfg, t_start = self.cfg, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        distributed.init(self.dist, self.device)
        resumed = self.setup()
        start = resumed["step"] if resumed else 0
        logger = TrainLogger(self.out, cfg, self.model, self.device, self.dist.world_size, self.dist.main, start,
                             resumed is not None, t_start)
        if resumed is None:
            self.validate(0, logger)
        self.wrapped.train()
        step = start
        for step in range(start + 1, cfg.steps + 1):
            self.train_step(step, logger)
            if _due(cfg.eval_every, step, cfg.steps) and self.val_source is not None:
                self.validate(step, logger)
            if _due(cfg.save_every, step, cfg.steps) and not self.evaluator.stopped:
                self.checkpointer.save_resumable(step, self.evaluator.state())
                logger.pause()
            if self.evaluator.stopped:
                break
        checkpoint = self._finish(step, logger)
        return TrainResult(
            checkpoint=checkpoint,
            steps=step,
            train_losses=logger.train_losses,
            val_losses=self.evaluator.history,
            tokens_per_second=logger.tokens_per_second,
            seconds=time.perf_counter() - t_start,
            stopped_early=self.evaluator.stopped,
            resumed_from=start if resumed else None,
            train_seconds=logger.train_seconds,
        )

    def _finish(self, step: int, logger: TrainLogger) -> Path:
        """The last validation (unless early stopping just made it), the best model if that is it, and
        the final checkpoint."""
        best = False
        if not (self.evaluator.stopped and self.evaluator.measured_at(step)):
            val = self.evaluate()
            if val:
                best = self.evaluator.final(step, val)
                logger.validation(step, val, "final")
        logger.close()
        extra = {**self.extra, "steps": step, "val": self.evaluator.last}
        if self.policy.keep_best and best:
            self.checkpointer.save_best(extra)
        return self.checkpointer.save_final(extra)
