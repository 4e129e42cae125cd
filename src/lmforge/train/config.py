"""Pretraining config, kept free of torch so recipes validate without importing it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from lmforge.config import StrictModel
from lmforge.models.presets import PRESETS


class PretrainConfig(StrictModel):
    preset: str = "tiny"
    model: dict[str, Any] = Field(default_factory=dict, description="GPTConfig overrides, e.g. {n_layer: 4}")
    seq_len: int = Field(default=128, gt=0)
    batch_size: int = Field(default=16, gt=0)
    steps: int = Field(default=300, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    min_lr: float = Field(default=3e-4, ge=0)
    warmup_steps: int = Field(default=30, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping")
    eval_every: int = Field(default=100, ge=0, description="0 evaluates only before and after")
    eval_batches: int = Field(default=8, gt=0)
    log_every: int = Field(default=10, gt=0)
    val_percent: float = Field(default=5.0, gt=0, lt=100, description="documents held out for validation")
    seed: int = 0
    device: str = "auto"

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"must be one of {sorted(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must both be in [0, 1) (got {self.betas})")
        return self
