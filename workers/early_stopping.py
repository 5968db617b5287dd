"""Early stopping at the best validation score, keeping that epoch's weights; or, with
no patience (a fixed budget), no stopping and the last epoch's weights. Either way, the
first epoch whose validation loss reached a target, when one is set."""
from __future__ import annotations

from dataclasses import asdict

from torch import nn

from workers.config import TrainingConfig

# Whether a larger value of the monitored metric is better.
HIGHER_IS_BETTER = {"val_loss": False, "val_accuracy": True}


class EarlyStopping:
    """Remembers the best epoch and its weights; says when patience has run out.

    An epoch counts as an improvement when it beats the best value by more than
    `min_delta`; after `patience` epochs without one, training should stop.
    """

    def __init__(self, *, monitor: str, patience: int | None, min_delta: float,
                 target_val_loss: float | None = None):
        """`patience` None: early stopping is off; every epoch up to the budget runs and
        the last one is kept. `target_val_loss`: target_epoch is the first epoch whose
        validation loss was at most this (None until one is)."""
        if monitor not in HIGHER_IS_BETTER:
            raise ValueError(f"cannot monitor {monitor!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.target_val_loss, self.target_epoch = target_val_loss, None
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}  # the best epoch's, to show beside the latest
        self.best_state: dict | None = None
        self.epochs_without_improvement = 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record this epoch; return True when training should stop."""
        value = metrics.get(self.monitor)  # absent for a refit: no validation rows, no patience
        if (self.target_epoch is None and self.target_val_loss is not None
                and metrics["val_loss"] <= self.target_val_loss):
            self.target_epoch = epoch
        if self.patience is None or self._improves(value):  # off: the last epoch is the one kept
            self.best_value, self.best_epoch, self.best_metrics = value, epoch, dict(metrics)
            # Copies: the live tensors keep changing as training goes on. (A clone per
            # tensor: copy.deepcopy took ten times as long, a millisecond an epoch.)
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.ran_out()

    def ran_out(self) -> bool:
        """Whether patience has run out (never, with early stopping off)."""
        return self.patience is not None and self.epochs_without_improvement >= self.patience

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if HIGHER_IS_BETTER[self.monitor]:
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta


def make_stopper(config: TrainingConfig) -> EarlyStopping:
    return EarlyStopping(**asdict(config.early_stopping))
