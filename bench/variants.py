"""What is compared: one full training step of each center-loss implementation.

A step is: features (a leaf that requires grad) → loss → ``loss.backward()`` → center
update. For ``centerloss_ext`` and ``reference`` (alpha mode) the update happens inside
the training-mode forward; the distance-matrix version learns its centers as an
``nn.Parameter`` with SGD (``zero_grad``, ``backward``, ``step``). The baseline step
takes ``features.sum()`` as its loss: what every loss pays for ``backward()`` and the
gradient of the features, subtracted to give each loss's own cost.

``torch.compile`` variants compile the loss module (``torch.compile(module)``, static
shapes, not fullgraph): forward and backward are compiled, the step around it is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import centerloss_ext
from centerloss_ext import reference

from .distance_matrix import DistanceMatrixCenterLoss
from .shapes import Shape

ALPHA = 0.5  # the alpha rule's rate (CenterLoss's default)
SGD_LR = 0.5  # the distance-matrix version's center learning rate


@dataclass
class Problem:
    """The inputs every variant of one shape sees: ``batches`` (features that require
    grad, labels) to rotate through, and the centers every variant starts from."""

    shape: Shape
    device: str
    dtype: torch.dtype
    batches: List[Tuple[torch.Tensor, torch.Tensor]]
    centers0: torch.Tensor

    @classmethod
    def make(
        cls, shape: Shape, device: str, dtype: torch.dtype, num_batches: int = 4, seed: int = 0
    ) -> "Problem":
        """Random features N(0, 1), uniform labels, centers N(0, 1) (float32)."""
        g = torch.Generator(device=device).manual_seed(seed)
        batches = []
        for _ in range(num_batches):
            x = torch.randn(shape.B, shape.D, generator=g, device=device).to(dtype)
            y = torch.randint(0, shape.C, (shape.B,), generator=g, device=device)
            batches.append((x.requires_grad_(), y))
        centers = torch.randn(shape.C, shape.D, generator=g, device=device)
        return cls(shape, device, dtype, batches, centers)

    def classes_in_batch(self) -> int:
        return int(self.batches[0][1].unique().numel())


def _compiled(module: nn.Module) -> Callable:
    """torch.compile with static shapes, starting from a clean slate: every shape and
    module class recompiles the same ``forward``, and past dynamo's recompile limit it
    would silently run eagerly."""
    torch._dynamo.reset()
    return torch.compile(module, dynamic=False)


class Step:
    """One variant set up on one problem. ``step(x, y)`` runs a full training step and
    returns the loss; ``step.centers`` are the centers it updates (None for the baseline);
    ``step.update`` names the update rule the check compares against."""

    update: Optional[str] = None  # "alpha", "sgd" or None (no centers)
    centers: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def clear(self) -> None:
        """Drops gradients the step holds between calls (before a memory measurement)."""


class AlphaStep(Step):
    """A CenterLoss module (alpha mode, training): the update is in its forward."""

    update = "alpha"

    def __init__(self, module: nn.Module, problem: Problem, compile: bool) -> None:
        self.module = module.train()
        with torch.no_grad():
            self.module.centers.copy_(problem.centers0)
        self.centers = self.module.centers
        self.fn = _compiled(self.module) if compile else self.module

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.grad = None
        loss = self.fn(x, y)
        loss.backward()
        return loss


class SGDStep(Step):
    """The distance-matrix loss with its centers learned by SGD."""

    update = "sgd"

    def __init__(self, module: nn.Module, problem: Problem, compile: bool) -> None:
        self.module = module
        with torch.no_grad():
            self.module.centers.copy_(problem.centers0)
        self.centers = self.module.centers
        self.opt = torch.optim.SGD(self.module.parameters(), lr=SGD_LR)
        self.fn = _compiled(self.module) if compile else self.module

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.grad = None
        self.opt.zero_grad(set_to_none=True)
        loss = self.fn(x, y)
        loss.backward()
        self.opt.step()
        return loss

    def clear(self) -> None:
        self.opt.zero_grad(set_to_none=True)


class SumStep(Step):
    """The baseline: ``features.sum()`` as the loss, no centers."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.grad = None
        loss = x.sum()
        loss.backward()
        return loss


@dataclass(frozen=True)
class Variant:
    """A named way to build a Step for a problem."""

    name: str
    build: Callable[[Problem], Step]
    compiled: bool = False
    # Rough bytes of the largest tensors a step allocates, to refuse (not crash on) sizes
    # that cannot fit in host memory; None: O(B × D), never a concern.
    working_bytes: Optional[Callable[[Shape], int]] = field(default=None)


def _dm_bytes(s: Shape) -> int:
    # distances, mask, masked product and their gradients: about five float32 B × C
    # matrices alive at once, plus the dense C × D gradient of the centers.
    return 5 * 4 * s.B * s.C + 4 * s.C * s.D


def _alpha(cls, compile: bool) -> Callable[[Problem], Step]:
    return lambda p: AlphaStep(cls(p.shape.C, p.shape.D, alpha=ALPHA, device=p.device), p, compile)


BASELINE = Variant("features.sum()", lambda p: SumStep())
# centerloss_ext (eager) first: the speedups of the report are relative to it.
VARIANTS: List[Variant] = [
    Variant("centerloss_ext", _alpha(centerloss_ext.CenterLoss, False)),
    Variant("centerloss_ext compiled", _alpha(centerloss_ext.CenterLoss, True), compiled=True),
    Variant("reference", _alpha(reference.CenterLoss, False)),
    Variant("reference compiled", _alpha(reference.CenterLoss, True), compiled=True),
    Variant(
        "distance matrix",
        lambda p: SGDStep(
            DistanceMatrixCenterLoss(p.shape.C, p.shape.D, device=p.device), p, False
        ),
        working_bytes=_dm_bytes,
    ),
]
BY_NAME: Dict[str, Variant] = {v.name: v for v in [BASELINE, *VARIANTS]}
