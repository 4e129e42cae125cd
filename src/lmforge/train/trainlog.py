"""What a training run reports as it goes: loss, learning rate, throughput and MFU over log windows,
and each validation, to log.jsonl (always), TensorBoard (when installed) and the Python log.

Throughput counts the optimizer steps only: evaluation and checkpoint time is excluded by
`pause()`, so tokens/s measures training, not the run's bookkeeping. Only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge.models.protocols import CountsFlops
from lmforge.train.config import TrainConfig

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s by device name, for MFU (H200 has the H100's compute, more memory).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device: torch.device, cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class JsonlLog:
    """log.jsonl plus TensorBoard scalars. A resumed run drops the lines the killed attempt wrote after
    its checkpoint: they will be written again."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.enabled, self.path, self.tb = enabled, out / "log.jsonl", None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self.file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); logging to log.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TrainLogger:
    """Loss curve, throughput windows and validations of one run (see the module docstring)."""

    def __init__(self, out: Path, cfg: TrainConfig, model: nn.Module, device: torch.device, world_size: int,
                 main: bool, start: int, resumed: bool, t_start: float) -> None:
        self.cfg, self.main, self.start, self.world_size = cfg, main, start, world_size
        self.file = JsonlLog(out, main, cfg.tensorboard, start if resumed else None)
        self.flops_per_token = model.flops_per_token(cfg.seq_len) if isinstance(model, CountsFlops) else None
        self.peak = peak_flops(device, cfg)
        self.t_start = t_start
        self.train_losses: list[tuple[int, float]] = []
        self.train_seconds, self.train_tokens = 0.0, 0
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def pause(self) -> None:
        """Time from here on until the next step is not training time (evaluation, checkpointing)."""
        self.window_start = time.perf_counter()

    def step(self, step: int, losses: dict[str, float], tokens: int, seconds: float, lr: float,
             grad_norm: float | None, metrics: dict[str, float] | None = None) -> float:
        """Record one optimizer step; writes a log line at the end of each window. Returns the total loss.

        `metrics` (the objective's reported figures that are not loss terms) go into the log line as they are."""
        loss = sum(losses.values())
        self.train_seconds += seconds
        self.train_tokens += tokens
        self.window_tokens += tokens
        self.train_losses.append((step, loss))
        if step % self.cfg.log_every == 0 or step in (self.start + 1, self.cfg.steps):
            self._window(step, loss, losses, lr, grad_norm, metrics or {})
        return loss

    def _window(self, step: int, loss: float, losses: dict[str, float], lr: float, grad_norm: float | None,
                metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        tps = self.window_tokens / max(now - self.window_start, 1e-9)
        flops, peak = self.flops_per_token, self.peak
        mfu = flops * tps / (peak * self.world_size) if flops and peak else None
        self.file.write({"step": step, "loss": loss, "terms": losses, **({"metrics": metrics} if metrics else {}),
                         "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps, "mfu": mfu, "tokens": self.train_tokens, "elapsed": now - self.t_start})
        log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s%s", step, self.cfg.steps, loss, lr, tps,
                 f" mfu {mfu:.1%}" if mfu else "")
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def validation(self, step: int, val: dict[str, float], label: str) -> None:
        self.file.write({"step": step, "val": val, "elapsed": self.elapsed()})
        log.info("%s val loss %.4f", label, val["loss"])

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / max(self.train_seconds, 1e-9)

    def close(self) -> None:
        self.file.close()
