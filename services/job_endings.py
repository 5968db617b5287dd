"""How a fold's result and a job's end are recorded: in the database and in MLflow.

The dispatcher calls these once a fold task has come back (record_fold_result) and once
a job has no task left (outcome_of, then close_job). They commit nothing: the caller
commits, so what one call records lands whole or not at all.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.lifecycle import move_fold, move_job
from services.models import Fold, Job
from services.refits import add_refit, register
from services.reports import summed
from services.results import fold_table, summarize
from services.run_records import best_of, model_of, record_best
from services.spec import JobSpec
from services.states import FINISHED_FOLD, FoldStatus, JobStatus
from services.tracking import Tracker
from services.wakeups import announce
from workers.results import Ending, FoldResult


def record_fold_result(session: Session, tracker: Tracker, job_id: str, result: FoldResult) -> None:
    """A fold task's result: the fold's state, its scores, and its MLflow run ended."""
    fold = session.scalar(select(Fold).where(Fold.job_id == job_id, Fold.index == result.index))
    if fold.status in FINISHED_FOLD:
        return
    if result.status is Ending.CANCELLED:
        move_fold(fold, FoldStatus.CANCELLED)
        tracker.finish_fold(fold.mlflow_run_id, status="cancelled")
        return
    if fold.status is FoldStatus.PENDING:
        move_fold(fold, FoldStatus.RUNNING)  # it ended before its start was reported
    if result.status is Ending.SUCCEEDED:
        record_best(fold, result.best_epoch, result.best_metrics)
        fold.test_metrics, fold.confusion = result.test_metrics, result.confusion
        fold.target_epoch = result.target_epoch
        move_fold(fold, FoldStatus.SUCCEEDED)
        tracker.finish_fold(fold.mlflow_run_id, status="succeeded", test_metrics=fold.test_metrics,
                            best=best_of(fold), checkpoint=result.checkpoint,
                            model=model_of(session, session.get(Job, job_id), result))
    else:
        fold.error = result.error
        move_fold(fold, FoldStatus.FAILED)
        tracker.finish_fold(fold.mlflow_run_id, status="failed", error=result.error)


def outcome_of(job: Job, ran_out: str | None) -> tuple[JobStatus, str | None]:
    """The state a job ends in, and why when it did not succeed. `ran_out`: why it was
    stopped at its deadline, if it was."""
    if ran_out and any(f.status not in (FoldStatus.SUCCEEDED, FoldStatus.FAILED) for f in job.folds):
        return JobStatus.FAILED, ran_out
    if job.cancel_requested:
        return JobStatus.CANCELLED, None
    failed = [f for f in job.folds if f.status is FoldStatus.FAILED]
    if failed:
        return JobStatus.FAILED, "; ".join(f"fold {f.index} failed: {f.error}" for f in failed)
    return JobStatus.SUCCEEDED, None


def close_job(session: Session, tracker: Tracker, job: Job, target: JobStatus, error: str | None) -> JobStatus:
    """A job whose tasks have all ended: its summary, its MLflow run ended, its state, and
    its refit queued when it asked for one. Returns the state it ended in (a refit whose
    model could not be registered fails)."""
    cancel_leftover_folds(tracker, job)
    job.summary = summarize([f.test_metrics for f in job.folds if f.status is FoldStatus.SUCCEEDED])
    if job.refit_of and target is JobStatus.SUCCEEDED and (error := register(session, tracker, job)):
        target = JobStatus.FAILED
    job.error = error
    # MLflow first: once the job reads as finished, its runs must be finished too.
    log_classes(tracker, job)
    tracker.finish_job(job.mlflow_run_id, status=target.value, summary=job.summary,
                       table=fold_table(job.folds), error=error)
    move_job(job, target)
    job.lease_expires_at = None
    if target is JobStatus.SUCCEEDED and JobSpec.model_validate(job.spec).refit:
        add_refit(session, job)  # queued with this job's end, in one commit
        announce(session)
    return target


def log_classes(tracker: Tracker, job: Job) -> None:
    """A classification job's per-class report, from the folds that were tested."""
    confusions = [f.confusion for f in job.folds if f.status is FoldStatus.SUCCEEDED and f.confusion]
    classes = (job.data or {}).get("classes")
    if confusions and classes:
        tracker.log_classes(job.mlflow_run_id, classes, summed(confusions))


def cancel_leftover_folds(tracker: Tracker, job: Job) -> None:
    """Folds that never ran to an end (the job was cancelled before they were
    resubmitted) are cancelled with it."""
    for fold in job.folds:
        if fold.status not in FINISHED_FOLD:
            move_fold(fold, FoldStatus.CANCELLED)
            if fold.mlflow_run_id:
                tracker.finish_fold(fold.mlflow_run_id, status="cancelled")
