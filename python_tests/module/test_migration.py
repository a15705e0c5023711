"""docs/migrating.md, checked: the widely copied distance-matrix center loss
(``CenterLoss(num_classes, feat_dim)``: a B x C distance matrix, masked, then
``clamp(min=1e-12, max=1e+12)``; centers an ``nn.Parameter`` learned by their own SGD at
``lr_cent``, their gradient multiplied by ``1 / weight_cent`` before that step) against
``centerloss_ext.CenterLoss`` under the mapping the guide gives. CPU, float64, one
training step of a small model: the losses, the feature gradients, the model's weights and
the centers after the step agree."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from centerloss_ext import CenterLoss

F64 = torch.float64
CLAMP_MIN, CLAMP_MAX = 1e-12, 1e12


class CopiedCenterLoss(nn.Module):
    """The distance-matrix center loss as those repositories write it (their
    ``distmat.addmm_(1, -2, x, centers.t())`` spelled with keywords, which torch >= 2
    requires). Loss: ``sum(clamp(dist * mask)) / batch_size``, no ½."""

    def __init__(self, num_classes: int = 10, feat_dim: int = 2, dtype=F64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim, dtype=dtype))

    def rows(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The clamped, masked (B, C) matrix whose sum / B is the loss."""
        batch_size = x.size(0)
        distmat = (
            torch.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, self.num_classes)
            + torch.pow(self.centers, 2)
            .sum(dim=1, keepdim=True)
            .expand(self.num_classes, batch_size)
            .t()
        )
        distmat = distmat.addmm(x, self.centers.t(), beta=1, alpha=-2)
        classes = torch.arange(self.num_classes).long()
        labels = labels.unsqueeze(1).expand(batch_size, self.num_classes)
        mask = labels.eq(classes.expand(batch_size, self.num_classes))
        dist = distmat * mask.to(distmat.dtype)
        return dist.clamp(min=CLAMP_MIN, max=CLAMP_MAX)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.rows(x, labels).sum() / x.size(0)


class Net(nn.Module):
    """A small embedding + classifier, as in a center-loss training script."""

    def __init__(self, in_dim: int, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, 16), nn.PReLU(), nn.Linear(16, feat_dim))
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)


def setup(C=7, D=3, B=24, in_dim=5, seed=0, labels=None):
    torch.manual_seed(seed)
    net = Net(in_dim, D, C).to(F64)
    theirs = CopiedCenterLoss(C, D)
    with torch.no_grad():
        theirs.centers.mul_(3.0)  # keep every own-class distance well above 1e-12
    images = torch.randn(B, in_dim, dtype=F64)
    y = torch.randint(0, C, (B,)) if labels is None else labels
    return net, theirs, images, y


def copied_step(net, crit, images, y, weight_cent, lr_model, lr_cent):
    """One step of the copied training script: model SGD, then the centers' own SGD on a
    gradient rescaled by 1 / weight_cent ("so weight_cent does not affect the centers")."""
    optimizer_model = torch.optim.SGD(net.parameters(), lr=lr_model)
    optimizer_centloss = torch.optim.SGD(crit.parameters(), lr=lr_cent)
    features = net.embed(images)
    features.retain_grad()
    loss_xent = F.cross_entropy(net.classifier(features), y)
    loss_cent = crit(features, y)
    loss = loss_xent + weight_cent * loss_cent
    optimizer_model.zero_grad()
    optimizer_centloss.zero_grad()
    loss.backward()
    optimizer_model.step()
    for param in crit.parameters():
        param.grad.data *= 1.0 / weight_cent
    optimizer_centloss.step()
    return loss_cent.detach(), features.grad


def ours_step(net, crit, images, y, lam, optimizers, rescale=None):
    features = net.embed(images)
    features.retain_grad()
    center = crit(features, y)
    loss = F.cross_entropy(net.classifier(features), y) + lam * center
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    if rescale is not None:  # the copied script's trick, kept
        crit.centers.grad.mul_(rescale)
    for opt in optimizers:
        opt.step()
    return center.detach(), features.grad


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)


def test_their_centers_load_into_ours():
    """Same state_dict key ("centers"), in both of our modes."""
    theirs = CopiedCenterLoss(5, 3)
    for mode in ("alpha", "optimizer"):
        ours = CenterLoss(5, 3, center_update=mode, dtype=F64)
        ours.load_state_dict(theirs.state_dict())
        assert torch.equal(ours.centers, theirs.centers.detach())


