"""DistributedDataParallel for the trainers, under `torchrun --nproc_per_node N` (gloo backend, CPU).

torchrun sets WORLD_SIZE and RANK in each process; without it a trainer runs as the only rank. Rank 0
validates, logs, checkpoints and exports; every rank draws its own batches and DDP averages the
gradients.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def launched() -> bool:
    """Whether this process is one of several torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> int:
    """Join the process group when torchrun started several processes; this process's rank (0 alone)."""
    if not launched():
        return 0
    dist.init_process_group("gloo")
    return dist.get_rank()


def wrap(net: nn.Module) -> nn.Module:
    """The module to train: `net` under DistributedDataParallel when there are several ranks."""
    return nn.parallel.DistributedDataParallel(net) if launched() else net


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if launched() else 1


def mean_over_ranks(values: list[float]) -> list[float]:
    """Each value averaged over every rank (itself alone)."""
    if not launched():
        return values
    sums = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(sums)
    return (sums / dist.get_world_size()).tolist()


def finish() -> None:
    """Wait for every rank, then leave the process group (nothing alone)."""
    if launched():
        dist.barrier()
        dist.destroy_process_group()
