"""Where and how the training arithmetic runs: device, process group, autocast precision.

The loop, the evaluator and the checkpointer all move batches and run forwards the same way; this
holds those decisions once, made at setup, so the components cannot disagree about them.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from lmforge.models import cpu_kernels
from lmforge.train.distributed import Dist

log = logging.getLogger(__name__)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than float32 here: GPUs that support it, and CPUs with native
    bfloat16 dot products (AVX-512 BF16, AMX), where bf16 matmuls run at twice the float32 rate. Other CPUs
    emulate bfloat16, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_kernels.NATIVE_BF16


def autocast_settings(precision: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on, its dtype) for a configured precision on this device."""
    if precision == "auto":
        precision = "bf16" if bf16_is_fast(device) else "fp32"
        log.info("precision auto: %s on this %s", precision, device.type)
    if precision == "bf16" and device.type == "cpu" and not cpu_kernels.NATIVE_BF16:
        log.warning("this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16 is emulated and slower than fp32")
    if precision == "fp16" and device.type != "cuda":
        log.warning("fp16 autocast needs a GPU; training in fp32")
        precision = "fp32"
    return precision != "fp32", torch.float16 if precision == "fp16" else torch.bfloat16


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dist: Dist
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
