"""Validation during training: what is measured, which measurement is best, and when to stop.

The trainer's own measure is the mean of each objective term over the validation batches. A
fine-tuning task adds its metrics (accuracy, F1) through a `ValidationMetrics` object; one that
`includes_loss` measures the loss in the same pass over the data, and the trainer's loss pass is
skipped. `Selection` names the metric and direction that decide the best validation, which drives
early stopping and, with `keep_best`, the model saved to `out/best`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn as nn

from lmforge.train import distributed
from lmforge.train.objectives import BatchSource, Objective, reported
from lmforge.train.runtime import Runtime

log = logging.getLogger(__name__)


@runtime_checkable
class ValidationMetrics(Protocol):
    """Task metrics of the model on its validation data."""

    includes_loss: bool  # True: the result holds "loss" too, from the same pass, and replaces the trainer's loss pass

    def __call__(self, model: nn.Module) -> dict[str, float]: ...


@dataclass(frozen=True)
class Selection:
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def better(self, value: float, best: float) -> bool:
        return value > best if self.mode == "max" else value < best


@dataclass(frozen=True)
class ValidationPolicy:
    """How validations are scored beyond the loss, which is best, and whether the best model is kept."""

    metrics: ValidationMetrics | None = None
    select: Selection = field(default_factory=Selection)
    keep_best: bool = False


class Evaluator:
    """Measures validations and tracks them: the history, the best value, the evaluations since it
    improved. Its `state()` goes into resumable checkpoints so a resumed run stops where the
    uninterrupted one would."""

    def __init__(self, objective: Objective, source: BatchSource | None, policy: ValidationPolicy,
                 eval_batches: int, patience: int, resumed: dict[str, Any] | None = None) -> None:
        self.objective, self.source, self.policy = objective, source, policy
        self.eval_batches, self.patience = eval_batches, patience
        resumed = resumed or {}
        self.best: float = resumed.get("best_val", policy.select.worst)
        self.bad_evals: int = resumed.get("bad_evals", 0)
        self.history: list[tuple[int, dict[str, float]]] = [tuple(v) for v in resumed.get("val_losses", [])]
        self.stopped = False

    @torch.no_grad()
    def measure(self, model: nn.Module, rt: Runtime) -> dict[str, float]:
        """Mean of each term over the validation batches (rounded up to a multiple of the world size),
        plus the task metrics; {} without validation data."""
        if self.source is None:
            return {}
        metrics = self.policy.metrics
        model.eval()
        try:
            if metrics is not None and metrics.includes_loss:  # one pass gives the loss and the metrics
                return metrics(model)
            out = self._loss(model, rt)
            if metrics is not None:
                out.update(metrics(model))
            return out
        finally:
            model.train()

    def _loss(self, model: nn.Module, rt: Runtime) -> dict[str, float]:
        names, d = reported(self.objective), rt.dist
        sums = torch.zeros(2 * len(names), dtype=torch.float64)
        for i in range(math.ceil(self.eval_batches / d.world_size)):
            batch = self.source.micro_batch(i * d.world_size + d.rank)
            counts = self.objective.counts(batch)
            with rt.autocast():
                parts = self.objective.sums(model, rt.to_device(batch))
            sums += torch.tensor([float(parts[t]) for t in names] + [counts[t] for t in names], dtype=torch.float64)
        sums = distributed.all_sum(sums, d).tolist()
        out = {t: sums[i] / max(sums[len(names) + i], 1.0) for i, t in enumerate(names)}
        out["loss"] = sum(out[t] for t in self.objective.terms)
        return out

    def first(self, val: dict[str, float]) -> None:
        """The validation before training: the baseline every later one must beat."""
        self.history.append((0, val))
        self.best = val[self.policy.select.metric]

    def record(self, step: int, val: dict[str, float]) -> bool:
        """Add a validation during training; True when it is the best so far. Sets `stopped` once
        `patience` evaluations in a row were not better."""
        self.history.append((step, val))
        key = self.policy.select.metric
        if self.policy.select.better(val[key], self.best):
            self.best, self.bad_evals = val[key], 0
            return True
        self.bad_evals += 1
        if self.patience and self.bad_evals >= self.patience:
            log.info("early stopping at step %d: no better val %s in %d evaluations", step, key, self.bad_evals)
            self.stopped = True
        return False

    def final(self, step: int, val: dict[str, float]) -> bool:
        """Add the validation after the last step; True when it beats the best of the earlier ones."""
        self.history.append((step, val))
        return self.policy.select.better(val[self.policy.select.metric], self.best)

    def measured_at(self, step: int) -> bool:
        return bool(self.history) and self.history[-1][0] == step

    @property
    def last(self) -> dict[str, float] | None:
        return self.history[-1][1] if self.history else None

    def state(self) -> dict[str, Any]:
        return {"best_val": self.best, "bad_evals": self.bad_evals, "val_losses": [list(v) for v in self.history]}
