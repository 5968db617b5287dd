"""What became of one fold: the one result type from the training loop to the dispatcher."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Ending(str, enum.Enum):
    """How a fold ended: the end states of services.states.FoldStatus, with its values."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class FoldResult:
    index: int
    status: Ending
    best_epoch: int = 0
    epochs_run: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)  # validation, at best_epoch
    test_metrics: dict[str, float] = field(default_factory=dict)  # of the best epoch's weights
    checkpoint: bytes | None = None  # torch.save of the best epoch's state_dict
    confusion: list[list[int]] | None = None  # on the test rows: [true class][predicted class]
    preprocessing: dict | None = None  # how raw rows became inputs (workers.fold.prepare)
    error: str | None = None         # why it failed
    target_epoch: int | None = None  # the first epoch whose val_loss reached the job's target_val_loss

    @classmethod
    def failed(cls, index: int, error: str, epochs_run: int = 0) -> "FoldResult":
        return cls(index, Ending.FAILED, epochs_run=epochs_run, error=error)

    @classmethod
    def cancelled(cls, index: int) -> "FoldResult":
        return cls(index, Ending.CANCELLED)
