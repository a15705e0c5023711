"""Python face of the compiled ops: fake kernels, autograd, and the functional API.

The ops themselves (torch.ops.centerloss.*) are declared in csrc/ops.cpp. Autograd is a
torch.autograd.Function rather than torch.library.register_autograd because the
training step's op mutates the centers, and register_autograd takes functional ops
only. Backward never reads the centers: forward saves the difference rows x - c[y],
so the in-place alpha update cannot invalidate what backward needs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from ._checks import acc_dtype, check_alpha, check_inputs, loss_dtype, reduction_code

_ops = torch.ops.centerloss


# --- fake (meta) kernels: shapes and dtypes for torch.compile and meta tensors ------------

def _fake_outputs(features: torch.Tensor, centers: torch.Tensor, reduction: int,
                  need_diff: bool):
    B, D = features.shape
    loss_shape = (B,) if reduction == 0 else ()
    loss = features.new_empty(loss_shape, dtype=loss_dtype(features.dtype))
    # diff rows in the accumulation dtype: backward and the center sums read them unrounded
    diff = features.new_empty((B if need_diff else 0, D),
                              dtype=acc_dtype(features.dtype, centers.dtype))
    return loss, diff


@torch.library.register_fake("centerloss::forward")
def _forward_fake(features, labels, centers, reduction, need_diff):
    check_inputs(features, labels, centers)
    return _fake_outputs(features, centers, reduction, need_diff)


@torch.library.register_fake("centerloss::forward_update_")
def _forward_update_fake(centers, features, labels, reduction, alpha, need_diff,
                         deterministic=False):
    check_inputs(features, labels, centers)
    check_alpha(alpha)
    return _fake_outputs(features, centers, reduction, need_diff)


@torch.library.register_fake("centerloss::update_centers_")
def _update_centers_fake(centers, features, labels, alpha, deterministic=False):
    check_inputs(features, labels, centers)
    check_alpha(alpha)


@torch.library.register_fake("centerloss::backward_features")
def _backward_features_fake(grad_loss, diff, reduction, out_dtype=None):
    return torch.empty_like(diff, dtype=diff.dtype if out_dtype is None else out_dtype)


@torch.library.register_fake("centerloss::backward_centers")
def _backward_centers_fake(grad_loss, diff, labels, reduction, num_classes, centers_dtype,
                           deterministic=False):
    return diff.new_empty((num_classes, diff.shape[1]), dtype=centers_dtype)


# --- autograd ---------------------------------------------------------------------------

class _CenterLossFunction(torch.autograd.Function):
    """Loss with a gradient for features and centers; with `alpha`, the same pass also
    applies the alpha rule to the centers (which then must not require grad)."""

    @staticmethod
    def forward(ctx, features, labels, centers, reduction: int, alpha: Optional[float],
                need_diff: bool):
        if alpha is None:
            loss, diff = _ops.forward(features, labels, centers, reduction, need_diff)
        else:
            loss, diff = _ops.forward_update_(centers, features, labels, reduction, alpha,
                                              need_diff,
                                              torch.are_deterministic_algorithms_enabled())
        ctx.save_for_backward(diff, labels)
        ctx.reduction = reduction
        ctx.num_classes = centers.shape[0]
        ctx.centers_dtype = centers.dtype
        ctx.features_dtype = features.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        diff, labels = ctx.saved_tensors
        grad_features = grad_centers = None
        if ctx.needs_input_grad[0]:
            grad_features = _ops.backward_features(grad_loss, diff, ctx.reduction,
                                                   ctx.features_dtype)
        if ctx.needs_input_grad[2]:
            grad_centers = _ops.backward_centers(grad_loss, diff, labels, ctx.reduction,
                                                 ctx.num_classes, ctx.centers_dtype,
                                                 torch.are_deterministic_algorithms_enabled())
        return grad_features, None, grad_centers, None, None, None


def _needs_diff(features: torch.Tensor, centers: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (features.requires_grad or centers.requires_grad)


# --- functional API ---------------------------------------------------------------------

def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """Center loss ``l_i = ½‖x_i − c_{y_i}‖²``, reduced by ``reduction``.

    Args:
        features: (B, D) float16/bfloat16/float32/float64, any strides.
        labels: (B,) int64 or int32 class indices in [0, C).
        centers: (C, D) floating; differentiable if it requires grad.
        reduction: ``"mean"`` (Σ l_i / B, 0 for B = 0), ``"sum"`` or ``"none"`` (the vector l).

    Returns:
        The loss in the features' dtype (float32 for 16-bit features). Centers are not
        changed; see :func:`center_loss_and_update_` for the training step of alpha mode.
    """
    red = reduction_code(reduction)
    return _CenterLossFunction.apply(features, labels, centers, red, None,
                                     _needs_diff(features, centers))


def center_loss_and_update_(features: torch.Tensor, labels: torch.Tensor,
                            centers: torch.Tensor, alpha: float,
                            reduction: str = "mean") -> torch.Tensor:
    """The alpha-mode training step in one fused pass: the loss of
    :func:`center_loss` with the centers as they are, then the paper's update
    ``c_j ← c_j − α Σ_{y_i=j}(c_j − x_i) / (1 + n_j)`` applied in place to the classes in
    the batch (rows with non-finite features are left out of it).

    ``centers`` must not require grad: it is changed in place after being read.
    """
    red = reduction_code(reduction)
    check_alpha(alpha)
    if centers.requires_grad:
        raise ValueError("centers must not require grad when updated by the alpha rule; "
                         "use center_update='optimizer' to learn them by gradient")
    return _CenterLossFunction.apply(features, labels, centers, red, float(alpha),
                                     _needs_diff(features, centers))


def set_cuda_label_check(enabled: bool) -> bool:
    """Whether the CUDA kernels raise ``IndexError`` on a label outside ``[0, C)``.

    On (the default) each CUDA call reads one flag back from the device: one host sync.
    Off, no sync; a bad label still never touches memory outside the tensors: the
    loss comes out NaN and the centers stay as they were, silently. (The CPU always
    checks: it costs nothing there.) Returns the previous setting.
    """
    from . import _C

    return _C.set_cuda_label_check(bool(enabled))


def update_centers_(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                    alpha: float, *, deterministic: Optional[bool] = None) -> torch.Tensor:
    """The paper's center update (eq. 4) in place, without computing the loss.

    ``n_j = #{i: y_i = j}``, ``c_j ← c_j − α Σ_{y_i=j}(c_j − x_i) / (1 + n_j)`` for the classes
    present; rows with non-finite features count as absent. Returns ``centers``.

    ``deterministic``: bit-identical results run to run (on CUDA: sorted sums instead of
    atomics); ``None`` follows ``torch.are_deterministic_algorithms_enabled()``. The CPU
    kernels are deterministic always.
    """
    check_alpha(alpha)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.no_grad():
        _ops.update_centers_(centers, features.detach(), labels, float(alpha), deterministic)
    return centers
