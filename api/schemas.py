"""Response bodies of the HTTP API (requests use services.spec.JobSpec)."""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from pydantic import BaseModel, Field

from services.models import BUNDLED_OWNER, Dataset, Fold, Job, Study
from services.public_errors import public_message
from services.refits import refit_summary
from services.results import experiment_link, mlflow_link, model_link
from services.states import FoldStatus, JobStatus
from services.studies import summary


class FoldAttempt(BaseModel):
    attempt: int = Field(description="1 for the first try; a retry after its worker or node was lost adds one")
    node: str = Field(description="the Ray node it ran on (its node id, not an address)")
    resumed_after_epoch: int = Field(description="the epoch of the checkpoint it resumed from; 0: from scratch")


class FoldOut(BaseModel):
    index: int
    status: FoldStatus
    attempts: int
    epoch: int = Field(description="the latest epoch")
    train_loss: float | None = Field(description="the latest epoch's")
    val_loss: float | None = Field(description="the latest epoch's")
    val_accuracy: float | None = Field(description="the latest epoch's (classification)")
    best_epoch: int | None = Field(description="the epoch early stopping keeps: lowest val_loss "
                                               "(or highest val_accuracy) so far")
    best_val_loss: float | None = Field(description="the best epoch's")
    best_val_accuracy: float | None = Field(description="the best epoch's (classification)")
    epochs_to_target: int | None = Field(None, description="the first epoch whose val_loss reached the "
                                                           "job's target_val_loss (none: not reached, or "
                                                           "no target)")
    test_metrics: dict[str, float] | None
    error: str | None = Field(description="why the fold failed; internal addresses show as <url> "
                                          "and <address> (MLflow's crossfold.error tag has it whole)")
    worker: None = Field(None, description="not shown: where a fold ran (host:pid) is the service "
                                           "operators' to know (the database and the logs keep it); "
                                           "`attempts` tells the tries apart")
    data_loading: str = Field(description="how its task read the data: memory or stream")
    nodes: list[FoldAttempt] = Field(description="each attempt, in order: where it ran and what it resumed from")
    mlflow_run_id: str | None
    mlflow_url: str | None


class JobOut(BaseModel):
    id: str
    name: str
    status: JobStatus
    priority: int = Field(description="the spec's priority: queued jobs of a higher priority start first")
    waiting_reason: str | None = Field(None, description="why a queued job is not started yet, when it is "
                                                         "more than the queue (no node can run its folds "
                                                         "until the cluster grows)")
    cancel_requested: bool
    study_id: str | None = Field(None, description="the study this job is a variant of, if any")
    variant: str | None = Field(None, description="its label in that study")
    refit: dict | None = Field(None, description="the refit this job (refit: true) or study asked for: "
                                                 "job_id, status, epochs, registered_model")
    refit_of: str | None = Field(None, description="a refit: the job whose folds it follows, trained "
                                                   "on every row")
    registered_model: dict | None = Field(None, description="a refit's model in the MLflow Model Registry: "
                                                            "name, version, mlflow_url")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None = Field(description="why the job failed; internal addresses show as <url> "
                                          "and <address>")
    spec: dict
    classes: list | None = Field(description="classification: the label's values, sorted; the model's "
                                             "class i is classes[i], in every per-class output")
    dataset_id: str | None = Field(description="the stored dataset it trains on (none: generated data)")
    data_loading: str = Field(description="memory (each fold task holds the dataset) or stream (read a "
                                          "row group at a time): the spec's data_loading, decided")
    summary: dict[str, float] | None
    folds: list[FoldOut]
    mlflow_experiment_id: str | None
    mlflow_run_id: str | None
    mlflow_url: str | None = Field(description="the job's run in the MLflow UI")
    mlflow_experiment_url: str | None = Field(description="the runs table of the job's experiment")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


def shown(value: str | None, public: Callable[[str], str]) -> str | None:
    """What an owner sees of a stored error or worker (services.public_errors)."""
    return None if value is None else public(value)


def fold_out(fold: Fold, experiment_id: str | None, ui_url: str, loading: str) -> FoldOut:
    return FoldOut(index=fold.index, status=fold.status, attempts=fold.attempts, epoch=fold.epoch,
                   train_loss=fold.train_loss, val_loss=fold.val_loss,
                   val_accuracy=fold.val_accuracy, best_epoch=fold.best_epoch,
                   best_val_loss=fold.best_val_loss, best_val_accuracy=fold.best_val_accuracy,
                   epochs_to_target=fold.target_epoch, test_metrics=fold.test_metrics, error=shown(fold.error, public_message),
                   data_loading=loading, nodes=fold.nodes or [],
                   mlflow_run_id=fold.mlflow_run_id,
                   mlflow_url=mlflow_link(ui_url, experiment_id, fold.mlflow_run_id))


