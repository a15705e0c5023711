"""One training epoch of centerloss-mnist's recipe (mnist_recipe.Recipe) on in-memory
images: the step that centerloss-mnist, the open-set protocol (openset_eval) and the λ/α
sweep (scripts/sweep_lambda_alpha.py) share, so they train the same way."""
from __future__ import annotations

import time
from typing import Any, Dict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import loop
from .mnist_recipe import Recipe, augment_batch, lr_at


def train_epoch(recipe: Recipe, images: torch.Tensor, labels: torch.Tensor, opts: Any,
                epoch: int, device: torch.device) -> Dict[str, float]:
    """Sets (0-based) ``epoch``'s learning rate (constant, cosine; onecycle's scheduler
    sets it every step), then makes one pass over ``images`` in an order seeded by
    ``opts.seed`` and ``epoch``. Returns "lr" (the rate at the epoch's start), the epoch
    means (train_loss, train_softmax_loss, train_center_loss, train_acc) and "seconds".
    ``opts``: mnist.MnistOptions or anything with its attributes. The statistics stay on
    the device and are read back once per ``opts.log_every`` steps."""
    model, center_loss, optimizer = recipe.model, recipe.center_loss, recipe.optimizers[0]
    lr = lr_at(opts.lr, opts.lr_schedule, epoch, opts.epochs)
    for group in optimizer.param_groups if lr is not None else ():
        group["lr"] = lr
    row = {"lr": optimizer.param_groups[0]["lr"]}
    t0 = time.perf_counter()
    model.train()
    center_loss.train()                        # alpha mode: the forward moves the centers
    generator = torch.Generator().manual_seed(opts.seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    flip = opts.dataset == "fashion-mnist"
    steps = range(0, len(images), opts.batch_size)
    stats = loop.RunningStats(device, epoch, len(steps), opts.log_every)
    bar = tqdm(steps, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch", leave=False,
               disable=opts.no_progress, dynamic_ncols=True)
    stepping = [o for o in (*recipe.optimizers, recipe.scheduler) if o is not None]
    for start in bar:
        idx = order[start:start + opts.batch_size]
        x = images[idx]
        if opts.augment:
            x = augment_batch(x, generator, flip)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = labels[idx].to(device, non_blocking=True)
        features, logits = model(x)
        softmax = F.cross_entropy(logits, y)
        center = center_loss(features, y)
        loss = softmax + opts.center_loss_weight * center
        for o in recipe.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in stepping:          # the network's optimizer, the centers', the scheduler
            o.step()
        means = stats.add(loss, softmax, center, logits, y)
        if means is not None:
            bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['acc']:.4f}",
                            refresh=False)
    bar.close()
    m = stats.means or stats.sync()
    row.update({"train_loss": m["loss"], "train_softmax_loss": m["softmax"],
                "train_center_loss": m["center"], "train_acc": m["acc"],
                "seconds": time.perf_counter() - t0})
    return row
