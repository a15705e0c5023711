"""``centerloss_ext.CenterLoss``, the nn.Module most users want: center loss on the
compiled ops.

Its code is shared with ``centerloss_ext.reference.CenterLoss``, the same module on the
plain-PyTorch functions, through ``_module_base.CenterLossBase``: each class lives beside
the functions it runs on, so the oracle (reference.py) never imports the compiled ops.
"""

from __future__ import annotations

from . import ops
from ._module_base import CENTER_UPDATES, COMPILED, CenterLossBase
from .reference import ReferenceCenterLoss

# ReferenceCenterLoss: importable from here as before; it lives in reference.py.
__all__ = ["CENTER_UPDATES", "CenterLoss", "ReferenceCenterLoss"]


class CenterLoss(CenterLossBase):
    """Center loss (Wen et al., ECCV 2016): ``½‖x_i − c_{y_i}‖²`` averaged over the batch.

    Use it beside a softmax loss: ``loss = ce(logits, y) + lam * center_loss(feats, y)``.

    Args:
        num_classes: C, the number of classes (centers).
        feature_dim: D, the width of the features.
        alpha: the center learning rate of the paper's update rule (``center_update="alpha"``).
        center_update: ``"alpha"``: ``centers`` is a buffer that every training-mode forward
            moves by the paper's rule (eq. 4), after the loss has used the old centers;
            ``module.eval()`` stops it. ``"optimizer"``: ``centers`` is an ``nn.Parameter``
            that your optimizer learns from its gradient (note: a dense C × D gradient, as
            for ``nn.Embedding``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        device, dtype: of the centers (float32 by default, whatever the features' dtype).
        process_group: the ``torch.distributed`` group whose ranks share the centers
            (alpha mode); None: the default group, when one is initialised.
        sync: alpha mode under ``torch.distributed`` (see below); ``False`` lets each
            rank's centers follow its own batches only.

    Centers start at zero; they are in ``state_dict()`` under ``"centers"`` in both modes.

    Multi-process (alpha mode): when ``torch.distributed`` is initialised (or a
    ``process_group`` is given) and ``sync`` is true, every training-mode forward
    all-gathers the features and labels of all ranks (any batch sizes, 0 included) and
    applies the update to that global batch, deterministically, so the centers stay
    bit-identical on every rank and equal a single process's update on the concatenated
    batch. The forward is then a collective: every rank of the group must call it. The
    loss and its gradients stay local, as ``DistributedDataParallel`` expects. The exchange
    is O(world × B × D) per step, never O(C × D); it traces under
    ``torch.compile(fullgraph=True)`` (a custom op). On the first synced step, and the first
    after ``load_state_dict``, every rank takes the centers of the group's first rank (a
    one-time C × D broadcast, as DDP does with parameters). Leave this module out of DDP's
    wrapped model, or pass ``broadcast_buffers=False``: DDP would otherwise broadcast the
    C × D centers every step for nothing. In optimizer mode ``centers`` is an ordinary
    parameter and DDP keeps it in sync (by all-reducing its C × D gradient).
    """

    # the number of its implementation (implementations.IMPLEMENTATIONS), for the synced op
    _impl = COMPILED
    _center_loss = staticmethod(ops.center_loss)
    _center_loss_and_update_ = staticmethod(ops.center_loss_and_update_)
