"""The training skeleton that the MNIST and the faces scripts share:

- ``RunningStats``: an epoch's loss sums and accuracy kept on the device, read back to
  the host once per log interval (and at the end of the epoch), which is also when a
  non-finite loss is noticed (with the step where it first happened);
- ``resume``: the resume block (load, refuse a changed run, restore every state);
- ``checkpoint_state`` and ``run_record``: what checkpoint.pt and metrics.json hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from .ddp import Ranks, sum_over_ranks
from .errors import Interrupted, NonFiniteLossError, TrainingError
from .files import load_checkpoint

LOG_EVERY = 50  # steps between host read-backs (progress bar, non-finite check)

# layout of RunningStats' device vector
_LOSS, _SOFTMAX, _CENTER, _CORRECT, _SEEN, _BAD = range(6)


class RunningStats:
    """An epoch's statistics without a host sync per step.

    ``add`` accumulates on the device: the loss, its softmax and center parts (each
    weighted by the batch size), the correct predictions, the images seen, and the
    first step whose loss was not finite with its parts. Every ``every`` steps and at
    the last step it reads everything back in one transfer (after one all-reduce under
    torchrun) and returns the epoch means so far, or raises NonFiniteLossError naming
    the epoch, the step and the part of the loss that went bad.
    """

    def __init__(
        self,
        device: torch.device,
        epoch: int,
        steps: int,
        every: int = LOG_EVERY,
        ranks: Ranks = Ranks(),
        hint: str = "",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be positive; got {every}")
        self.epoch, self.steps, self.every, self.ranks, self.hint = epoch, steps, every, ranks, hint
        self._sums = torch.zeros(6, dtype=torch.float64, device=device)
        # the first non-finite step on this rank: [step, loss, softmax, center]; step -1: none
        self._bad = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)
        self._step = torch.zeros((), dtype=torch.float64, device=device)
        self._taken = 0
        self.means: Dict[str, float] = {}

    def add(
        self,
        loss: torch.Tensor,
        softmax: torch.Tensor,
        center: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
    ) -> Optional[Dict[str, float]]:
        """Adds one step; returns the epoch means when this step is a log step."""
        n = labels.shape[0]
        parts = torch.stack([loss.detach(), softmax.detach(), center.detach()]).double()
        bad = ~torch.isfinite(parts[0])
        correct = (logits.detach().argmax(1) == labels).sum().double()
        self._sums += torch.cat(
            [parts * n, correct.reshape(1), parts.new_full((1,), n), bad.double().reshape(1)]
        )
        first = bad & (self._bad[0] < 0)
        self._bad = torch.where(first, torch.cat([self._step.reshape(1), parts]), self._bad)
        self._step += 1
        self._taken += 1
        if self._taken % self.every == 0 or self._taken == self.steps:
            return self.sync()
        return None

    def sync(self) -> Dict[str, float]:
        """Reads the statistics back (one transfer); raises on a non-finite loss."""
        total = sum_over_ranks(self._sums, self.ranks)
        values = torch.cat([total, self._bad]).tolist()
        sums, (step, loss, softmax, center) = values[:6], values[6:]
        if sums[_BAD] > 0:
            raise self._non_finite(step, loss, {"softmax": softmax, "center": center})
        seen = max(sums[_SEEN], 1.0)
        self.means = {
            "loss": sums[_LOSS] / seen,
            "softmax": sums[_SOFTMAX] / seen,
            "center": sums[_CENTER] / seen,
            "acc": sums[_CORRECT] / seen,
            "seen": int(sums[_SEEN]),
        }
        return self.means

    def _non_finite(
        self, step: float, loss: float, parts: Mapping[str, float]
    ) -> NonFiniteLossError:
        if step < 0:  # another rank's loss went bad; this one's did not
            return NonFiniteLossError(
                f"the loss became non-finite on another rank during epoch {self.epoch + 1}"
                f", before step {self._taken + 1}; training stopped on every rank. "
                + (self.hint or _DEFAULT_HINT)
            )
        return non_finite_error(loss, self.epoch, int(step), parts, self.hint)


_DEFAULT_HINT = "Lower the learning rate or the center-loss weight, and check the input data."


def non_finite_error(
    value: float, epoch: int, step: int, parts: Optional[Mapping[str, float]] = None, hint: str = ""
) -> NonFiniteLossError:
    """The error for a loss that became ``value`` at (0-based) ``epoch`` and ``step``,
    naming which part of the loss went bad."""
    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in (parts or {}).items())
    return NonFiniteLossError(
        f"the loss became {value} at epoch {epoch + 1}, step {step + 1}"
        + (f" ({detail})" if detail else "")
        + "; training stopped rather than go on with garbage weights. "
        + (hint or _DEFAULT_HINT)
    )


# ---------------------------------------------------------------- resume and records


@dataclass
class Progress:
    """Where a run stands: epochs done, their history rows, training seconds so far."""

    epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    step: int = 0  # the step of the epoch in progress (not saved)


def check_same_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str], path: Path
) -> None:
    """Resuming with different run-defining options would silently mix two runs."""
    diffs = [
        f"--{k.replace('_', '-')} {saved.get(k)!r} (now {current.get(k)!r})"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise TrainingError(
            f"{path} was trained with "
            + ", ".join(diffs)
            + ": pass the same options to resume, or use another --out"
        )


def load_for_resume(path: Path, map_location: Any, required: Sequence[str] = ()) -> Dict[str, Any]:
    """The checkpoint --resume continues, or a one-line error saying what to do instead."""
    if not Path(path).is_file():
        raise TrainingError(
            f"--resume: no checkpoint at {path}; drop --resume to start a new run there"
        )
    return load_checkpoint(
        path, map_location, flag="--resume:", required=("config", "epoch", "history", *required)
    )


def resume(
    ckpt: Optional[Mapping[str, Any]],
    path: Path,
    config: Mapping[str, Any],
    keys: Sequence[str],
    states: Mapping[str, Any],
    log: Callable[[str], None] = print,
    epochs: Optional[int] = None,
) -> Progress:
    """The resume block of both scripts. With ``ckpt`` (the loaded checkpoint), refuses a
    run that has already done more than ``epochs`` epochs, or whose ``keys`` of ``config``
    differ from the saved ones, loads each of ``states`` (name -> object with
    ``load_state_dict``) from the checkpoint's entry of that name, and returns where the
    run stood. Without it, returns a fresh Progress (the scripts refuse a non-empty
    output folder before they get here)."""
    if ckpt is None:
        return Progress()
    if epochs is not None and ckpt["epoch"] > epochs:
        raise TrainingError(
            f"--resume --epochs {epochs}: {path} has already finished "
            f"{ckpt['epoch']} epochs; pass --epochs {ckpt['epoch']} or more "
            "to continue it"
        )
    check_same_config(ckpt["config"], config, keys, path)
    for name, obj in states.items():
        obj.load_state_dict(ckpt[name])
    log(f"resuming {path} after epoch {ckpt['epoch']}")
    return Progress(ckpt["epoch"], list(ckpt["history"]), ckpt["train_seconds"])


def checkpoint_state(
    config: Mapping[str, Any], progress: Progress, states: Mapping[str, Any], **extra: Any
) -> Dict[str, Any]:
    """What checkpoint.pt holds: the run's config, where it stands, every state dict of
    ``states``, and ``extra`` entries (class names, RNG state, ...)."""
    return {
        "config": dict(config),
        "epoch": progress.epoch,
        "history": progress.history,
        "train_seconds": progress.train_seconds,
        **{name: obj.state_dict() for name, obj in states.items()},
        **extra,
    }


def interrupted(epoch: int, saved: int, path: Path) -> Interrupted:
    """Ctrl-C during (0-based) ``epoch``, with ``saved`` epochs in the checkpoint at
    ``path``."""
    if saved == 0:
        return Interrupted(
            f"during epoch {epoch + 1}, before any epoch finished: nothing was saved",
            resumable=False,
        )
    return Interrupted(
        f"during epoch {epoch + 1}; {path} holds the {saved} finished "
        f"epoch{'s' if saved != 1 else ''}",
        resumable=True,
    )


def run_record(
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
    history: List[Dict[str, Any]],
    final: Optional[Mapping[str, Any]],
    **extra: Any,
) -> Dict[str, Any]:
    """metrics.json: the options, where it ran, ``extra`` facts of the data, the final
    row and every epoch's row."""
    return {
        "config": dict(config),
        **extra,
        "environment": dict(environment),
        "final": final,
        "history": history,
    }
