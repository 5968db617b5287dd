"""Progress a fold task sends while it runs, read by the dispatcher (through Ray's
progress board) and stored there: plain data, so both sides agree on one typed shape."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class FoldStarted:
    """An attempt at a fold began (a retried fold sends one per attempt)."""
    job_id: str
    fold: int
    device: str
    worker: str                  # host:pid, to tell attempts apart
    resumed_after_epoch: int     # 0 when it starts from scratch
    node: str = ""               # the Ray node it runs on (its id), where there is one


@dataclass(frozen=True)
class EpochEnded:
    job_id: str
    fold: int
    epoch: int
    metrics: dict[str, float]    # train_loss, train_loss_ewma(_corrected), val_<metric>
    best_epoch: int              # the best epoch so far, this one included
    # Stamped where the epoch ran, once: an event stored twice (a dispatcher failed
    # between storing and acknowledging it) is then the same MLflow metric, kept once.
    time_ms: int


ProgressEvent = Union[FoldStarted, EpochEnded]
