"""How training talks to its caller: the same two hooks for one fold and for a pack.

Named hooks, as skorch's callbacks: `epoch_ended(fold, report)` after each fold's epoch
(the caller reports progress), then `after_epoch(progress)` once per pass of the loop,
which saves an epoch checkpoint (`progress.snapshot()`) when one is due.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    metrics: dict[str, float]  # train_loss, train_loss_ewma(_corrected), val_<metric>
    best_epoch: int            # the best epoch so far, this one included


class Snapshottable(Protocol):
    def snapshot(self) -> bytes: ...


class Callbacks:
    """`report(fold, report)` gets every epoch; `checkpoint(bytes)` gets an epoch checkpoint
    once `checkpoint_every_s` seconds have passed since the last (0: every epoch), since a
    checkpoint costs a copy of the model and the optimizer."""

    def __init__(self, report: Callable[[int, EpochReport], None] | None = None,
                 checkpoint: Callable[[bytes], None] | None = None, checkpoint_every_s: float = 0.0):
        self.report = report or (lambda fold, report: None)
        self.checkpoint, self.every_s = checkpoint, checkpoint_every_s
        self.last = time.monotonic()

    def epoch_ended(self, fold: int, report: EpochReport) -> None:
        self.report(fold, report)

    def after_epoch(self, progress: Snapshottable) -> None:
        if self.checkpoint is not None and time.monotonic() - self.last >= self.every_s:
            self.checkpoint(progress.snapshot())
            self.last = time.monotonic()
