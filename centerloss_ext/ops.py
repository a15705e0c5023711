"""Python face of the compiled ops: fake kernels, autograd, and the functional API.

The ops themselves (torch.ops.centerloss.*) are declared in csrc/ops.cpp. Autograd is a
torch.autograd.Function rather than torch.library.register_autograd because the
training step's op mutates the centers, and register_autograd takes functional ops
only. Backward never reads the centers: forward saves the difference rows x - c[y],
so the in-place alpha update cannot invalidate what backward needs. Under
``create_graph=True`` the backward is itself a Function (the fused backward ops forward,
torch ops on the saved rows backward), so double backward gives true second-order
gradients; torch.compile's AOTAutograd refuses double backward with its own error.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._checks import acc_dtype, check_alpha, check_inputs, loss_dtype, reduction_code

_ops = torch.ops.centerloss


# --- fake (meta) kernels: shapes and dtypes for torch.compile and meta tensors ------------


def _fake_outputs(features: torch.Tensor, centers: torch.Tensor, reduction: int, need_diff: bool):
    B, D = features.shape
    loss_shape = (B,) if reduction == 0 else ()
    loss = features.new_empty(loss_shape, dtype=loss_dtype(features.dtype))
    # diff rows in the accumulation dtype: backward and the center sums read them unrounded
    diff = features.new_empty(
        (B if need_diff else 0, D), dtype=acc_dtype(features.dtype, centers.dtype)
    )
    return loss, diff


@torch.library.register_fake("centerloss::forward")
def _forward_fake(features, labels, centers, reduction, need_diff):
    check_inputs(features, labels, centers)
    return _fake_outputs(features, centers, reduction, need_diff)


@torch.library.register_fake("centerloss::forward_update_")
def _forward_update_fake(
    centers, features, labels, reduction, alpha, need_diff, deterministic=False
):
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
def _backward_centers_fake(
    grad_loss, diff, labels, reduction, num_classes, centers_dtype, deterministic=False
):
    return diff.new_empty((num_classes, diff.shape[1]), dtype=centers_dtype)


# --- autograd ---------------------------------------------------------------------------


class _Saved(NamedTuple):
    """What the loss's forward keeps for its backward, beside the saved tensors."""

    reduction: int
    num_classes: int
    centers_dtype: torch.dtype
    features_dtype: torch.dtype


