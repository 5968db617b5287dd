"""Job and fold states and their transition tables.

    Job:  queued → running → succeeded | failed | cancelled;  queued → cancelled;
          running → queued (its start failed for a passing reason: retried later)
    Fold: pending → running → succeeded | failed | cancelled;  pending → cancelled;
          running → pending (its worker was lost and the fold is retried)

Only services.lifecycle writes a status, and only along these tables.
"""
from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FoldStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_TRANSITIONS: dict[JobStatus, set[JobStatus]] = {
    JobStatus.QUEUED: {JobStatus.RUNNING, JobStatus.CANCELLED},
    JobStatus.RUNNING: {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED},
    JobStatus.SUCCEEDED: set(),
    JobStatus.FAILED: set(),
    JobStatus.CANCELLED: set(),
}

FOLD_TRANSITIONS: dict[FoldStatus, set[FoldStatus]] = {
    FoldStatus.PENDING: {FoldStatus.RUNNING, FoldStatus.CANCELLED},
    FoldStatus.RUNNING: {FoldStatus.SUCCEEDED, FoldStatus.FAILED, FoldStatus.CANCELLED,
                         FoldStatus.PENDING},
    FoldStatus.SUCCEEDED: set(),
    FoldStatus.FAILED: set(),
    FoldStatus.CANCELLED: set(),
}

FINISHED_JOB = {s for s, nxt in JOB_TRANSITIONS.items() if not nxt}
FINISHED_FOLD = {s for s, nxt in FOLD_TRANSITIONS.items() if not nxt}


class IllegalTransition(Exception):
    def __init__(self, kind: str, current: enum.Enum, target: enum.Enum):
        super().__init__(f"{kind} cannot go from {current.value} to {target.value}")


def check_job(current: JobStatus, target: JobStatus) -> None:
    if target not in JOB_TRANSITIONS[current]:
        raise IllegalTransition("job", current, target)


def check_fold(current: FoldStatus, target: FoldStatus) -> None:
    if target not in FOLD_TRANSITIONS[current]:
        raise IllegalTransition("fold", current, target)
