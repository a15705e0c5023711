"""torchrun support for the training scripts: one process per GPU (or per CPU share with
gloo), DistributedDataParallel for the model, and the centers kept identical on every
rank by CenterLoss itself (see centerloss_ext.distributed).

    torchrun --nproc-per-node 4 -m centerloss_ext.train.faces train --input-dir DIR ...

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) nothing here does
anything: the scripts run as a single process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import RanksLost, TrainingError, first_line
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


# --dist-timeout's default: a few minutes, not torch's 30 (gloo and NCCL alike)
DEFAULT_TIMEOUT_S = 300.0


def setup(device_arg: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Ranks, torch.device]:
    """Initialises the process group when started by torchrun (NCCL on GPUs, gloo on the
    CPU) and picks this rank's device: cuda:LOCAL_RANK, or the CPU. Every collective of
    the group (DDP's gradients, the center sync, the checks) gives up after
    ``timeout_s`` seconds without an answer."""
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
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
    )
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, True), device


def cleanup(ranks: Ranks, lost: bool = False) -> None:
    """Ends the process group; not after a lost rank, where tearing it down could wait on
    the rank that does not answer (the process is about to exit anyway)."""
    if ranks.distributed and dist.is_initialized() and not lost:
        dist.destroy_process_group()


# What gloo and NCCL say when a collective's peer does not answer in time, or is gone.
_NO_ANSWER = (
    "timed out",
    "timeout",
    "connection closed",
    "connection reset",
    "broken pipe",
    "watchdog",
)


def lost_ranks(
    exc: BaseException, ranks: Ranks, where: str, timeout_s: float
) -> Optional[RanksLost]:
    """The RanksLost error for ``exc`` when it is a collective that another rank did not
    answer (None otherwise), naming the ranks that do not answer and ``where`` this rank
    was. Every surviving rank is stuck in the same collective and gets here within the
    timeout: each checks in through the process group's store, waits ``grace`` seconds,
    and the ranks that never checked in are the ones it waited for."""
    if not ranks.distributed or not any(k in str(exc).lower() for k in _NO_ANSWER):
        return None
    silent = _silent_ranks(ranks, where)
    whom = f"rank(s) {', '.join(map(str, silent))}" if silent else "another rank"
    return RanksLost(
        f"rank {ranks.rank}: no answer from {whom} within --dist-timeout {timeout_s:g} s at "
        f"{where}; stopping (the last finished epoch's checkpoint is intact; "
        f"{first_line(exc)[:160]})"
    )


def _silent_ranks(ranks: Ranks, where: str, grace: float = 3.0) -> list[int]:
    """The ranks that do not check in at ``where`` within ``grace`` seconds (empty when the
    store itself does not answer, e.g. when a lost rank hosted it)."""
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=grace))
        key = f"centerloss/alive/{where}"
        store.set(f"{key}/{ranks.rank}", "1")
        time.sleep(grace)
        return [r for r in range(ranks.world) if not store.check([f"{key}/{r}"])]
    except Exception:  # the store is gone with the lost rank: say "another rank"
        return []


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