class _CenterLossFunction(torch.autograd.Function):
    """Loss with a gradient for features and centers; with `alpha`, the same pass also
    applies the alpha rule to the centers (which then must not require grad)."""

    @staticmethod
    def forward(
        ctx, features, labels, centers, reduction: int, alpha: Optional[float], need_diff: bool
    ):
        if alpha is None:
            loss, diff = _ops.forward(features, labels, centers, reduction, need_diff)
        else:
            loss, diff = _ops.forward_update_(
                centers,
                features,
                labels,
                reduction,
                alpha,
                need_diff,
                torch.are_deterministic_algorithms_enabled(),
            )
        # features and centers only as the inputs a double backward differentiates
        # (never read: backward reads diff). The centers only when they take a gradient,
        # which the alpha rule forbids: its update would fail autograd's version check.
        ctx.save_for_backward(
            diff,
            labels,
            features if ctx.needs_input_grad[0] else None,
            centers if ctx.needs_input_grad[2] else None,
        )
        ctx.saved = _Saved(reduction, centers.shape[0], centers.dtype, features.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        diff, labels, features, centers = ctx.saved_tensors
        deterministic = torch.are_deterministic_algorithms_enabled()
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable
            grad_features, grad_centers = _CenterLossBackward.apply(
                grad_loss, features, centers, diff, labels, ctx.saved, deterministic
            )
        else:
            grad_features, grad_centers = _fused_backward(
                grad_loss,
                diff,
                labels,
                ctx.saved,
                deterministic,
                ctx.needs_input_grad[0],
                ctx.needs_input_grad[2],
            )
        return grad_features, None, grad_centers, None, None, None


def _fused_backward(
    grad_loss,
    diff,
    labels,
    saved: _Saved,
    deterministic: bool,
    need_features: bool,
    need_centers: bool,
):
    """The gradients for the features and the centers (each None when not needed), by the
    fused backward ops."""
    grad_features = grad_centers = None
    if need_features:
        grad_features = _ops.backward_features(
            grad_loss, diff, saved.reduction, saved.features_dtype
        )
    if need_centers:
        grad_centers = _ops.backward_centers(
            grad_loss,
            diff,
            labels,
            saved.reduction,
            saved.num_classes,
            saved.centers_dtype,
            deterministic,
        )
    return grad_features, grad_centers


class _CenterLossBackward(torch.autograd.Function):
    """The backward of the loss as a differentiable function (double backward, e.g. a
    gradient penalty). Forward: the fused backward ops. Backward: torch ops on the saved
    tensors only (never the centers the alpha rule may have moved since).

    With d_i = x_i − c_{y_i} and s_i the row scale (g / B, g, or g_i for mean, sum, none),
    the first gradients are gx_i = s_i d_i and gc_j = −Σ_{y_i=j} s_i d_i. For incoming
    gradients (ggx, ggc), let v_i = ggx_i − ggc_{y_i}; then
    ∂/∂x_i = s_i v_i, ∂/∂c_j = −Σ_{y_i=j} s_i v_i and ∂/∂g = Σ_i ⟨d_i, v_i⟩ (/ B for mean;
    per row for none).

    ``features`` / ``centers`` are inputs only to connect the graph (None when they take no
    gradient); their values enter only as a zero (t − t.detach()), so that d is itself
    differentiable and the gradient w.r.t. g has the right higher derivatives.
    """

    @staticmethod
    def forward(
        ctx, grad_loss, features, centers, diff, labels, saved: _Saved, deterministic: bool
    ):
        ctx.save_for_backward(grad_loss, features, centers, diff, labels)
        ctx.saved = saved
        return _fused_backward(
            grad_loss, diff, labels, saved, deterministic, features is not None, centers is not None
        )

    @staticmethod
    def backward(ctx, grad_grad_features, grad_grad_centers):
        grad_loss, features, centers, diff, labels = ctx.saved_tensors
        acc = diff.dtype
        rows = torch.zeros_like(diff)  # v_i
        if grad_grad_features is not None:
            rows = rows + grad_grad_features.to(acc)
        if grad_grad_centers is not None:
            rows = rows - grad_grad_centers.to(acc).index_select(0, labels)
        scale = _row_scale(grad_loss.to(acc), ctx.saved.reduction, diff.shape[0])
        scaled = rows * scale
        grad_g = grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            d = diff
            if features is not None and features.requires_grad:
                d = d + (features.to(acc) - features.detach().to(acc))
            if centers is not None and centers.requires_grad:
                picked = centers.index_select(0, labels).to(acc)
                d = d - (picked - picked.detach())
            per_row = (d * rows).sum(1)
            if ctx.saved.reduction == 0:
                grad_g = per_row
            else:
                grad_g = per_row.sum()
                if ctx.saved.reduction == 1:
                    grad_g = grad_g / max(diff.shape[0], 1)
            grad_g = grad_g.to(grad_loss.dtype)
        if ctx.needs_input_grad[1]:
            grad_x = scaled.to(features.dtype)
        if ctx.needs_input_grad[2]:
            grad_c = (
                scaled.new_zeros(ctx.saved.num_classes, diff.shape[1])
                .index_add(0, labels, -scaled)
                .to(centers.dtype)
            )
        return grad_g, grad_x, grad_c, None, None, None, None


def _row_scale(grad_loss: torch.Tensor, reduction: int, batch: int) -> torch.Tensor:
    """s_i, broadcastable to the (B, D) rows: g / B (mean), g (sum), g_i (none)."""
    if reduction == 0:
        return grad_loss.unsqueeze(1)
    if reduction == 1:
        return grad_loss / max(batch, 1)
    return grad_loss


def _needs_diff(features: torch.Tensor, centers: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (features.requires_grad or centers.requires_grad)


# --- functional API ---------------------------------------------------------------------


def center_loss(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
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
    return _CenterLossFunction.apply(
        features, labels, centers, red, None, _needs_diff(features, centers)
    )


def center_loss_and_update_(
    features: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    alpha: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """The alpha-mode training step in one fused pass: the loss of
    :func:`center_loss` with the centers as they are, then the paper's update
    ``c_j ← c_j − α Σ_{y_i=j}(c_j − x_i) / (1 + n_j)`` applied in place to the classes in
    the batch (rows with non-finite features are left out of it).

    ``centers`` must not require grad: it is changed in place after being read.
    """
    red = reduction_code(reduction)
    check_alpha(alpha)
    if centers.requires_grad:
        raise ValueError(
            "centers must not require grad when updated by the alpha rule; "
            "use center_update='optimizer' to learn them by gradient"
        )
    return _CenterLossFunction.apply(
        features, labels, centers, red, float(alpha), _needs_diff(features, centers)
    )


def set_cuda_label_check(enabled: bool) -> bool:
    """Whether the CUDA kernels raise ``IndexError`` on a label outside ``[0, C)``.

    On (the default) each CUDA call reads one flag back from the device: one host sync.
    Off, no sync; a bad label still never touches memory outside the tensors: the
    loss comes out NaN and the centers stay as they were, silently. (The CPU always
    checks: it costs nothing there.) Returns the previous setting.
    """
    from . import _C

    return _C.set_cuda_label_check(bool(enabled))


def update_centers_(
    centers: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    *,
    deterministic: Optional[bool] = None,
) -> torch.Tensor:
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
