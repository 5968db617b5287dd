"""What the dispatcher writes down of a job beside its state: a fold's best-epoch figures,
the facts of its data as MLflow params, what a fold's exported model needs."""
from __future__ import annotations

from sqlalchemy.orm import Session

from services.job_data import JobData
from services.models import Dataset, Fold, Job
from services.spec import JobSpec
from workers.results import FoldResult


def record_best(fold: Fold, epoch: int, metrics: dict[str, float]) -> None:
    """The best epoch's validation loss and accuracy, kept beside the latest ones."""
    fold.best_epoch = epoch
    fold.best_val_loss = metrics.get("val_loss")
    fold.best_val_accuracy = metrics.get("val_accuracy")  # None for regression


def best_of(fold: Fold) -> dict[str, float]:
    """The best epoch's figures, as the fold's MLflow run records them, and the first
    epoch at the job's target validation loss."""
    best = {"best_epoch": fold.best_epoch, "best_val_loss": fold.best_val_loss,
            "best_val_accuracy": fold.best_val_accuracy, "epochs_to_target": fold.target_epoch}
    return {name: value for name, value in best.items() if value is not None}


def dataset_params(data: JobData) -> dict[str, str]:
    """What is true of a job's data, as flat `dataset.*` params beside the spec's: how many
    rows, feature columns (named in `dataset.feature_columns`), inputs once encoded and
    classes, the task, the stored file's digest."""
    facts = {"dataset.loading": data.loading, "dataset.name": data.name, "dataset.task": data.task,
             "dataset.rows": data.rows,
             "dataset.features": len(data.features), "dataset.feature_columns": ",".join(data.features),
             "dataset.inputs": data.input_width, "dataset.classes": len(data.classes) or None,
             "dataset.digest": data.digest}
    return {key: str(value)[:6000] for key, value in facts.items() if value is not None}


def model_of(session: Session, job: Job, result: FoldResult) -> dict | None:
    """What a fold's exported model needs beside its weights (Tracker.log_model)."""
    if result.preprocessing is None:
        return None
    spec, data = JobSpec.model_validate(job.spec), JobData.of(job.data)
    dataset = session.get(Dataset, data.dataset_id) if data.dataset_id else None
    return {"model": spec.model.model_dump(), "input_shape": list(data.input_shape),
            "outputs": len(data.classes) or 1, "task": data.task, "preprocessing": result.preprocessing,
            "schema": data.schema(dataset)[:-1]}  # the raw feature columns: the label is the last
