"""Stopping a diverged training: a non-finite loss or gradient norm never reaches the weights.

    guard = NonFiniteGuard(patience=params.train.nonfinite_patience)
    guard.record_loss(loss)          # every micro-batch (stays on the device: no sync)
    guard.record_grad_norm(norm)     # the pre-clip norm
    guard.check(step, model)         # before each optimizer step: skip the update, or raise

Within ``train.nonfinite_patience`` consecutive bad steps the update is skipped (its gradients
dropped); one more and :class:`TrainingDivergedError` stops training.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm stopped being finite (more than train.nonfinite_patience steps)."""

    user_error = True  # cctune prints it as one line (cc_core.cli.is_user_error)


class NonFiniteGuard:
    def __init__(self, patience: int = 0) -> None:
        self.patience = patience
        self.streak = 0
        self._loss_bad: torch.Tensor | None = None  # on the device: no sync per micro-batch
        self._grad_norm: float | torch.Tensor | None = None

    def record_loss(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def record_grad_norm(self, norm) -> None:
        self._grad_norm = norm

    def check(self, step: int, model: torch.nn.Module) -> None:
        """Before optimizer step ``step`` (1-based): a non-finite loss or gradient norm skips the update
        (its gradients dropped) while the streak is within the patience, then stops training."""
        loss_bad = bool(self._loss_bad) if self._loss_bad is not None else False
        norm = float(self._grad_norm) if self._grad_norm is not None else None
        self._loss_bad, self._grad_norm = None, None
        if not loss_bad and (norm is None or math.isfinite(norm)):
            self.streak = 0
            return
        self.streak += 1
        what = "loss" if loss_bad else f"gradient norm ({norm})"
        if self.streak > self.patience:
            raise TrainingDivergedError(
                f"training diverged: non-finite {what} at step {step} ({self.streak} step(s) in a row, "
                f"train.nonfinite_patience={self.patience}); nothing of this run after its last "
                "checkpoint was kept. Lower train.learning_rate or raise train.max_grad_norm's strictness")
        log.warning("step %d: non-finite %s, update skipped (%d of train.nonfinite_patience=%d)", step, what,
                    self.streak, self.patience)
        for param in model.parameters():
            param.grad = None  # torch optimizers skip parameters without a gradient: no update, no moments
