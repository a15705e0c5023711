"""torch.autograd.gradcheck (float64) through the compiled ops' autograd."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import centerloss_ext as cl
from helpers import make_batch


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck_features_and_centers(device, reduction, seed):
    x, y, c = make_batch(
        12, 5, 4, dtype=torch.float64, centers_dtype=torch.float64, device=device, seed=seed
    )
    y[:4] = 1  # collisions, so center gradients sum several rows
    x.requires_grad_()
    c.requires_grad_()
    # On CUDA the default (non-deterministic) path adds the centers' gradient rows with
    # atomics, so repeated backwards may differ in the last bits (SPEC "Determinism").
    nondet_tol = 0.0 if device == "cpu" else 1e-12
    assert gradcheck(lambda x, c: cl.center_loss(x, y, c, reduction), (x, c), nondet_tol=nondet_tol)
    if device != "cpu":  # ... and the deterministic path must be exactly reentrant
        torch.use_deterministic_algorithms(True)
        try:
            assert gradcheck(lambda x, c: cl.center_loss(x, y, c, reduction), (x, c))
        finally:
            torch.use_deterministic_algorithms(False)


def test_gradcheck_features_only_in_the_training_step(device):
    x, y, c = make_batch(10, 3, 4, dtype=torch.float64, centers_dtype=torch.float64, device=device)
    x.requires_grad_()

    def step(x):
        # fresh centers each call: gradcheck evaluates the function many times
        return cl.center_loss_and_update_(x, y, c.clone(), 0.5, "sum")

    assert gradcheck(step, (x,))


def test_gradient_of_features_with_16bit_centers(device):
    x, y, c = make_batch(10, 3, 4, dtype=torch.float64, centers_dtype=torch.float16, device=device)
    x.requires_grad_()
    assert gradcheck(lambda x: cl.center_loss(x, y, c, "mean"), (x,))
