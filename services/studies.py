"""Studies: a study's variants stored as ordinary jobs (so the queue, fault tolerance,
owners and quotas hold for them unchanged), all at once or none; read, listed and
cancelled as one. The variants' specs come from services.study_spec, their ranking and
statistics from services.leaderboard."""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from services.errors import IdempotencyConflict, InvalidJob, JobAlreadyFinished, StudyNotFound
from services.job_data import JobData
from services.jobs import cancel_job
from services.leaderboard import HIGHER_IS_BETTER, METRICS, default_metric, leaderboard
from services.results import experiment_link, mlflow_link
from services.models import Job, Study
from services.quotas import Limits
from services.refits import refit_summary
from services.spec import JobSpec
from services.states import FINISHED_JOB, JobStatus
from services.study_spec import StudySpec
from services.submissions import Submission, admit, insert_jobs, prepare
from services.wakeups import announce


@dataclass
class StudySubmission:
    study: Study
    variants: list[Submission]


def prepare_study(request: StudySpec, variants: list[tuple[str, JobSpec, JobData]], owner: str,
                  idempotency_key: str | None = None) -> StudySubmission:
    """The study and its variants' jobs, not stored yet. `variants`: (label, spec, data) as
    services.study_spec.expand made them, each with its data resolved."""
    task = variants[0][2].task
    metric = request.metric or default_metric(task)
    if metric not in METRICS[task]:
        raise InvalidJob("metric", f"{task} jobs are tested on {', '.join(METRICS[task])}; not {metric}")
    base = variants[0][1].model_dump(mode="json")
    spec = {"metric": metric, "higher_is_better": HIGHER_IS_BETTER[metric], "rope": request.rope,
            "target_val_loss": request.target_val_loss, "labels": [label for label, _, _ in variants],
            "base_spec": {key: base[key] for key in ("dataset", "cv")},
            "request": request.model_dump(mode="json", exclude_none=True)}
    study = Study(id=str(uuid.uuid4()), name=request.name, owner=owner, spec=spec, cancel_requested=False,
                  idempotency_key=idempotency_key, request_hash=request_hash(request),
                  created_at=datetime.now(timezone.utc))
    submissions = []
    for label, job_spec, data in variants:
        submission = prepare(job_spec, data, owner)
        submission.job.study_id, submission.job.variant = study.id, label
        submissions.append(submission)
    return StudySubmission(study, submissions)


def store_study(session: Session, submitted: StudySubmission, limits: Limits) -> tuple[Study, bool]:
    """(study, created): stored with every variant's job in one transaction, or, for an
    Idempotency-Key already used with the same request, the study that holds it. A
    variant over its owner's limits refuses the whole study, and nothing is stored."""
    study = submitted.study
    if study.idempotency_key is not None:
        earlier = session.scalar(select(Study).where(Study.owner == study.owner,
                                                     Study.idempotency_key == study.idempotency_key))
        if earlier is not None:
            if earlier.request_hash != study.request_hash:
                raise IdempotencyConflict("this Idempotency-Key was used with a different study")
            return earlier, False
    refused = admit(session, submitted.variants, limits)
    if refused:
        session.rollback()
        raise next(iter(refused.values()))
    session.add(study)
    session.flush()
    insert_jobs(session, [s.job for s in submitted.variants])
    announce(session)
    session.commit()
    return study, True


def request_hash(request: StudySpec) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def get_study(session: Session, study_id: str, owner: str | None = None) -> Study:
    query = select(Study).where(Study.id == study_id)
    if owner is not None:
        query = query.where(Study.owner == owner)
    study = session.scalar(query)
    if study is None:
        raise StudyNotFound(f"study {study_id} not found")
    return study


def jobs_of(session: Session, study: Study) -> list[Job]:
    """The study's jobs, in the order of its variants."""
    jobs = session.scalars(select(Job).where(Job.study_id == study.id)
                           .options(selectinload(Job.folds), selectinload(Job.refits)))
    order = {label: i for i, label in enumerate(study.spec["labels"])}
    return sorted(jobs, key=lambda job: order.get(job.variant, len(order)))


def status_of(study: Study, jobs: list[Job]) -> str:
    """running while any variant is queued or running; then succeeded when every one did,
    cancelled when the study was, failed otherwise (a variant failed or was cancelled)."""
    if any(job.status not in FINISHED_JOB for job in jobs):
        return "queued" if all(job.status is JobStatus.QUEUED for job in jobs) else "running"
    if all(job.status is JobStatus.SUCCEEDED for job in jobs):
        return "succeeded"
    return "cancelled" if study.cancel_requested else "failed"


def summary(study: Study, jobs: list[Job], ui_url: str) -> dict:
    """The study as GET /studies/{id} shows it (api.schemas.StudyOut), its leaderboard
    included; also what its MLflow run keeps (services.study_runs)."""
    board = leaderboard(study, jobs)
    experiment = study.mlflow_experiment_id or next(
        (job.mlflow_experiment_id for job in jobs if job.mlflow_experiment_id), None)
    return {"id": study.id, "name": study.name, "status": status_of(study, jobs),
            "cancel_requested": study.cancel_requested, "created_at": study.created_at.isoformat(),
            "metric": board["metric"], "higher_is_better": board["higher_is_better"], "rope": board["rope"],
            "target_val_loss": study.spec.get("target_val_loss"), "best": board["best"],
            "variants": board["variants"], "spec": study.spec["request"],
            "refit": refit_summary(next((job.refits[0] for job in jobs if job.refits), None), ui_url),
            "mlflow_experiment_url": experiment_link(ui_url, experiment),
            "mlflow_url": mlflow_link(ui_url, study.mlflow_experiment_id, study.mlflow_run_id)}


def list_studies(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Study], int]:
    query = select(Study).where(Study.owner == owner)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    page = session.scalars(query.order_by(Study.created_at.desc(), Study.id).limit(limit).offset(offset))
    return list(page), total


def cancel_study(session: Session, study_id: str, owner: str | None = None) -> Study:
    """Every variant not finished yet is cancelled (a running one stops at its
    dispatcher's next tick); the finished ones keep their results."""
    study = get_study(session, study_id, owner)
    study.cancel_requested = True
    session.commit()
    jobs = jobs_of(session, study)
    for job in [*jobs, *(refit for job in jobs for refit in job.refits)]:
        if job.status not in FINISHED_JOB:
            try:
                cancel_job(session=session, job_id=job.id, owner=owner)
            except JobAlreadyFinished:  # finished meanwhile: it keeps its results
                session.rollback()
    return get_study(session, study_id, owner)
