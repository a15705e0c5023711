"""Input rules shared by the fake kernels and the reference (SPEC "Bad input").

The compiled kernels check the same rules in C++ (csrc/checks.cpp) with the same
messages; these run where no C++ kernel does: at trace time under torch.compile,
and in the pure-PyTorch reference.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LABEL_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # the codes of at::Reduction


def reduction_code(reduction: str) -> int:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    return REDUCTIONS[reduction]


def check_alpha(alpha: float) -> None:
    # The range test alone rejects NaN and ±inf (their comparisons are false); no
    # math.isfinite, which torch.compile cannot trace when alpha is a symbolic float
    # (dynamic=True makes the float attributes of a module inputs of the graph).
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a finite number in [0, 1]; got {alpha!r}")


def check_inputs(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> None:
    """The static rules: dtypes, ranks, widths, batch sizes, devices (no data read)."""
    for name, t in (("features", features), ("labels", labels), ("centers", centers)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if features.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"features must be float16, bfloat16, float32 or float64; got {features.dtype}"
        )
    if centers.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"centers must be float16, bfloat16, float32 or float64; got {centers.dtype}"
        )
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(
            "labels must be an integer tensor (int64 or int32) of class indices; "
            f"got {labels.dtype}"
        )
    if features.dim() != 2:
        raise ValueError(
            f"features must be 2-D (batch, feature_dim); got shape {tuple(features.shape)}"
        )
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (batch,); got shape {tuple(labels.shape)}")
    if centers.dim() != 2:
        raise ValueError(
            f"centers must be 2-D (num_classes, feature_dim); got shape {tuple(centers.shape)}"
        )
    if features.shape[1] != centers.shape[1]:
        raise ValueError(
            f"features must have feature_dim = {centers.shape[1]} columns "
            f"(the width of centers); got {features.shape[1]}"
        )
    if features.shape[0] != labels.shape[0]:
        raise ValueError(
            "features and labels must have the same batch size; got "
            f"{features.shape[0]} features and {labels.shape[0]} labels"
        )
    if not (features.device == labels.device == centers.device):
        raise RuntimeError(
            "features, labels and centers must be on the same device; got "
            f"features on {features.device}, labels on {labels.device}, "
            f"centers on {centers.device}"
        )


def check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """Reads label values (a host sync on CUDA): for the reference and for tests."""
    if labels.numel() == 0:
        return
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise IndexError(
            f"labels must be in [0, num_classes) = [0, {num_classes}); "
            f"got labels[{i}] = {int(labels[i])}"
        )


def loss_dtype(features_dtype: torch.dtype) -> torch.dtype:
    """The features' dtype, or float32 for 16-bit features."""
    return torch.float32 if features_dtype in (torch.float16, torch.bfloat16) else features_dtype


def acc_dtype(features_dtype: torch.dtype, centers_dtype: torch.dtype) -> torch.dtype:
    """float64 if either operand is float64, else float32."""
    return torch.float64 if torch.float64 in (features_dtype, centers_dtype) else torch.float32
