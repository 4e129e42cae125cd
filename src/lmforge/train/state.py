"""Resumable training state: everything besides the weights that a bitwise-exact resume needs.

A resumable checkpoint is a directory `checkpoints/step-NNNNNNN/` holding
- `model.safetensors` + `config.json`: the weights (see checkpoint.py);
- `optimizer.safetensors`: every optimizer state tensor, keyed `<param name>/<key>`;
- `trainer_state.json`: step, data position, early-stopping state, the optimizers' scalar
  settings and param-group layout;
- `rng-rank<R>.json`: each process's Python, NumPy, torch and CUDA generator states (dropout
  draws differ per rank, so each rank restores its own).

Nothing is pickled: a checkpoint from an untrusted source cannot run code when loaded. The
directory is written under a temporary name and renamed, then `latest.json` is replaced; a run
killed at any moment leaves the previous checkpoint intact and readable.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import InputError
from lmforge.records import read_json, write_json_atomic

log = logging.getLogger(__name__)

LATEST = "latest.json"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# --------------------------------------------------------------------------- optimizer state


def split_optimizer_state(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A (full, name-keyed) optimizer state dict as safetensors tensors plus a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, values in osd["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": osd["param_groups"]}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        name, key = flat.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    for name, values in rest["scalars"].items():
        state.setdefault(name, {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def _jsonable_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        out.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return out


# --------------------------------------------------------------------------- directories


def write_rank_files(tmp: Path, rank: int) -> None:
    write_json_atomic(tmp / f"rng-rank{rank}.json", rng_state())


def write_main_files(tmp: Path, optimizer_state: dict[str, Any], trainer_state: dict[str, Any]) -> None:
    tensors, rest = split_optimizer_state(optimizer_state)
    rest["param_groups"] = _jsonable_groups(rest["param_groups"])
    save_file(tensors, str(tmp / OPTIMIZER), metadata={"format": "pt"})
    write_json_atomic(tmp / TRAINER_STATE, {**trainer_state, "optimizer": rest})


def publish(root: Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename the finished temp dir into place, point latest.json at it, prune old ones."""
    final = root / step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    write_json_atomic(root / LATEST, {"step": step, "dir": final.name})
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved resumable checkpoint %s", final)
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    marker = root / LATEST
    if not marker.is_file():
        return None
    path = root / read_json(marker)["dir"]
    if not (path / TRAINER_STATE).is_file():
        raise InputError(f"{marker} points at {path}, which is incomplete; delete {marker} to start over")
    return path


def read_state(path: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(trainer state, optimizer state dict, this rank's RNG state)."""
    trainer = read_json(path / TRAINER_STATE)
    rest = trainer.pop("optimizer")
    rng_file = path / f"rng-rank{rank}.json"
    if not rng_file.is_file():
        raise InputError(f"{path} has no RNG state for rank {rank}: resume with the same number of processes")
    return trainer, join_optimizer_state(load_file(str(path / OPTIMIZER)), rest), read_json(rng_file)