def test_loss_is_twice_ours_plus_the_clamp_of_the_masked_out_zeros():
    C, D, B = 7, 3, 24
    _, theirs, _, y = setup(C, D, B)
    x = torch.randn(B, D, dtype=F64)
    ours = CenterLoss(C, D, dtype=F64).eval()
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        per_sample = theirs.rows(x, y).sum(1)
        ours_none = CenterLoss(C, D, reduction="none", dtype=F64).eval()
        ours_none.load_state_dict(theirs.state_dict())
        # per sample: ‖x_i − c_{y_i}‖² (= 2 × ours) plus (C − 1) × 1e-12, the clamped zeros
        torch.testing.assert_close(
            per_sample, 2 * ours_none(x, y) + (C - 1) * CLAMP_MIN, rtol=1e-13, atol=1e-14
        )
        # the batch mean: the same (C − 1) × 1e-12, once
        extra = theirs(x, y) - 2 * ours(x, y)
    assert abs(extra.item() - (C - 1) * CLAMP_MIN) < 1e-13  # rounding of their expansion
    assert extra.item() > 0.5 * (C - 1) * CLAMP_MIN  # the term is really there


@pytest.mark.parametrize("weight_cent,lr_cent", [(1.0, 0.5), (0.003, 0.5), (0.1, 0.05)])
@pytest.mark.parametrize("how", ["param_group", "own_sgd", "rescale"])
def test_one_training_step_agrees_under_the_mapping(weight_cent, lr_cent, how):
    """λ = 2 × weight_cent; the centers' SGD learning rate lr_cent / weight_cent (a param
    group of the model's SGD, or an SGD of their own), or their 1/λ rescale kept with
    learning rate 2 × lr_cent."""
    C, D, lr_model = 7, 3, 0.1
    net, theirs, images, y = setup(C, D)
    net2 = copy.deepcopy(net)
    ours = CenterLoss(C, D, center_update="optimizer", dtype=F64)
    ours.load_state_dict(theirs.state_dict())
    before = ours.centers.detach().clone()
    lam = 2 * weight_cent

    loss_t, grad_t = copied_step(net, theirs, images, y, weight_cent, lr_model, lr_cent)
    if how == "param_group":
        opts = [
            torch.optim.SGD(
                [
                    {"params": net2.parameters()},
                    {"params": ours.parameters(), "lr": lr_cent / weight_cent},
                ],
                lr=lr_model,
            )
        ]
        loss_o, grad_o = ours_step(net2, ours, images, y, lam, opts)
    elif how == "own_sgd":
        opts = [
            torch.optim.SGD(net2.parameters(), lr=lr_model),
            torch.optim.SGD(ours.parameters(), lr=lr_cent / weight_cent),
        ]
        loss_o, grad_o = ours_step(net2, ours, images, y, lam, opts)
    else:
        opts = [
            torch.optim.SGD(net2.parameters(), lr=lr_model),
            torch.optim.SGD(ours.parameters(), lr=2 * lr_cent),
        ]
        loss_o, grad_o = ours_step(net2, ours, images, y, lam, opts, rescale=1 / lam)

    torch.testing.assert_close(
        weight_cent * loss_t,
        lam * loss_o + weight_cent * (C - 1) * CLAMP_MIN,
        rtol=1e-13,
        atol=1e-15,
    )
    torch.testing.assert_close(grad_o, grad_t, rtol=1e-10, atol=1e-13)
    assert_same_params(net2, net)
    torch.testing.assert_close(
        ours.centers.detach(), theirs.centers.detach(), rtol=1e-12, atol=1e-12
    )
    assert not torch.equal(ours.centers.detach(), before)  # they moved


def test_alpha_rule_matches_their_sgd_on_a_balanced_batch():
    """Every class of the batch with n samples: α = 2·lr_cent·(1 + n) / B gives the same
    centers; the loss and the feature gradient (of the pre-update centers) agree too."""
    C, D, n, weight_cent, lr_cent, lr_model = 6, 3, 4, 0.01, 0.5, 0.05
    present = torch.tensor([0, 2, 3, 5])
    y = present.repeat_interleave(n)[
        torch.randperm(len(present) * n, generator=torch.Generator().manual_seed(1))
    ]
    B = y.numel()
    net, theirs, images, y = setup(C, D, B, labels=y)
    net2 = copy.deepcopy(net)
    alpha = 2 * lr_cent * (1 + n) / B
    ours = CenterLoss(C, D, alpha=alpha, dtype=F64)  # the default: alpha rule
    ours.load_state_dict(theirs.state_dict())
    before = ours.centers.clone()

    loss_t, grad_t = copied_step(net, theirs, images, y, weight_cent, lr_model, lr_cent)
    loss_o, grad_o = ours_step(
        net2, ours, images, y, 2 * weight_cent, [torch.optim.SGD(net2.parameters(), lr=lr_model)]
    )

    torch.testing.assert_close(loss_t, 2 * loss_o + (C - 1) * CLAMP_MIN, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad_o, grad_t, rtol=1e-10, atol=1e-13)
    assert_same_params(net2, net)
    torch.testing.assert_close(ours.centers, theirs.centers.detach(), rtol=1e-12, atol=1e-12)
    absent = torch.tensor([1, 4])
    assert torch.equal(ours.centers[absent], before[absent])


