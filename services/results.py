"""Fold results summed up: mean and spread over folds, and the fold table."""
from __future__ import annotations

from urllib.parse import quote

import statistics


def summarize(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """`test_<metric>_mean` and `test_<metric>_std` over the folds that finished.

    The spread is the sample standard deviation (n - 1): the folds are a sample of
    the ways the data could have been split. With one fold it is 0.
    """
    if not fold_metrics:
        return {}
    summary: dict[str, float] = {}
    for name in sorted(fold_metrics[0]):
        values = [m[name] for m in fold_metrics]
        summary[f"test_{name}_mean"] = statistics.fmean(values)
        summary[f"test_{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def fold_table(folds) -> list[dict]:
    """One row per fold: its index, status, best epoch with its validation figures, and
    test metrics."""
    return [{"fold": f.index, "status": f.status.value, "best_epoch": f.best_epoch,
             "best_val_loss": f.best_val_loss, "best_val_accuracy": f.best_val_accuracy,
             "epochs": f.epoch, **{f"test_{k}": v for k, v in (f.test_metrics or {}).items()}}
            for f in folds]


# MLflow 3's UI opens the GenAI view (traces, evaluations) unless the link, or a choice the
# browser remembers, asks for the model-training view (runs table, charts).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def mlflow_link(ui_url: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """Where a person finds a run in the MLflow UI, in its model-training view."""
    if not (experiment_id and run_id):
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def model_link(ui_url: str, registered: dict | None) -> dict | None:
    """A registered model version ({"name", "version"}) with its page in the MLflow UI."""
    if not registered:
        return None
    url = f"{ui_url.rstrip('/')}/#/models/{quote(registered['name'], safe='')}/versions/{registered['version']}"
    return {**registered, "mlflow_url": url}


def experiment_link(ui_url: str, experiment_id: str | None) -> str | None:
    """An experiment's runs table (every job of that name, folds nested under each job)."""
    if not experiment_id:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"
