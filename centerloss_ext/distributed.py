"""Multi-process center sync (SPEC "Multi-process"): the alpha update of every rank sees
the global batch, so the centers stay bit-identical on every rank.

Why gather the batch rather than average the centers: under data parallelism each rank
holds a slice of the batch. Averaging the centers (or their updates) is an all-reduce of
a C × D buffer every step, 400 MB at C = 100,000 and D = 1024 in float32. What the update
reads is far smaller: the features and labels of the batch. So the ranks all-gather those,
O(world × B × D), in rank order, and each applies the same deterministic update to the
same concatenated batch. No center crosses the wire, and the result is exactly the
single-process update on the concatenation of all ranks' batches.

The exchange goes through ``torch.distributed`` collectives (gloo on the CPU, NCCL on the
GPU), as two all-gathers: a 4-number header per rank (a flag saying its inputs are good,
batch size, width, dtype), then the batch, one byte row per sample holding its int64
label and its features in their own dtype, padded to the largest batch of the step (one
collective rather than one for features and one for labels: on small batches the cost is
the latency of each). The header lets ranks with different batch sizes (the last batch,
or an empty one) take part, and lets a rank with bad input make every rank raise, rather
than leave the others waiting in a collective it will never join, or worse, pair their
collectives with its next step's.

Every rank must also start from the same centers: CenterLoss broadcasts those of the
group's first rank on its first synced step and on the first after ``load_state_dict``,
as DDP does with parameters when it wraps a model (C × D once, not per step).

Both steps are custom ops (``torch.ops.centerloss.sync_update_``, ``.broadcast_``) with no
outputs, opaque to ``torch.compile``: a compiled CenterLoss traces without a graph break
under sync too.

A single process never loads this file: CenterLoss imports it on its first synced step,
or when given a process group. The update each implementation applies to the gathered
batch comes from ``implementations`` (the synced op names it by number).
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ._checks import FLOAT_DTYPES, check_inputs
from ._module_base import DEFAULT_GROUP_KEY
from .implementations import GATHERED_UPDATES

__all__ = ["all_gather_batch", "is_initialized"]

# Process groups by key: a custom op's arguments must be tensors or plain values, so the
# module stores an int. Key 0 (DEFAULT_GROUP_KEY) means the default group, looked up at
# call time.
_GROUPS: Dict[int, "dist.ProcessGroup"] = {}


def is_initialized() -> bool:
    """``torch.distributed`` is available and its default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def group_key(group: Optional["dist.ProcessGroup"]) -> int:
    """The key under which ``group`` is passed to the ops (0: the default group)."""
    if group is None:
        return DEFAULT_GROUP_KEY
    if not dist.is_available():
        raise RuntimeError(
            "process_group was given but torch.distributed is not available in this build of torch"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            "process_group must be a torch.distributed.ProcessGroup or None; got "
            f"{type(group).__name__}"
        )
    key = id(group)  # stays unique: _GROUPS holds a reference to the group
    _GROUPS.setdefault(key, group)
    return key


def group_of(key: int) -> Optional["dist.ProcessGroup"]:
    """The group of ``key``; None for the default group."""
    return None if key == DEFAULT_GROUP_KEY else _GROUPS[key]


# --- the exchange -------------------------------------------------------------------------


def _gather_rows(send: torch.Tensor, group) -> torch.Tensor:
    """All-gather equal-shaped ``send`` tensors into one (world × rows, ...) tensor, in rank
    order. The list form of ``all_gather`` works on gloo and NCCL in every torch we support
    (recent torch deprecates ``all_gather_into_tensor``); its outputs are views of one
    buffer, so nothing is copied afterwards."""
    rows = send.shape[0]
    out = send.new_empty((dist.get_world_size(group) * rows,) + tuple(send.shape[1:]))
    dist.all_gather(list(out.split(rows)), send, group=group)
    return out