def job_out(job: Job, ui_url: str) -> JobOut:
    loading = (job.data or {}).get("loading", "memory")
    return JobOut(id=job.id, name=job.name, status=job.status, priority=job.priority,
                  waiting_reason=job.waiting_reason,
                  cancel_requested=job.cancel_requested, study_id=job.study_id, variant=job.variant,
                  refit=refit_summary(job.refits[0] if job.refits else None, ui_url), refit_of=job.refit_of,
                  registered_model=model_link(ui_url, job.registered_model), created_at=job.created_at,
                  started_at=job.started_at, finished_at=job.finished_at,
                  error=shown(job.error, public_message),
                  spec=job.spec, classes=(job.data or {}).get("classes") or None,
                  dataset_id=job.dataset_id, data_loading=loading, summary=job.summary,
                  folds=[fold_out(f, job.mlflow_experiment_id, ui_url, loading) for f in job.folds],
                  mlflow_experiment_id=job.mlflow_experiment_id, mlflow_run_id=job.mlflow_run_id,
                  mlflow_url=mlflow_link(ui_url, job.mlflow_experiment_id, job.mlflow_run_id),
                  mlflow_experiment_url=experiment_link(ui_url, job.mlflow_experiment_id))


class ColumnOut(BaseModel):
    name: str
    type: str = Field(description="the stored (Arrow) type: int64, double, string, bool, date32[day]...")
    kind: str = Field(description="number, boolean, string, temporal, empty or nested")
    missing: int
    summary: dict = Field(description="numbers: min, max, mean, std (finite values), infinite; "
                                      "strings and booleans: distinct, top [[value, count]]; "
                                      "dates and times: min, max")


class DatasetOut(BaseModel):
    id: str
    name: str
    owner: str
    bundled: bool
    format: str = Field(description="as uploaded: csv or parquet")
    digest: str = Field(description="sha256 of the stored Parquet file")
    size: int = Field(description="bytes of the stored Parquet file")
    rows: int
    created_at: datetime
    columns: list[ColumnOut]


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(id=dataset.id, name=dataset.name, owner=dataset.owner,
                      bundled=dataset.owner == BUNDLED_OWNER, format=dataset.format,
                      digest=dataset.digest, size=dataset.size, rows=dataset.rows,
                      created_at=dataset.created_at, columns=dataset.columns)


class StudyVariantOut(BaseModel):
    label: str
    job_id: str
    status: str
    rank: int | None = Field(description="1 is the best on the study's metric; none until every fold is tested")
    folds: int
    folds_tested: int
    test: dict[str, dict[str, float]] = Field(description="each test metric's mean and std over the folds")
    mean_best_epoch: float | None = Field(description="the epoch each fold kept, averaged")
    epochs_to_target: dict = Field(description="mean: the first epoch at the study's target_val_loss, "
                                               "over the folds that reached it; reached: how many did, of")
    wall_time_s: float | None = Field(description="from its start to its end")
    fold_scores: list[float] | None = Field(description="the study's metric, fold by fold (identical folds "
                                                        "for every variant)")
    against_best: dict | None = Field(description="paired differences with the best variant, fold by fold; "
                                                  "the corrected resampled t-test (t, p_value) and the "
                                                  "Bayesian correlated t-test's p_worse, p_equivalent, "
                                                  "p_better (services/study_stats.py)")


class StudyOut(BaseModel):
    id: str
    name: str
    status: str = Field(description="queued, running, succeeded, failed (a variant did not succeed) "
                                    "or cancelled")
    cancel_requested: bool
    created_at: datetime
    metric: str
    higher_is_better: bool
    rope: float
    target_val_loss: float | None
    best: str | None = Field(description="the label of the best variant, once every variant is tested")
    variants: list[StudyVariantOut]
    spec: dict = Field(description="the study as submitted")
    refit: dict | None = Field(None, description="with refit: true, the best variant's refit once every "
                                                 "variant has ended: job_id, status, epochs, registered_model")
    mlflow_experiment_url: str | None
    mlflow_url: str | None = Field(None, description="the study's run in the MLflow UI: its variants' runs "
                                                     "beneath it, the leaderboard, figures and report on it")


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    limit: int
    offset: int


def study_out(study: Study, jobs: list[Job], ui_url: str) -> StudyOut:
    return StudyOut.model_validate(summary(study, jobs, ui_url))
