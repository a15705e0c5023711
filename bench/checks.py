"""Results are checked before they are timed: a fast wrong answer is FAILED, not timed.

The oracle is ``centerloss_ext.reference`` in float64 on the same (rounded) inputs and
the same starting centers: the loss, the features' gradient, and the centers after the
step's own update rule: the alpha rule, or for the distance-matrix version one SGD step
``c − lr · ∂L/∂c`` with the reference's center gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from centerloss_ext import reference

from .variants import ALPHA, SGD_LR, Problem, Step

# Largest error allowed, relative to the largest magnitude of the expected tensor, by
# features dtype: a few units in the last place of the dtype the result is rounded to
# (the features' gradient comes back in the features' dtype).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass
class Expected:
    loss: torch.Tensor
    grad: torch.Tensor
    centers: Dict[str, torch.Tensor]  # by update rule: "alpha", "sgd"


def expected(problem: Problem) -> Expected:
    """The float64 oracle for one step on the problem's first batch."""
    x0, y = problem.batches[0]
    x = x0.detach().double().requires_grad_()
    c = problem.centers0.double().requires_grad_()
    loss = reference.center_loss(x, y, c)
    loss.backward()
    with torch.no_grad():
        alpha = reference.update_centers_(problem.centers0.double(), x.detach(), y, ALPHA)
        sgd = c.detach() - SGD_LR * c.grad
    return Expected(loss.detach(), x.grad, {"alpha": alpha, "sgd": sgd})


def relative_error(actual: torch.Tensor, want: torch.Tensor) -> float:
    """max |actual − want| / max |want| (inf on a shape mismatch or a non-finite value)."""
    if actual is None or actual.shape != want.shape:
        return float("inf")
    diff = (actual.detach().double() - want).abs().max().item()
    scale = max(want.abs().max().item(), 1e-30)
    err = diff / scale
    return err if err == err else float("inf")  # NaN -> inf


def check_step(step: Step, problem: Problem, want: Expected) -> Dict[str, float]:
    """Runs one step on a fresh copy of the first batch; returns the relative error of
    the loss, the gradient and (if the step has centers) the updated centers."""
    x0, y = problem.batches[0]
    x = x0.detach().clone().requires_grad_()
    loss = step(x, y)
    errors = {"loss": relative_error(loss, want.loss), "grad": relative_error(x.grad, want.grad)}
    if step.update is not None:
        errors["centers"] = relative_error(step.centers, want.centers[step.update])
    return errors


def failures(errors: Dict[str, float], dtype: torch.dtype) -> Optional[str]:
    """None if every error is within tolerance, else a line saying which are not."""
    tol = TOLERANCE[dtype]
    bad = [f"{k} off by {v:.1e} (tolerance {tol:.0e})" for k, v in errors.items() if not v <= tol]
    return "; ".join(bad) if bad else None
