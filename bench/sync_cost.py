"""What the multi-process center sync costs per step (docs/multi_gpu.md; bench/RESULTS.md).

Spawns `--world` ranks on one machine (gloo on the CPU by default, NCCL with --nccl, one GPU
a rank), and times, per step of a CenterLoss in alpha mode (median and min of --reps):

- step, local:   forward + backward with sync=False (each rank's own update);
- step, synced:  the same with the sync (the default under torch.distributed);
- exchange:      centerloss_ext.distributed.all_gather_batch alone (what the sync adds,
                 plus a copy of the result into contiguous tensors);
- C×D all-reduce: what averaging the centers instead would cost (the design not taken).

Bytes per step and rank, from the formula in docs/multi_gpu.md, are printed beside them.

    python bench/sync_cost.py --world 2 --batch 512 --dim 512 --classes 1000 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import centerloss_ext as cl
from centerloss_ext.distributed import all_gather_batch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def exchanged_bytes(world: int, batch: int, dim: int, dtype: torch.dtype) -> int:
    """Bytes each rank receives per synced step (its own share included): the 4 × int64
    header of every rank, then max_B rows per rank of an int64 label and D feature
    elements rounded up to 8 bytes."""
    row = 8 + -(-dim * dtype.itemsize // 8) * 8
    return world * 4 * 8 + world * batch * row


def _ms(fn, reps: int, device: str) -> tuple:
    """(median, min) wall-clock milliseconds of ``fn`` over ``reps`` runs, all ranks
    starting together."""
    times = []
    for _ in range(reps + 2):  # two warm-ups
        dist.barrier()
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[2:]), 1e3 * min(times[2:])


def _rank(rank: int, args, store: str, out: str) -> None:
    torch.set_num_threads(args.threads)
    device = "cpu"
    if args.nccl:
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(
        "nccl" if args.nccl else "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=args.world,
        timeout=timedelta(minutes=5),
    )
    dtype = DTYPES[args.dtype]
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, args.dim, generator=g).to(device, dtype)
    rows = []
    for classes in args.classes:
        y = torch.randint(0, classes, (args.batch,), generator=g).to(device)

        def step(crit, y=y):
            feats = x.detach().requires_grad_()
            crit(feats, y).backward()

        local = cl.CenterLoss(classes, args.dim, device=device, sync=False)
        synced = cl.CenterLoss(classes, args.dim, device=device)
        centers = torch.zeros(classes, args.dim, device=device)
        rows.append(
            {
                "classes": classes,
                # each timed function is called here, in this iteration: the defaults
                # bind this iteration's values all the same
                "step, local": _ms(lambda c=local: step(c), args.reps, device),
                "step, synced": _ms(lambda c=synced: step(c), args.reps, device),
                "exchange": _ms(lambda y=y: all_gather_batch(x, y), args.reps, device),
                "C×D all-reduce": _ms(lambda c=centers: dist.all_reduce(c), args.reps, device),
            }
        )
    if rank == 0:
        torch.save(rows, out)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=512, help="per rank")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--nccl", action="store_true", help="NCCL, one GPU per rank")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.spawn(_rank, args=(args, os.path.join(tmp, "store"), out), nprocs=args.world)
        rows = torch.load(out)
    backend = "NCCL" if args.nccl else "gloo (CPU)"
    dtype = DTYPES[args.dtype]
    gathered = exchanged_bytes(args.world, args.batch, args.dim, dtype)
    print(
        f"world {args.world}, {backend}, B = {args.batch} per rank, D = {args.dim}, "
        f"{args.dtype} features; ms per step, median (min) of {args.reps}\n"
    )
    print(
        "| C | step, local | step, synced | exchange | exchanged bytes per rank "
        "| C×D all-reduce | C×D bytes |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r[k][0]:.2f} ({r[k][1]:.2f})"
            for k in ("step, local", "step, synced", "exchange", "C×D all-reduce")
        ]
        print(
            f"| {r['classes']:,} | {cells[0]} | {cells[1]} | {cells[2]} | {gathered:,} | "
            f"{cells[3]} | {r['classes'] * args.dim * 4:,} |"
        )


if __name__ == "__main__":
    main()
