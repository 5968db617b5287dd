"""A starting job's MLflow runs: its parent run and one child run per fold, in the
experiment of the owner's earlier jobs of that name, with the dataset logged on each."""
from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.dataset_store import DatasetStore
from services.job_data import JobData
from services.job_inputs import source_of
from services.models import Dataset, Job
from services.run_records import dataset_params
from services.spec import JobSpec, flatten
from services.study_runs import study_run_of
from services.tracking import Tracker


def create_runs(session: Session, tracker: Tracker, store: DatasetStore, job: Job, spec: JobSpec,
                data: JobData) -> None:
    # The spec's params, and what is true of its data (digits: 1,797 rows, 64 features).
    params = {**flatten(spec), **dataset_params(data)}
    experiment, tags = experiment_of(session, job), None
    if job.study_id:  # its runs go beneath the study's run, in the study's experiment
        experiment, study_run = study_run_of(session, tracker, job, experiment)
        tags = {"crossfold.study_id": job.study_id, "crossfold.variant": job.variant,
                "mlflow.parentRunId": study_run}
    if job.refit_of:  # beneath the run of the job it refits, in that job's experiment
        origin = session.get(Job, job.refit_of)
        experiment = origin.mlflow_experiment_id or experiment
        tags = {"crossfold.refit_of": origin.id, **({"mlflow.parentRunId": origin.mlflow_run_id}
                                                     if origin.mlflow_run_id else {})}
    experiment, parent, children = tracker.start_job(
        job_id=job.id, name=job.name, owner=job.owner, params=params, n_folds=len(job.folds),
        experiment=experiment, label=job.variant or ("refit" if job.refit_of else None), tags=tags)
    try:
        log_dataset(session, tracker, store, [parent, *children], data)
    except Exception:
        tracker.abandon([parent, *children])  # not left RUNNING by a start that failed
        raise
    job.mlflow_experiment_id, job.mlflow_run_id = experiment, parent
    for fold, run_id in zip(job.folds, children):
        fold.mlflow_run_id = run_id
    session.commit()


def experiment_of(session: Session, job: Job) -> str | None:
    """The experiment an earlier job of this owner and name logged into: the only one
    trusted to be theirs (another MLflow user could have made one of that name)."""
    return session.scalar(select(Job.mlflow_experiment_id).where(
        Job.owner == job.owner, Job.name == job.name, Job.mlflow_experiment_id.is_not(None)).limit(1))


def log_dataset(session: Session, tracker: Tracker, store: DatasetStore, run_ids: list[str],
                data: JobData) -> None:
    source = source_of(data, store)  # a generated dataset is made here, once
    # A generated dataset's file is named by its hash; the URI's query (a store's
    # options) is not part of the name.
    digest = data.digest or urlsplit(source.uri).path.rsplit("/", 1)[-1].removesuffix(".parquet")
    schema = data.schema(session.get(Dataset, data.dataset_id) if data.dataset_id else None)
    tracker.log_dataset(run_ids, name=data.name, digest=digest, uri=source.uri,
                        columns=schema, rows=data.rows)
