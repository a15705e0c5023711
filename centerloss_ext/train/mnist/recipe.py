"""The LeNet++ recipe of centerloss-mnist: the run's options (MnistOptions, which the
open-set protocol and the λ/α sweep reuse), and the network, center loss, optimizers,
learning-rate schedule and augmentation built from them (from MnistOptions or anything
with the same attributes)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from ... import CenterLoss
from ..core.errors import TrainingError
from ..core.loop import LOG_EVERY
from .model import LeNetPlusPlus

LR_SCHEDULES = ("constant", "cosine", "onecycle")
AMP_CHOICES = ("off", "bf16", "auto")
ONECYCLE_WARMUP = 0.25  # fraction of the steps spent raising the learning rate


@dataclass
class MnistOptions:
    """Everything a run takes (the command line's options, same names)."""

    dataset: str = "fashion-mnist"
    data: Optional[str] = None
    download: bool = False
    out: str = "runs/mnist"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    augment: bool = False
    batch_norm: bool = False
    amp: str = "off"
    center_loss_weight: float = 0.1
    alpha: float = 0.5
    center_update: str = "alpha"
    center_lr: Optional[float] = None
    feature_dim: int = 2
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    limit_train: Optional[int] = None
    no_progress: bool = False
    log_every: int = LOG_EVERY  # not a command-line option; not recorded

    def record(self) -> Dict[str, Any]:
        """The options as metrics.json records them (the command line's keys)."""
        return {k: v for k, v in asdict(self).items() if k != "log_every"}


@dataclass
class Recipe:
    """What one run trains: ``optimizers`` step together after every batch (the centers'
    SGD in optimizer mode comes second); ``scheduler`` steps after every batch
    (onecycle), or is None (constant, cosine: set per epoch by :func:`lr_at`)."""

    model: LeNetPlusPlus
    center_loss: CenterLoss
    optimizers: List[torch.optim.Optimizer]
    scheduler: Optional[Any] = None

    def states(self) -> Dict[str, Any]:
        """name -> object with state_dict(), as checkpoints hold them (older checkpoints
        have no "center_optimizer" or "scheduler": only runs that use them save them)."""
        out: Dict[str, Any] = {
            "model": self.model,
            "center_loss": self.center_loss,
            "optimizer": self.optimizers[0],
        }
        if len(self.optimizers) > 1:
            out["center_optimizer"] = self.optimizers[1]
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler
        return out


def center_lr(opts: Any, num_classes: int) -> float:
    """Optimizer mode: the centers' SGD rate. ``--center-lr``, else the rate at which a
    class with the batch's average count (B/C samples) moves as far toward its batch mean
    as the alpha rule would, α·n/(1+n): the gradient of λ·(1/B)·Σ½‖x−c‖² moves it by
    lr·λ·n/B, so lr = α·B·C / ((B + C)·λ)."""
    if opts.center_loss_weight == 0:
        raise TrainingError(
            "--center-update optimizer with --center-loss-weight 0: the "
            "centers get no gradient and would never move; the softmax-only "
            "baseline uses --center-update alpha (its centers still tracked)"
        )
    if opts.center_lr is not None:
        return opts.center_lr
    b, c = opts.batch_size, num_classes
    return opts.alpha * b * c / ((b + c) * opts.center_loss_weight)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a GPU of compute capability 8.0
    or newer, a CPU with AVX-512 BF16 or AMX (elsewhere oneDNN emulates it, slower than
    float32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.2
    return device.type == "cpu" and any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def resolve_amp(choice: str, device: torch.device) -> str:
    """--amp as a run records it: "bf16" or "off" ("auto": bf16 where it is native)."""
    if choice == "auto":
        return "bf16" if native_bf16(device) else "off"
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"--amp bf16: {device} has no bfloat16 support; use --amp off")
    if choice == "bf16" and device.type not in ("cpu", "cuda"):
        raise TrainingError(f"--amp bf16: not supported on {device.type}; use --amp off")
    return choice


def build(opts: Any, num_classes: int, steps_per_epoch: int, device: torch.device) -> Recipe:
    """LeNet++ (channels-last), the center loss and the optimizers the options ask for;
    ``opts.amp`` is "off" or "bf16" (:func:`resolve_amp`)."""
    if opts.amp not in ("off", "bf16"):
        raise ValueError(f"opts.amp={opts.amp!r}: resolve it first (resolve_amp)")
    model = (
        LeNetPlusPlus(
            num_classes,
            opts.feature_dim,
            batch_norm=opts.batch_norm,
            trunk_dtype=torch.bfloat16 if opts.amp == "bf16" else None,
        )
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    center_loss = CenterLoss(
        num_classes,
        opts.feature_dim,
        alpha=opts.alpha,
        center_update=opts.center_update,
        device=device,
    )
    optimizers: List[torch.optim.Optimizer] = [
        torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    ]
    if opts.center_update == "optimizer":
        optimizers.append(
            torch.optim.SGD(center_loss.parameters(), lr=center_lr(opts, num_classes))
        )
    scheduler = None
    if opts.lr_schedule == "onecycle":
        # torch's one-cycle policy: up from lr/25 over the first quarter of the steps, then
        # cosine annealing to lr/25e4, cycling Adam's beta1 (0.95 -> 0.85 -> 0.95)
        total = steps_per_epoch * opts.epochs
        if total < 4:
            raise TrainingError(
                f"--lr-schedule onecycle needs at least 4 steps; this run "
                f"has {total}: use more --epochs or a smaller --batch-size"
            )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(  # (>= 2 steps up: torch's
            optimizers[0],
            max_lr=opts.lr,
            total_steps=total,  # phases must not be empty)
            pct_start=max(ONECYCLE_WARMUP, 2 / total),
        )
    return Recipe(model, center_loss, optimizers, scheduler)


def lr_at(lr: float, schedule: str, epoch: int, epochs: int) -> Optional[float]:
    """The learning rate of (0-based) ``epoch``: constant, or cosine decay to 0; None for
    onecycle, whose scheduler sets it every step."""
    if schedule == "onecycle":
        return None
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return lr


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, flip: bool, shift: int = 2
) -> torch.Tensor:
    """Shifts each image by up to ``shift`` pixels (the border filled with the background,
    -1) and, with ``flip``, mirrors half of them. x: (B, 1, H, W) on the CPU."""
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)
    dy = torch.randint(0, 2 * shift + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (b, 1, 1), generator=generator)
    rows = dy + torch.arange(h).view(1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, w)
    out = padded[torch.arange(b).view(b, 1, 1), 0, rows, cols].unsqueeze(1)
    if flip:
        mirror = torch.rand(b, generator=generator) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out
