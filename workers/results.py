"""What became of one fold: the one result type from the training loop to the dispatcher."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["succeeded", "failed", "cancelled"]  # a fold's end states (services.states)


@dataclass(frozen=True)
class FoldResult:
    index: int
    status: Status
    best_epoch: int = 0
    epochs_run: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)  # validation, at best_epoch
    test_metrics: dict[str, float] = field(default_factory=dict)  # of the best epoch's weights
    checkpoint: bytes | None = None  # torch.save of the best epoch's state_dict
    error: str | None = None         # why it failed

    @classmethod
    def failed(cls, index: int, error: str, epochs_run: int = 0) -> "FoldResult":
        return cls(index, "failed", epochs_run=epochs_run, error=error)

    @classmethod
    def cancelled(cls, index: int) -> "FoldResult":
        return cls(index, "cancelled")
