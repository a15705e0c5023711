"""What the ranks of test_distributed.py run: one process per rank, started by
torch.multiprocessing.spawn. Each scenario returns a dict of results that the rank saves
for the test (in the parent process) to check against a single process's computation.

The batches come from `batch(step, rank, n)`, which the test calls too, so both sides see
the same numbers. Some (step, rank) pairs get deliberately awkward inputs: int32 labels,
non-contiguous features, a NaN row.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import centerloss_ext as cl
from centerloss_ext import distributed, reference

C, D, ALPHA = 11, 5, 0.5
IMPLS = {"compiled": cl.CenterLoss, "reference": reference.CenterLoss}

# Batch sizes per step and rank: equal, unequal, a rank with an empty batch, all empty.
STEPS = {
    1: [(6,), (0,), (9,)],
    2: [(6, 6), (7, 3), (0, 5), (4, 0), (0, 0), (2, 9)],
    3: [(5, 3, 4), (0, 6, 2), (3, 3, 3), (1, 0, 0)],
}


def batch(step: int, rank: int, n: int, dtype=torch.float32, device="cpu"):
    """Rank `rank`'s features and labels at `step`, as that rank passes them."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, C, (n,), generator=g)
    if (step, rank) == (1, 0):
        x = x.t().contiguous().t()  # same values, column-major strides
    if (step, rank) == (1, 1):
        y = y.int()
    if (step, rank) == (5, 1) and n:
        x[0, 2] = float("nan")  # a non-finite row: left out of every update
    return x.to(device), y.to(device)


def initial_centers(device="cpu") -> torch.Tensor:
    return torch.randn(C, D, generator=torch.Generator().manual_seed(7)).to(device)


OUT_DIR = ""  # where this rank saves (set by run_rank)


def run_rank(
    rank: int, world: int, store: str, scenario: str, out_dir: str, backend: str = "gloo"
) -> None:
    """The entry point of a spawned rank: join the group, run `scenario`, save its results."""
    global OUT_DIR
    OUT_DIR = out_dir
    torch.set_num_threads(1)  # the ranks share a small machine
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    result = SCENARIOS[scenario](rank, world, device)
    torch.save(result, os.path.join(out_dir, f"{scenario}.{rank}.pt"))
    dist.barrier()  # gloo may abort if a rank tears down while another is still talking
    dist.destroy_process_group()


# --- scenarios --------------------------------------------------------------------------


def _train(crit, rank, steps, dtype=torch.float32, device="cpu", fn=None, first_step=0):
    """Training-mode forwards and backwards; per step the local loss, the local feature
    gradient and the centers after the step."""
    fn = crit if fn is None else fn
    out = []
    for step, sizes in enumerate(steps, start=first_step):
        x, y = batch(step, rank, sizes[rank], dtype, device)
        x.requires_grad_()
        loss = fn(x, y)
        loss.backward()
        out.append(
            {
                "loss": loss.detach().cpu(),
                "grad": x.grad.cpu(),
                "centers": crit.centers.detach().cpu().clone(),
            }
        )
    return out


def _new(impl, device="cpu", **kwargs):
    crit = IMPLS[impl](C, D, alpha=ALPHA, device=device, **kwargs)
    crit.centers.copy_(initial_centers(device))
    return crit


def _errors(rank):
    """Bad input on one rank: every rank raises, no centers move, the group stays usable."""
    crit = _new("compiled")
    res = {}

    def attempt(name, x, y):
        before = crit.centers.clone()
        try:
            crit(x, y)
            res[name] = None
        except Exception as exc:  # noqa: BLE001 - the test checks the type
            res[name] = (type(exc).__name__, str(exc))
        res[name + "/untouched"] = torch.equal(crit.centers, before)

    x, y = batch(0, rank, 4)
    bad = y.clone()
    if rank == 1:
        bad[2] = C
    attempt("label", x, bad)
    attempt("dtype", x.double() if rank == 1 else x, y)
    attempt("width", torch.randn(4, D + 1) if rank == 0 else x, y)
    crit(x, y)
    res["after"] = crit.centers.clone()
    return res


