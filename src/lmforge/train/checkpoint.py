"""Checkpoints as the trainer writes them: the format itself lives in `lmforge.models.checkpoint_io`,
below training, so that export, serving and evaluation read weights without importing the trainer.
These names stay importable from here for the training code and its callers."""

from __future__ import annotations

from lmforge.models.checkpoint_io import (
    CONFIG,
    MODEL_CLASSES,
    MODEL_TYPE,
    WEIGHTS,
    load_checkpoint,
    model_class,
    read_checkpoint_config,
    resolve_device,
    save_checkpoint,
)

__all__ = ["CONFIG", "MODEL_CLASSES", "MODEL_TYPE", "WEIGHTS", "load_checkpoint", "model_class",
           "read_checkpoint_config", "resolve_device", "save_checkpoint"]
