"""torchrun support for the training scripts: one process per GPU (or per CPU share with
gloo), DistributedDataParallel for the model, and the centers kept identical on every
rank by CenterLoss itself (see centerloss_ext.distributed).

    torchrun --nproc-per-node 4 -m centerloss_ext.train.faces train --input-dir DIR ...

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) nothing here does
anything: the scripts run as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import TrainingError
from .runtime import resolve_device


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank, world size, local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def main(self) -> bool:
        """The rank that logs, evaluates and saves."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def setup(device_arg: str) -> tuple[Ranks, torch.device]:
    """Initialises the process group when started by torchrun (NCCL on GPUs, gloo on the
    CPU) and picks this rank's device: cuda:LOCAL_RANK, or the CPU."""
    if not launched_by_torchrun():
        return Ranks(), resolve_device(device_arg)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_arg not in ("auto", "cpu", "cuda"):
        raise TrainingError(
            f"--device {device_arg}: under torchrun give --device cuda, cpu or "
            "auto; each rank then uses cuda:LOCAL_RANK"
        )
    device = resolve_device(device_arg)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, True), device


def cleanup(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model under DDP (the CenterLoss stays outside: it syncs its centers itself)."""
    if not ranks.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def sum_over_ranks(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Element-wise sums of ``values`` over the ranks (a new tensor; ``values`` itself is
    left alone). One all-reduce, no host read-back: the training loop calls it once per
    log interval with its running statistics, so that a NaN on any rank stops every rank
    together instead of leaving the others waiting."""
    if not ranks.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def check_same_centers(centers: torch.Tensor, ranks: Ranks) -> None:
    """Raises if the ranks' centers differ (two float64 checksums gathered): the library
    keeps them bit-identical, this says so loudly if anything ever breaks that."""
    if not ranks.distributed:
        return
    c = centers.detach().double()
    mine = torch.stack([c.sum(), c.square().sum()])
    every = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(every, mine)
    if any(not torch.equal(every[0], other) for other in every[1:]):
        raise TrainingError(
            "the ranks' centers differ; they must stay identical "
            f"(checksums: {[t.tolist() for t in every]})"
        )
