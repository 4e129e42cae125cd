"""Data parallelism under torchrun: DDP, or FSDP2 for models too large for one device.

Processes started by `torchrun --nproc-per-node N lmforge pretrain ...` find their rank in the
environment; without those variables training is single-process and nothing here does work.
gloo serves CPU runs (and the tests), NCCL GPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    return Dist(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(d: Dist, device: torch.device) -> None:
    if d.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=d.rank, world_size=d.world_size)
        log.info("process group: rank %d of %d (%s)", d.rank, d.world_size, backend)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a float64/int64 tensor over ranks (in place on a copy); identity when single-process."""
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def wrap(model: nn.Module, d: Dist, strategy: str, device: torch.device) -> nn.Module:
    """DDP replicates the model; FSDP2 shards every block's parameters, gradients and optimizer state."""
    if not d.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in model.shard_units():
            fully_shard(unit)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
