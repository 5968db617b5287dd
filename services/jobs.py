"""The job store: create, read, list and cancel jobs (no HTTP here)."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from services.datasets import load_dataset
from services.errors import InvalidJob, JobAlreadyFinished, JobNotFound
from services.lifecycle import cancel_if_queued
from services.models import Fold, Job
from services.spec import JobSpec
from services.states import FINISHED_JOB, JobStatus


def check_against_data(spec: JobSpec) -> None:
    """Rules that depend on the dataset itself, checked before anything is stored."""
    data = load_dataset(spec.dataset)
    if spec.cv.stratify and spec.cv.folds > (smallest := data.smallest_stratum()):
        raise InvalidJob("cv.folds", f"{spec.cv.folds} stratified folds need at least "
                         f"{spec.cv.folds} samples per class; the smallest class has {smallest}")
    if spec.model.type == "cnn" and len(data.info.input_shape) != 3:
        raise InvalidJob("model.type", f"a cnn needs an image dataset (digits); "
                         f"{spec.dataset.name} is tabular")
    if spec.pack_folds and spec.model.type != "mlp":
        raise InvalidJob("pack_folds", "packing stacks MLPs only; use model.type mlp or unpacked folds")
    if data.info.task == "regression" and spec.early_stopping.monitor == "val_accuracy":
        raise InvalidJob("early_stopping.monitor", f"{spec.dataset.name} is a regression "
                         "dataset: it has no accuracy; monitor val_loss")


def create_job(*, session: Session, spec: JobSpec) -> Job:
    check_against_data(spec)
    job = Job(name=spec.name, spec=spec.model_dump(mode="json"), status=JobStatus.QUEUED,
              cancel_requested=False)
    job.folds = [Fold(index=i) for i in range(spec.cv.folds)]
    session.add(job)
    session.commit()
    return job


def get_job(*, session: Session, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.folds)))
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(*, session: Session, status: JobStatus | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and the total count matching the filter."""
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    page = session.scalars(query.options(selectinload(Job.folds))
                           .order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return list(page), total


def cancel_job(*, session: Session, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged for its dispatcher,
    which stops its Ray tasks and finishes the cancellation."""
    job = get_job(session=session, job_id=job_id)
    if job.status in FINISHED_JOB:
        raise JobAlreadyFinished(f"job {job_id} has already {job.status.value}")
    if not cancel_if_queued(session, job_id=job_id):
        job.cancel_requested = True
    session.commit()
    session.expire_all()  # the conditional UPDATE bypassed the loaded objects
    return get_job(session=session, job_id=job_id)
