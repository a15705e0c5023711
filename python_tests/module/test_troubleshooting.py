"""docs/troubleshooting.md, checked: each answer there is a behaviour shown here (CPU).

Centers that do not move (eval mode, an optimizer without the centers, alpha = 0,
λ = 0 in optimizer mode), centers that move when they should not (validation in
training mode, under no_grad too), NaN (what the op does with non-finite rows, when
the training loop stops), AMP (autocast, GradScaler)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from centerloss_ext import CenterLoss, reference
from centerloss_ext.train.core import loop
from centerloss_ext.train.core.errors import NonFiniteLossError

C, D, B = 5, 3, 12


def batch(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    y = torch.arange(B) % C
    return x, y


class Model(nn.Module):
    """An embedding, a classifier and the center loss as a submodule."""

    def __init__(self, center_update="alpha"):
        super().__init__()
        self.embed = nn.Linear(4, D)
        self.classifier = nn.Linear(D, C)
        self.center_loss = CenterLoss(C, D, center_update=center_update)


# ------------------------------------------------------------ centers not moving


def test_eval_mode_leaves_the_centers_unchanged_train_mode_moves_them():
    crit = CenterLoss(C, D)
    x, y = batch()
    crit.eval()
    crit(x, y)
    assert torch.equal(crit.centers, torch.zeros(C, D))
    crit.train()
    crit(x, y)
    assert not torch.equal(crit.centers, torch.zeros(C, D))


def test_model_eval_reaches_the_criterion_only_when_it_is_a_submodule():
    model = Model()
    outside = CenterLoss(C, D)
    model.eval()  # e.g. left over from a validation pass
    assert not model.center_loss.training and outside.training
    model.train()
    assert model.center_loss.training


def test_validation_in_training_mode_moves_the_centers_even_under_no_grad():
    crit = CenterLoss(C, D)
    x, y = batch()
    with torch.no_grad():
        crit(x, y)
    assert not torch.equal(crit.centers, torch.zeros(C, D))


def test_alpha_mode_centers_are_a_buffer_not_a_parameter():
    crit = CenterLoss(C, D)
    assert list(crit.parameters()) == []
    assert "centers" in crit.state_dict() and not crit.centers.requires_grad


def test_optimizer_mode_needs_the_centers_in_the_optimizer():
    x, y = batch()
    for give_centers in (False, True):
        torch.manual_seed(0)
        model = Model(center_update="optimizer")
        crit = model.center_loss
        params = [*model.embed.parameters(), *model.classifier.parameters()]
        if give_centers:
            params += list(crit.parameters())
        opt = torch.optim.SGD(params, lr=0.1)
        feats = model.embed(torch.randn(B, 4))
        loss = F.cross_entropy(model.classifier(feats), y) + 0.1 * crit(feats, y)
        loss.backward()
        assert crit.centers.grad is not None and crit.centers.grad.abs().sum() > 0
        opt.step()
        moved = not torch.equal(crit.centers.detach(), torch.zeros(C, D))
        assert moved == give_centers


def test_alpha_zero_never_moves_the_centers():
    crit = CenterLoss(C, D, alpha=0.0)
    x, y = batch()
    for _ in range(3):
        crit(x, y)
    assert torch.equal(crit.centers, torch.zeros(C, D))


def test_lambda_zero_stops_optimizer_mode_centers_not_alpha_mode_ones():
    x, y = batch()
    learned = CenterLoss(C, D, center_update="optimizer")
    opt = torch.optim.SGD(learned.parameters(), lr=0.5)
    (0.0 * learned(x.requires_grad_(), y)).backward()
    opt.step()
    assert torch.equal(learned.centers.detach(), torch.zeros(C, D))

    tracked = CenterLoss(C, D)
    (0.0 * tracked(x, y)).backward()
    assert not torch.equal(tracked.centers, torch.zeros(C, D))


# ------------------------------------------------------------ NaN


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_row_shows_in_the_loss_and_stays_out_of_the_update(bad):
    x, y = batch(dtype=torch.float64)  # y = 0 1 2 3 4 0 1 2 3 4 0 1
    c0 = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[0, 1] = bad  # one of class 0's three rows
    x[3, 0] = x[8, 2] = bad  # both rows of class 3
    crit = CenterLoss(C, D, dtype=torch.float64)
    crit.load_state_dict({"centers": c0})
    loss = crit(x, y)
    assert not torch.isfinite(loss)  # the loss shows them
    assert torch.isfinite(crit.centers).all()
    assert torch.equal(crit.centers[3], c0[3])  # a class with bad rows only: untouched
    # every center as if the bad rows were not in the batch (nor counted in n_j)
    good = torch.isfinite(x).all(1)
    want = reference.update_centers_(c0.clone(), x[good], y[good], crit.alpha)
    torch.testing.assert_close(crit.centers, want, rtol=1e-12, atol=1e-12)
    assert not torch.equal(crit.centers[0], c0[0])


def test_the_training_loop_stops_at_the_next_log_step_naming_the_first_bad_step():
    stats = loop.RunningStats(torch.device("cpu"), epoch=0, steps=20, every=5)
    logits, labels = torch.zeros(4, C), torch.zeros(4, dtype=torch.long)
    one, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    for step in range(4):  # the bad step is the 2nd; nothing raised before the 5th
        bad = step == 1
        assert stats.add(nan if bad else one, one, nan if bad else one, logits, labels) is None
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2 \(softmax=1, center=nan\)"):
        stats.add(one, one, one, logits, labels)


# ------------------------------------------------------------ AMP


@pytest.mark.parametrize("center_update", ["alpha", "optimizer"])
def test_autocast_bfloat16_features_float32_loss_and_centers(center_update):
    torch.manual_seed(0)
    model = Model(center_update)
    crit = model.center_loss
    images = torch.randn(B, 4)
    _, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.embed(images)
        loss = crit(feats, y)
    assert feats.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and crit.centers.dtype == torch.float32
    feats.retain_grad()
    loss.backward()
    assert feats.grad.dtype == torch.bfloat16
    if center_update == "optimizer":
        assert crit.centers.grad.dtype == torch.float32
    # the loss of the 16-bit features, computed in float32 or better
    want = reference.center_loss(feats.detach().double(), y, torch.zeros(C, D, dtype=torch.float64))
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-6)


def _scaled_step(scaler, separate):
    torch.manual_seed(0)
    model = Model("optimizer")
    crit = model.center_loss
    net = [*model.embed.parameters(), *model.classifier.parameters()]
    opts = (
        [torch.optim.SGD(net, lr=0.1), torch.optim.SGD(crit.parameters(), lr=0.5)]
        if separate
        else [torch.optim.SGD([*net, *crit.parameters()], lr=0.1)]
    )
    _, y = batch()
    feats = model.embed(torch.randn(B, 4))
    loss = F.cross_entropy(model.classifier(feats), y) + 0.1 * crit(feats, y)
    if scaler is None:
        loss.backward()
        for opt in opts:
            opt.step()
    else:
        scaler.scale(loss).backward()
        for opt in opts:
            scaler.step(opt)
        scaler.update()
    return crit.centers.detach().clone()


@pytest.mark.parametrize("separate", [False, True])
def test_grad_scaler_unscales_the_centers_gradient(separate):
    plain = _scaled_step(None, separate)
    scaled = _scaled_step(torch.amp.GradScaler("cpu", init_scale=2.0**12), separate)
    assert not torch.equal(plain, torch.zeros(C, D))
    torch.testing.assert_close(scaled, plain, rtol=1e-6, atol=1e-7)


def test_a_step_the_scaler_skips_still_moved_alpha_mode_centers():
    x, y = batch()
    x = 100 * x  # loss × 2^127 overflows: the step is skipped
    for center_update in ("alpha", "optimizer"):
        lin = nn.Linear(D, D)
        crit = CenterLoss(C, D, center_update=center_update)
        opt = torch.optim.SGD([*lin.parameters(), *crit.parameters()], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
        w0 = lin.weight.detach().clone()
        scaler.scale(crit(lin(x), y)).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.equal(lin.weight, w0)  # skipped
        assert scaler.get_scale() < 2.0**127
        moved = not torch.equal(crit.centers.detach(), torch.zeros(C, D))
        assert moved == (center_update == "alpha")
