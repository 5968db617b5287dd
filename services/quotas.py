"""Per-owner limits, so that one owner cannot stop everyone else's work.

Each limit has a setting (CROSSFOLD_MAX_QUEUED_JOBS...) and may be overridden for one
owner by the administrator (`crossfold keys limits`, the owner_limits table):
- queued jobs and submissions in the last minute: a submission past them gets 429;
- running folds: the dispatcher starts an owner's job only while that owner's unfinished
  folds stay within it; within a priority, owners take turns
  (services.lifecycle.claim_next_job);
- dataset storage: an upload that would keep more bytes than it allows gets 429;
- a job's wall-clock time: `max_runtime_s` is capped by it, and the dispatcher fails a
  job that runs past its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.errors import CrossfoldError, InvalidJob
from services.models import Dataset, Job, OwnerLimits
from services.states import JobStatus

RATE_WINDOW_S = 60


@dataclass(frozen=True)
class Limits:
    max_queued_jobs: int
    max_running_folds: int
    submissions_per_minute: int
    max_dataset_bytes: int
    max_job_runtime_s: int


class QuotaExceeded(CrossfoldError):
    """A limit was reached: 429, and when trying again may help (`retry_after`, seconds)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, retry_after)


def limits_of(session: Session | None, owner: str, defaults: Limits) -> Limits:
    """The owner's limits: the administrator's overrides, if any, over the defaults."""
    row = session.get(OwnerLimits, owner) if session is not None else None
    if row is None:
        return defaults
    return Limits(**{f.name: getattr(row, f.name) or getattr(defaults, f.name) for f in fields(Limits)})


def check_job_fits(spec, limits: Limits) -> None:
    """Rules a job must meet whatever else is running: refused with 422, since waiting
    would not help."""
    if spec.cv.total_folds > limits.max_running_folds:
        field = "cv.repeats" if spec.cv.repeats > 1 else "cv.folds"
        raise InvalidJob(field, f"{spec.cv.total_folds} folds (folds × repeats) are more than the "
                         f"{limits.max_running_folds} running folds your limit allows: the job could never start")
    if spec.max_runtime_s is not None and spec.max_runtime_s > limits.max_job_runtime_s:
        raise InvalidJob("max_runtime_s", f"must be at most {limits.max_job_runtime_s:,} s (your limit, "
                         "CROSSFOLD_MAX_JOB_RUNTIME_S)")


def runtime_of(spec, limits: Limits) -> int:
    """The job's own limit, within the owner's (which the administrator may have lowered
    since the job was submitted)."""
    return min(spec.max_runtime_s or limits.max_job_runtime_s, limits.max_job_runtime_s)


@dataclass(frozen=True)
class SubmissionUsage:
    """What an owner has queued, and submitted in the last minute (the oldest when)."""
    queued: int
    recent: int
    oldest_recent: datetime | None


def submission_usage(session: Session, owner: str) -> SubmissionUsage:
    queued = session.scalar(select(func.count()).select_from(Job)
                            .where(Job.owner == owner, Job.status == JobStatus.QUEUED))
    since = datetime.now(timezone.utc) - timedelta(seconds=RATE_WINDOW_S)
    recent, oldest = session.execute(select(func.count(), func.min(Job.created_at))
                                     .where(Job.owner == owner, Job.created_at > since)).one()
    return SubmissionUsage(queued, recent, oldest)


def check_submission(usage: SubmissionUsage, limits: Limits, arriving: int) -> None:
    """Whether `arriving` more jobs may be queued on top of `usage`: QuotaExceeded if not."""
    if usage.queued + arriving > limits.max_queued_jobs:
        raise QuotaExceeded(f"you have {usage.queued + arriving - 1} queued jobs; your limit is "
                            f"{limits.max_queued_jobs} (CROSSFOLD_MAX_QUEUED_JOBS): wait for some to start, "
                            "or cancel some", 30)
    if usage.recent + arriving > limits.submissions_per_minute:
        oldest = as_utc(usage.oldest_recent) if usage.oldest_recent else datetime.now(timezone.utc)
        frees_in = RATE_WINDOW_S - (datetime.now(timezone.utc) - oldest).total_seconds()
        raise QuotaExceeded(f"{usage.recent + arriving - 1} jobs submitted in the last minute; your limit "
                            f"is {limits.submissions_per_minute} (CROSSFOLD_SUBMISSIONS_PER_MINUTE)",
                            math.ceil(frees_in))


def check_storage(session: Session, owner: str, limits: Limits, adding: int) -> None:
    """Whether the owner may keep `adding` more bytes of datasets: QuotaExceeded if not."""
    kept = session.scalar(select(func.coalesce(func.sum(Dataset.size), 0)).where(Dataset.owner == owner))
    if kept + adding > limits.max_dataset_bytes:
        raise QuotaExceeded(f"your datasets keep {kept:,} bytes; {adding:,} more would pass your limit of "
                            f"{limits.max_dataset_bytes:,} (CROSSFOLD_MAX_DATASET_BYTES): delete some "
                            "datasets first", 3600)


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
