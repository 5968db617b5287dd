"""The job store: create, read, list and cancel jobs (no HTTP here)."""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from services.datasets import describe
from services.errors import IdempotencyConflict, InvalidJob, JobAlreadyFinished, JobNotFound
from services.lifecycle import cancel_if_queued
from services.models import LOCAL_OWNER, Fold, Job
from services.spec import JobSpec
from services.states import FINISHED_JOB, JobStatus


def check_against_data(spec: JobSpec) -> None:
    """Rules that depend on the dataset itself, checked before anything is stored."""
    info, smallest = describe(spec.dataset)
    if spec.cv.stratify and spec.cv.folds > smallest:
        raise InvalidJob("cv.folds", f"{spec.cv.folds} stratified folds need at least "
                         f"{spec.cv.folds} samples per class; the smallest class has {smallest}")
    if spec.model.type == "cnn" and len(info.input_shape) != 3:
        raise InvalidJob("model.type", f"a cnn needs an image dataset (digits); "
                         f"{spec.dataset.name} is tabular")
    if spec.pack_folds and spec.model.type != "mlp":
        raise InvalidJob("pack_folds", "packing stacks MLPs only; use model.type mlp or unpacked folds")
    if info.task == "regression" and spec.early_stopping.monitor == "val_accuracy":
        raise InvalidJob("early_stopping.monitor", f"{spec.dataset.name} is a regression "
                         "dataset: it has no accuracy; monitor val_loss")


def request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_job(*, session: Session, spec: JobSpec, owner: str = LOCAL_OWNER,
               idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Store a new queued job; (job, True). With an idempotency key already used by this
    owner for the same spec: (that job, False); for another spec: IdempotencyConflict."""
    digest = request_hash(spec)
    if idempotency_key is not None and (earlier := find_by_key(session, owner, idempotency_key)):
        return replay(earlier, digest), False
    check_against_data(spec)
    job = Job(name=spec.name, owner=owner, spec=spec.model_dump(mode="json"), status=JobStatus.QUEUED,
              cancel_requested=False, idempotency_key=idempotency_key, request_hash=digest)
    job.folds = [Fold(index=i) for i in range(spec.cv.folds)]
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer with its job.
        session.rollback()
        earlier = find_by_key(session, owner, idempotency_key) if idempotency_key is not None else None
        if earlier is None:
            raise
        return replay(earlier, digest), False
    return job, True


def find_by_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key)
                          .options(selectinload(Job.folds)))


def replay(job: Job, digest: str) -> Job:
    if job.request_hash != digest:
        raise IdempotencyConflict("this Idempotency-Key was used with a different job spec")
    return job


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
    session.commit()
    session.expire_all()  # the conditional UPDATE bypassed the loaded objects
    return get_job(session=session, job_id=job_id, owner=owner)
