"""Checkpoints as `model.safetensors` + `config.json`: no pickle, so loading runs no code.

safetensors also refuses tensors that share memory, which tied embeddings do; `save_model`
stores the shared tensor once and `load_model` re-ties it on load. `config.json` names the
model type, so one loader serves every lmforge model (GPT, BERT).

This lives with the models, below training, because reading a checkpoint is all that export,
serving and evaluation need: none of them should depend on the training loop to load weights.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from lmforge.config import shorten
from lmforge.errors import ConfigError, InputError
from lmforge.models.protocols import LmforgeModel
from lmforge.models.sizes import check_against_weights
from lmforge.records import temp_sibling

logger = logging.getLogger(__name__)

MODEL_TYPE = "lmforge-gpt"
# model_type in config.json -> the class that rebuilds it (the class carries `config_class`).
MODEL_CLASSES = {
    "lmforge-gpt": "lmforge.models.gpt:GPT",
    "lmforge-bert": "lmforge.models.bert:BertForPretraining",
}
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def model_class(model_type: str) -> type[torch.nn.Module]:
    module, name = MODEL_CLASSES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU, so the same recipe runs on a laptop and a GPU box."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {device!r})") from None


def save_checkpoint(model: LmforgeModel, config: Any, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write into a sibling temp dir, then move files into place, so readers never see half a file."""
    model_type = type(model).model_type
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stick to the checkpoint after the rename
    try:
        # Always store float32 on CPU: the file is then independent of how the model was trained.
        state_model = model
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
            state_model = type(model)(config)
            state_model.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
        save_model(state_model, str(tmp / WEIGHTS), metadata={"format": "pt", "model_type": model_type})
        meta: dict[str, Any] = {**config.to_dict(), "model_type": model_type}
        if extra:
            meta["extra"] = extra
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        shutil.copymode(tmp / CONFIG, tmp / WEIGHTS)  # safetensors creates 0600; use the umask's mode

        if not out.exists():
            os.replace(tmp, out)
        else:
            # Weights first, config last: a config always describes weights that are already there.
            for name in (WEIGHTS, CONFIG):
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved checkpoint to %s", out)
    return out


def read_checkpoint_config(ckpt_dir: str | Path) -> tuple[Any, dict]:
    """The model config (GPTConfig, BertConfig, ...) and the `extra` dict stored with it."""
    _, config, extra = _read_config(Path(ckpt_dir))
    return config, extra


def _read_config(ckpt: Path) -> tuple[str, Any, dict]:
    path = ckpt / CONFIG
    if not path.is_file():
        raise InputError(f"no checkpoint at {ckpt}: {CONFIG} is missing")
    from lmforge.models.hf import read_hf_json  # the same bounded JSON reading as an HF directory's

    meta = read_hf_json(path)
    model_type = meta.pop("model_type", None)
    if model_type not in MODEL_CLASSES:
        raise InputError(f"{path} is not an lmforge checkpoint (model_type must be one of {sorted(MODEL_CLASSES)})")
    extra = meta.pop("extra", {})
    try:
        return model_type, model_class(model_type).config_class.from_dict(meta), extra
    except (ConfigError, TypeError) as exc:
        raise InputError(f"checkpoint config {path} is invalid: {exc}") from None


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from its config and load the weights; returned in eval mode.

    The config is checked against the weights file's header and the memory available before the
    model is built, so a config.json claiming a million layers costs nothing.
    """
    ckpt = Path(ckpt_dir)
    model_type, config, _ = _read_config(ckpt)
    weights = ckpt / WEIGHTS
    if not weights.is_file():
        raise InputError(f"no checkpoint weights at {weights}")
    check_against_weights(config, [weights], where=str(ckpt / CONFIG))
    model = model_class(model_type)(config)
    try:
        load_model(model, str(weights), strict=True)
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise InputError(
            f"checkpoint weights {weights} are corrupt or do not match config.json: {shorten(str(exc))}"
        ) from None
    return model.to(resolve_device(device)).eval()
