"""Refits, as scikit-learn's grid search refits: once a job's folds have scored it, one
final model trained on every row, for the folds' mean best epoch (no rows are left to
stop it early), logged as an MLflow model and registered in the Model Registry.

A refit is an ordinary job of one fold (`refit_of` names the job it follows): it is
queued, claimed, leased, resumed after a lost worker and cancelled like any other. Its
spec is the refitted job's with a fixed budget. A job asks for one with `refit: true`;
a study with `refit: true` asks for one for its best variant once every variant ended.
"""
from __future__ import annotations

import statistics
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.models import LOCAL_OWNER, Fold, Job, Study
from services.results import model_link
from services.spec import JobSpec
from services.states import FoldStatus, JobStatus

if TYPE_CHECKING:  # the API reads refits and must not import MLflow
    from services.tracking import Tracker


def refit_epochs(job: Job) -> int:
    """The mean best epoch of the job's folds that succeeded, rounded (at least 1)."""
    epochs = [f.best_epoch for f in job.folds if f.status is FoldStatus.SUCCEEDED and f.best_epoch]
    return max(1, round(statistics.fmean(epochs))) if epochs else 1


def refit_spec(origin: JobSpec, epochs: int) -> JobSpec:
    """The refitted job's spec, trained for `epochs` with nothing monitored: no
    validation rows, so no early stopping and no target; one fold, so nothing to pack."""
    return origin.model_copy(update={"max_epochs": epochs, "early_stopping": None, "target_val_loss": None,
                                     "refit": False, "pack_folds": False})


def refit_of(session: Session, origin: Job) -> Job | None:
    return session.scalar(select(Job).where(Job.refit_of == origin.id).limit(1))


def add_refit(session: Session, origin: Job) -> Job:
    """Queue the refit of a job whose folds succeeded (flushed, not committed: the caller
    commits it with the state that asked for it). One per job: jobs.refit_of is unique,
    and the second of two dispatchers asking at once gets the first one's."""
    if (existing := refit_of(session, origin)) is not None:
        return existing
    spec = refit_spec(JobSpec.model_validate(origin.spec), refit_epochs(origin))
    job = Job(id=str(uuid.uuid4()), name=origin.name, owner=origin.owner, spec=spec.model_dump(mode="json"),
              data=origin.data, dataset_id=origin.dataset_id, status=JobStatus.QUEUED,
              cancel_requested=False, priority=origin.priority, refit_of=origin.id,
              variant=f"refit of {origin.variant}" if origin.variant else None,
              created_at=datetime.now(timezone.utc))
    job.folds = [Fold(index=0, status=FoldStatus.PENDING, attempts=0, epoch=0)]
    try:
        with session.begin_nested():  # a savepoint: losing the race undoes this insert only
            session.add(job)
    except IntegrityError:
        return refit_of(session, origin)
    return job


OWNER_SEPARATOR = "~"  # in neither an owner's name nor a job's, nor refused by MLflow


def model_name(session: Session, refit: Job) -> str:
    """The registered model's name: the study's, or the job's, as the owner named it;
    prefixed by the owner where there are several (MLflow's registry is one namespace,
    and its names may not hold a "/"), with a separator neither name can hold, so that
    two owners' names never meet."""
    origin = session.get(Job, refit.refit_of)
    study = session.get(Study, origin.study_id) if origin and origin.study_id else None
    name = study.name if study else refit.name
    return name if refit.owner == LOCAL_OWNER else f"{refit.owner}{OWNER_SEPARATOR}{name}"


def cv_description(session: Session, refit: Job) -> str:
    """The registered version's description: what cross-validation said of this model."""
    origin = session.get(Job, refit.refit_of)
    summary = origin.summary or {}
    scores = ", ".join(f"{name.removesuffix('_mean')} {value:.4g} ± {summary.get(name[:-5] + '_std', 0):.2g}"
                       for name, value in sorted(summary.items()) if name.endswith("_mean"))
    folds = sum(1 for f in origin.folds if f.status is FoldStatus.SUCCEEDED)
    what = f"variant {origin.variant} of study {model_name(session, refit)}" if origin.study_id else "job"
    return (f"Refit on every row for {refit.spec['max_epochs']} epochs (the folds' mean best epoch) of "
            f"{what} {origin.id}. Cross-validated over {folds} folds: {scores}.")


def refit_summary(refit: Job | None, ui_url: str) -> dict | None:
    """A refit as the refitted job (or study) shows it."""
    if refit is None:
        return None
    return {"job_id": refit.id, "status": refit.status.value, "epochs": refit.spec.get("max_epochs"),
            "registered_model": model_link(ui_url, refit.registered_model)}


def register(session: Session, tracker: Tracker, refit: Job) -> str | None:
    """Register the refit's model (logged on its fold's run, as every fold's is); why it
    could not be, or None. A passing failure (MLflow unreachable) is raised: the
    dispatcher finishes the job again at its next tick."""
    from services.tracking import transient  # the dispatcher's side: MLflow is imported there
    fold = refit.folds[0]
    if fold.status is not FoldStatus.SUCCEEDED:
        return None
    try:
        refit.registered_model = tracker.register_model(
            fold.mlflow_run_id, model_name(session, refit), cv_description(session, refit), refit.owner)
    except Exception as error:
        if transient(error):
            raise
        # The model stays logged on its run; the job says what failed.
        return f"the model is logged on MLflow run {fold.mlflow_run_id} but could not be registered: {error}"
    return None