def _pack(features: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """One byte row per sample, ``rows`` rows (the step's largest batch; the rows past B are
    padding, never read): the label as int64, then the features in their own dtype, the
    width rounded up to 8 bytes so that both can be viewed in place on arrival."""
    batch, dim = features.shape
    width = dim * features.dtype.itemsize
    buf = torch.empty(rows, 8 + -(-width // 8) * 8, dtype=torch.uint8, device=features.device)
    buf[:batch, :8] = labels.to(torch.int64).unsqueeze(1).view(torch.uint8)
    buf[:batch, 8 : 8 + width] = features.contiguous().view(torch.uint8)
    return buf


def _unpack(buf: torch.Tensor, dim: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """The features and labels of gathered rows, as views (the features' rows strided:
    the update kernels take any strides)."""
    width = dim * dtype.itemsize
    return buf[:, 8 : 8 + width].view(dtype), buf[:, :8].view(torch.int64).squeeze(1)


def _exchange_headers(header: List[int], device: torch.device, group) -> List[List[int]]:
    return _gather_rows(torch.tensor([header], dtype=torch.int64, device=device), group).tolist()


def _check_local(features, labels, centers) -> None:
    if centers is not None:
        check_inputs(features, labels, centers)
    elif not (
        isinstance(features, torch.Tensor)
        and features.dim() == 2
        and features.dtype in FLOAT_DTYPES
        and isinstance(labels, torch.Tensor)
        and labels.shape == features.shape[:1]
        and not labels.is_floating_point()
    ):
        raise ValueError(
            "all_gather_batch wants 2-D floating features (B, D) and integer labels (B,)"
        )


def _gather(
    features: torch.Tensor, labels: torch.Tensor, centers: Optional[torch.Tensor], group
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The global batch; see all_gather_batch. Raises on every rank if one rank's inputs
    fail their checks (that rank raises its own error)."""
    device = (centers if centers is not None else features).device
    try:
        _check_local(features, labels, centers)
    except (TypeError, ValueError, RuntimeError):
        announce_failure(device, group)
        raise
    headers = _exchange_headers(
        [1, features.shape[0], features.shape[1], FLOAT_DTYPES.index(features.dtype)], device, group
    )
    bad = [r for r, h in enumerate(headers) if not h[0]]
    if bad:
        raise RuntimeError(
            f"center sync: rank(s) {bad} of the process group had invalid "
            "inputs (see the error there); centers left untouched on every rank"
        )
    if len({(d, k) for _, _, d, k in headers}) > 1:
        got = [f"rank {r}: width {d}, {FLOAT_DTYPES[k]}" for r, (_, _, d, k) in enumerate(headers)]
        raise ValueError(
            "center sync: every rank must pass features of the same width and "
            "dtype; got " + "; ".join(got)
        )
    sizes = [h[1] for h in headers]
    rows = max(sizes)
    if rows == 0:  # every rank's batch is empty: nothing to exchange
        return features.new_empty(0, features.shape[1]), labels.new_empty(0, dtype=torch.int64)
    gathered = _gather_rows(_pack(features.detach(), labels, rows), group)
    if any(n != rows for n in sizes):  # drop the padding rows
        gathered = torch.cat([gathered[r * rows : r * rows + n] for r, n in enumerate(sizes) if n])
    return _unpack(gathered, features.shape[1], features.dtype)


def announce_failure(device: torch.device, group) -> None:
    """This rank's part of the header exchange when its step failed before the sync: the
    other ranks then raise too instead of waiting (the caller re-raises its own error)."""
    _exchange_headers([0, 0, 0, 0], device, group)


def all_gather_batch(
    features: torch.Tensor, labels: torch.Tensor, group: Optional["dist.ProcessGroup"] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The global batch: the features and labels of every rank of ``group``, concatenated in
    rank order. A collective: every rank of the group must call it, with any batch size
    (0 included) but the same feature width and dtype.

    Args:
        features: (B, D) floating; gathered detached, in their own dtype (16-bit features
            cost half the bytes of float32).
        labels: (B,) integer; gathered as int64.
        group: the process group; None for the default one.

    Returns:
        ``(features, labels)``: (ΣB, D) in the features' dtype and (ΣB,) int64, on the
        features' device.

    Exchanged per call: a header of 4 int64 per rank, then max_B rows per rank of one
    int64 label and D feature elements (rounded up to 8 bytes), max_B being the largest
    batch of the call (smaller batches are padded to it). Nothing depends on the number of
    classes.
    """
    x, y = _gather(features.detach(), labels, None, group)
    return x.contiguous(), y.contiguous()  # own storage, not views of the byte buffer


# --- the ops CenterLoss calls ---------------------------------------------------------------


def _sync_update_(
    centers: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    key: int,
    impl: int,
) -> None:
    x, y = _gather(features, labels, centers, group_of(key))
    # deterministic: the same sums in the same order on every rank (on CUDA the default
    # path adds with atomics, whose order varies), so the centers stay bit-identical.
    GATHERED_UPDATES[impl](centers, x, y, alpha, deterministic=True)


sync_update_op = torch.library.custom_op(
    "centerloss::sync_update_",
    _sync_update_,
    mutates_args=("centers",),
    schema="(Tensor(a!) centers, Tensor features, Tensor labels, float alpha, int group_key, "
    "int impl) -> ()",
)
sync_update_op.__doc__ = """The alpha rule applied to the global batch of the group of
``group_key``, in place, the same on every rank. ``impl``: the number of the implementation
that does the update (implementations.COMPILED or .REFERENCE). The labels must have been
checked on their rank (the synced step's loss does it)."""


@sync_update_op.register_fake
def _sync_update_fake(centers, features, labels, alpha, key, impl):
    check_inputs(features, labels, centers)


def _broadcast_(centers: torch.Tensor, key: int) -> None:
    group = group_of(key)
    src = 0 if group is None else dist.get_global_rank(group, 0)
    buf = centers if centers.is_contiguous() else centers.contiguous()
    dist.broadcast(buf, src=src, group=group)
    if buf is not centers:
        centers.copy_(buf)


broadcast_op = torch.library.custom_op(
    "centerloss::broadcast_",
    _broadcast_,
    mutates_args=("centers",),
    schema="(Tensor(a!) centers, int group_key) -> ()",
)
broadcast_op.__doc__ = "The centers of the group's first rank, copied to every rank."


@broadcast_op.register_fake
def _broadcast_fake(centers, key):
    return None
