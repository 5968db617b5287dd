"""The job store: read, list and cancel jobs (no HTTP here). Jobs are created by
services.submissions, which stores the submissions that arrive together at once."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from services.errors import JobAlreadyFinished, JobNotFound
from services.lifecycle import cancel_if_queued
from services.models import Job
from services.states import FINISHED_JOB, JobStatus
from services.wakeups import announce


def get_job(*, session: Session, job_id: str, owner: str | None = None) -> Job:
    """A job by id; with `owner`, another owner's job is not found, as if it did not exist."""
    query = select(Job).where(Job.id == job_id).options(selectinload(Job.folds))
    if owner is not None:
        query = query.where(Job.owner == owner)
    job = session.scalar(query)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(*, session: Session, owner: str | None = None, status: JobStatus | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and the total count matching the filter."""
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    page = session.scalars(query.options(selectinload(Job.folds))
                           .order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return list(page), total


def cancel_job(*, session: Session, job_id: str, owner: str | None = None) -> Job:
    """A queued job is cancelled at once; a running one is flagged for its dispatcher,
    which stops its Ray tasks and finishes the cancellation."""
    job = get_job(session=session, job_id=job_id, owner=owner)
    if job.status in FINISHED_JOB:
        raise JobAlreadyFinished(f"job {job_id} has already {job.status.value}")
    if not cancel_if_queued(session, job_id=job_id):
        job.cancel_requested = True
        announce(session)  # its dispatcher, if in another process, stops it once committed
    session.commit()
    session.expire_all()  # the conditional UPDATE bypassed the loaded objects
    return get_job(session=session, job_id=job_id, owner=owner)