def _checkpoint(rank):
    """Train two steps, rank 0 saves, every rank loads into a fresh module, train on."""
    steps = STEPS[2]
    crit = _new("compiled")
    _train(crit, rank, steps[:2])
    path = os.path.join(OUT_DIR, "centers.ckpt")
    if rank == 0:
        torch.save(crit.state_dict(), path)
    dist.barrier()
    resumed = cl.CenterLoss(C, D, alpha=ALPHA)
    resumed.centers.normal_(generator=torch.Generator().manual_seed(100 + rank))
    resumed.load_state_dict(torch.load(path))
    return _train(resumed, rank, steps[2:4], first_step=2)


def _divergent_start(rank):
    """Ranks whose centers start apart, then load different states: each time the first
    synced step gives every rank rank 0's centers."""
    crit = _new("compiled")
    crit.centers.add_(rank)
    out = _train(crit, rank, STEPS[2][:1])
    crit.load_state_dict({"centers": torch.full((C, D), float(rank))})
    return out + _train(crit, rank, STEPS[2][1:2], first_step=1)


class Net(nn.Module):
    """An embedding layer and a CenterLoss in one module, for DDP to wrap."""

    def __init__(self, center_update: str) -> None:
        super().__init__()
        self.embed = nn.Linear(D, D)
        self.crit = cl.CenterLoss(C, D, alpha=ALPHA, center_update=center_update)

    def forward(self, inputs, labels):
        return self.crit(self.embed(inputs), labels)


def ddp_inputs(step, rank):
    return batch(step, rank, 8)


def _ddp(rank, center_update):
    torch.manual_seed(rank)  # different on every rank: DDP's start-up broadcast must fix it
    net = Net(center_update)
    with torch.no_grad():
        net.crit.centers.normal_()
    # Alpha mode: centers are kept equal by the sync; broadcasting them is the waste the
    # docs/multi_gpu.md warns about, so it is off.
    model = DistributedDataParallel(net, broadcast_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        opt.zero_grad()
        model(*ddp_inputs(step, rank)).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _main_world2(rank, world, device):
    res = {f"steps/{impl}": _train(_new(impl), rank, STEPS[2]) for impl in IMPLS}
    res["half"] = _train(_new("compiled"), rank, STEPS[2][:3], dtype=torch.float16)
    local = _new("compiled", sync=False)
    res["nosync/syncs"] = (_new("compiled").syncs_centers(), local.syncs_centers())
    res["nosync"] = _train(local, rank, STEPS[2][:2])
    res["errors"] = _errors(rank)
    res["checkpoint"] = _checkpoint(rank)
    res["divergent"] = _divergent_start(rank)
    res["ddp/optimizer"] = _ddp(rank, "optimizer")
    res["ddp/alpha"] = _ddp(rank, "alpha")
    return res


def _main_world3(rank, world, device):
    res = {f"steps/{impl}": _train(_new(impl), rank, STEPS[3]) for impl in IMPLS}
    sizes = (3, 0, 5)
    x, y = batch(0, rank, sizes[rank], torch.bfloat16)
    res["gather"] = distributed.all_gather_batch(x, y.int())
    sub = dist.new_group([0, 2])  # every rank takes part in creating it
    if rank != 1:
        steps = [(4, None, 3), (0, None, 5)]
        res["subgroup"] = _train(_new("compiled", process_group=sub), rank, steps)
    return res


def _compiled_world2(rank, world, device):
    res = {}
    for backend in ("aot_eager", "inductor"):
        crit = _new("compiled")
        fn = torch.compile(crit, fullgraph=True, backend=backend)
        res[backend] = _train(crit, rank, STEPS[2][:3], fn=fn)
    return res


def _nccl(rank, world, device):
    steps = STEPS[world]
    return {
        f"{impl}/{dtype}": _train(_new(impl, device), rank, steps, dtype, device)
        for impl in IMPLS
        for dtype in (torch.float32, torch.bfloat16)
    }


SCENARIOS = {
    "main2": _main_world2,
    "main3": _main_world3,
    "compiled2": _compiled_world2,
    "nccl": _nccl,
}
