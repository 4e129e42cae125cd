"""Every model a run writes: the final `checkpoint/`, the best validation's `best/`, and the
periodic resumable `checkpoints/step-N/` (weights, optimizer, RNG, trainer state) it restarts from.

Plain lmforge models are written as lmforge checkpoints; a task model (a head on a backbone, an
HF model) brings a `ModelExport` that writes its own format. Resumable state holds the weights
alone for such models: that is all resuming reads back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from lmforge.models.checkpoint_io import WEIGHTS, save_checkpoint
from lmforge.models.protocols import LmforgeModel
from lmforge.train import distributed, state
from lmforge.train.distributed import Dist


class ModelExport(Protocol):
    """Writes a finished model (final or best) in a format other than an lmforge checkpoint."""

    def save(self, model: nn.Module, path: Path, extra: dict[str, Any]) -> None: ...


class Checkpointer:
    def __init__(self, out: Path, dist: Dist, keep: int, export: ModelExport | None = None) -> None:
        self.out, self.dist, self.keep, self.export = out, dist, keep, export
        self.root = out / "checkpoints"

    def bind(self, model: nn.Module, wrapped: nn.Module, optimizers: list, scaler) -> None:
        """The trained model, its (DDP/FSDP) wrapper, optimizers and gradient scaler, once they exist."""
        self.model, self.wrapped, self.optimizers, self.scaler = model, wrapped, optimizers, scaler

    # ------------------------------------------------------------------ resume

    def restore_weights(self, model: nn.Module) -> Path | None:
        """Load the newest resumable checkpoint's weights into `model`; its directory, or None."""
        from safetensors.torch import load_model

        resume = state.latest(self.root)
        if resume is not None:
            load_model(model, str(resume / WEIGHTS), strict=True)
        return resume

    def restore_state(self, resume: Path) -> dict[str, Any]:
        """Optimizer, RNG and gradient-scaler state of `resume`; returns the trainer state (step, validation)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        trainer, osd, rng = state.read_state(resume, self.dist.rank)
        set_optimizer_state_dict(self.wrapped, self.optimizers, osd, options=StateDictOptions(full_state_dict=True))
        state.set_rng_state(rng)
        if trainer.get("scaler"):
            self.scaler.load_state_dict(trainer["scaler"])
        return trainer

    # ------------------------------------------------------------------ saving

    def _full_states(self, with_optimizer: bool) -> tuple[dict, dict]:
        """Whole (unsharded) model and optimizer state on rank 0's CPU; every rank must call it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        if with_optimizer:
            return get_state_dict(self.wrapped, self.optimizers, options=opts)
        return get_model_state_dict(self.wrapped, options=opts), {}

    @staticmethod
    def _cpu_copy(model: LmforgeModel, model_state: dict) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # building a model draws init values; training must not notice
            copy = type(model)(model.config)
        missing, unexpected = copy.load_state_dict(model_state, strict=False)
        tied = {n for n, p in copy.named_parameters(remove_duplicate=False)} - {n for n, _ in copy.named_parameters()}
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        return copy

    def save_model(self, path: Path, extra: dict[str, Any]) -> Path:
        """The model as a finished artifact at `path` (every rank calls this; rank 0 writes)."""
        model = self.model
        if self.export is not None:
            if self.dist.main:
                self.export.save(model, path, extra)
            distributed.barrier(self.dist)
            return path
        model_state, _ = self._full_states(with_optimizer=False)
        if self.dist.main:
            save_checkpoint(self._cpu_copy(model, model_state), model.config, path, extra=extra)
        distributed.barrier(self.dist)
        return path

    def save_best(self, extra: dict[str, Any]) -> Path:
        return self.save_model(self.out / "best", extra)

    def save_final(self, extra: dict[str, Any]) -> Path:
        return self.save_model(self.out / "checkpoint", extra)

    def save_resumable(self, step: int, trainer_state: dict[str, Any]) -> None:
        d, model = self.dist, self.model
        tmp = self.root / f"{state.step_dir_name(step)}.tmp"
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier(d)
        state.write_rank_files(tmp, d.rank)
        model_state, optim_state = self._full_states(with_optimizer=True)
        if d.main:
            if isinstance(model, LmforgeModel):
                save_checkpoint(self._cpu_copy(model, model_state), model.config, tmp, extra={"step": step})
            else:  # a task model: the weights alone, which is all that resuming reads
                from safetensors.torch import save_model as save_weights

                save_weights(model, str(tmp / WEIGHTS), metadata={"format": "pt"})
            scaler_state = self.scaler.state_dict() if self.scaler.is_enabled() else None
            state.write_main_files(tmp, optim_state, {**trainer_state, "step": step, "scaler": scaler_state})
            state.publish(self.root, tmp, step, self.keep)
        distributed.barrier(d)
