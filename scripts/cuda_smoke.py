"""Runs every CUDA kernel path once on small inputs, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python scripts/cuda_smoke.py
    compute-sanitizer --tool racecheck python scripts/cuda_smoke.py

Paths: forward (3 reductions; vector and scalar rows), the training step with the
atomic and the sorted update, update_centers_, both backward ops on both paths, 16-bit
types, empty batches, windows crossed by one class, and bad labels (raised, and with
the check off). Exits non-zero if a result disagrees with the CPU.
"""

import torch

import centerloss_ext as cl

assert torch.cuda.is_available(), "needs a GPU"
torch.manual_seed(0)


def run(B, D, C, dtype=torch.float32, centers_dtype=torch.float32, one_class=False):
    x = torch.randn(B, D, dtype=dtype)
    c = torch.randn(C, D, dtype=centers_dtype)
    y = torch.zeros(B, dtype=torch.long) if one_class else torch.randint(0, C, (B,))
    for reduction in ("mean", "sum", "none"):
        for deterministic in (False, True):
            for mode in ("alpha", "optimizer"):
                outs = []
                for device in ("cpu", "cuda"):
                    xd = x.to(device).requires_grad_()
                    cd = c.to(device)
                    torch.use_deterministic_algorithms(deterministic)
                    if mode == "alpha":
                        loss = cl.center_loss_and_update_(xd, y.to(device), cd, 0.5, reduction)
                    else:
                        cd.requires_grad_()
                        loss = cl.center_loss(xd, y.to(device), cd, reduction)
                    loss.sum().backward()
                    torch.use_deterministic_algorithms(False)
                    outs.append(
                        [
                            loss.detach().cpu().double(),
                            xd.grad.cpu().double(),
                            (cd.detach() if mode == "alpha" else cd.grad).cpu().double(),
                        ]
                    )
                for a, b in zip(*outs):
                    torch.testing.assert_close(b, a, rtol=3e-2, atol=3e-2)


run(300, 64, 50)  # vector rows, random labels
run(300, 7, 50)  # scalar rows
run(200, 16, 3, one_class=True)  # one class across windows
run(130, 8, 1000, torch.bfloat16, torch.bfloat16)
run(130, 8, 20, torch.float16, torch.float64)
run(0, 8, 5)

x = torch.randn(100, 8, device="cuda")
c = torch.randn(5, 8, device="cuda")
y = torch.randint(0, 5, (100,), device="cuda")
y[50] = 5
before = c.clone()
for deterministic in (False, True):
    try:
        cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
        raise SystemExit("bad label not raised")
    except IndexError:
        pass
previous = cl.set_cuda_label_check(False)
loss = cl.center_loss_and_update_(x, y, c, 0.5)
cl.set_cuda_label_check(previous)
assert torch.isnan(loss) and torch.equal(c, before)
torch.cuda.synchronize()
print("cuda_smoke: all paths ran and agree with the CPU")