def test_per_class_steps_differ_by_the_class_count_otherwise():
    """In general: their step moves c_j by (2·lr_cent·n_j / B) of the way to the class's
    batch mean, the alpha rule by α·n_j / (1 + n_j) of the way."""
    C, D, weight_cent, lr_cent, alpha = 5, 3, 1.0, 0.5, 0.5
    y = torch.tensor([0] * 9 + [1] * 3 + [3] * 1 + [4] * 3)  # n_j = 9, 3, 0, 1, 3
    B = y.numel()
    net, theirs, images, y = setup(C, D, B, labels=y)
    ours = CenterLoss(C, D, alpha=alpha, dtype=F64)
    ours.load_state_dict(theirs.state_dict())
    c0 = ours.centers.clone()
    with torch.no_grad():
        features = net.embed(images)
    copied_step(net, theirs, images, y, weight_cent, 0.0, lr_cent)
    ours(features, y)
    for j in range(C):
        n_j = int((y == j).sum())
        if n_j == 0:
            assert torch.equal(ours.centers[j], c0[j])
            torch.testing.assert_close(theirs.centers[j].detach(), c0[j])
            continue
        to_mean = features[y == j].mean(0) - c0[j]
        torch.testing.assert_close(
            theirs.centers[j].detach() - c0[j],
            2 * lr_cent * n_j / B * to_mean,
            rtol=1e-10,
            atol=1e-12,
        )
        torch.testing.assert_close(
            ours.centers[j] - c0[j], alpha * n_j / (1 + n_j) * to_mean, rtol=1e-10, atol=1e-12
        )


def test_clamp_max_stops_their_pull_on_far_samples():
    """A squared distance above 1e12 counts as 1e12 there, with no gradient; ours pulls."""
    C, D = 3, 2
    theirs = CopiedCenterLoss(C, D)
    with torch.no_grad():
        theirs.centers.zero_()
    ours = CenterLoss(C, D, center_update="optimizer", dtype=F64)
    x = torch.tensor([[2e6, 0.0], [1.0, 1.0]], dtype=F64, requires_grad=True)
    y = torch.tensor([0, 1])
    loss_t = theirs(x, y)
    loss_t.backward()
    assert loss_t.item() == pytest.approx((1e12 + 2.0 + 2 * (C - 1) * CLAMP_MIN) / 2, rel=1e-12)
    assert torch.equal(x.grad[0], torch.zeros(2, dtype=F64))
    x.grad = None
    ours(x, y).backward()
    torch.testing.assert_close(x.grad[0], torch.tensor([1e6, 0.0], dtype=F64))


def test_nan_row_poisons_every_center_gradient_of_theirs_only_its_own_class_of_ours():
    C, D, B = 5, 3, 8
    _, theirs, _, _ = setup(C, D)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0])
    x = torch.randn(B, D, dtype=F64)
    x[3] = float("nan")  # the only row of class 3
    theirs(x.clone().requires_grad_(), y).backward()
    assert torch.isnan(theirs.centers.grad).all()  # all C centers

    ours = CenterLoss(C, D, center_update="optimizer", dtype=F64)
    ours.load_state_dict(theirs.state_dict())
    loss = ours(x.clone().requires_grad_(), y)
    loss.backward()
    assert torch.isnan(loss)
    grad = ours.centers.grad
    assert torch.isnan(grad[3]).all()
    assert torch.isfinite(grad[[0, 1, 2, 4]]).all()

    alpha_mode = CenterLoss(C, D, dtype=F64)  # alpha rule: the row is left out
    alpha_mode.load_state_dict(theirs.state_dict())
    before = alpha_mode.centers.clone()
    assert torch.isnan(alpha_mode(x, y))
    assert torch.isfinite(alpha_mode.centers).all()
    assert torch.equal(alpha_mode.centers[3], before[3])  # its only row was the NaN one
    assert not torch.equal(alpha_mode.centers[2], before[2])  # the finite rows moved theirs


def test_expansion_cancels_where_the_difference_does_not():
    """Features near centers far from the origin, in float32: the expansion
    ‖x‖² + ‖c‖² − 2·x·c loses the distance to rounding; x − c keeps it."""
    g = torch.Generator().manual_seed(0)
    C, D, B = 4, 64, 32
    centers = 100.0 * torch.randn(C, D, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    x = centers[y] + 1e-2 * torch.randn(B, D, generator=g)
    truth = 0.5 * (x.double() - centers.double()[y]).square().sum(1).mean()

    theirs = CopiedCenterLoss(C, D, dtype=torch.float32)
    ours = CenterLoss(C, D).eval()
    with torch.no_grad():
        theirs.centers.copy_(centers)
        ours.centers.copy_(centers)
        err_theirs = abs((theirs(x, y) / 2).double() - truth) / truth
        err_ours = abs(ours(x, y).double() - truth) / truth
    assert err_ours < 1e-5
    assert err_theirs > 0.1
