"""The figures served for studies and jobs (GET /studies/{id}/plots/{name}.png, GET
/jobs/{id}/plots/{name}.png): each fold's per-epoch curves read from its MLflow run,
drawn by services.plots."""
from __future__ import annotations

from services.models import Job, Study
from services.states import FoldStatus

STUDY_PLOTS = ("validation_loss", "training_loss", "fold_scores")
JOB_PLOTS = ("learning_curves",)


def history(client, run_id: str | None, key: str) -> list[float]:
    """A run's metric by epoch (step), each epoch once."""
    if run_id is None:
        return []
    by_step = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return [by_step[step] for step in sorted(by_step)]


def study_plot(name: str, study: Study, jobs: list[Job], client) -> bytes:
    """`client`: an MlflowClient. matplotlib and MLflow are imported by the first figure
    drawn, not by the API's start (tests/test_project.py)."""
    from services.plots import fold_scores, training_loss, validation_curves
    if name == "validation_loss":
        return validation_curves({job.variant: [history(client, f.mlflow_run_id, "val_loss") for f in job.folds]
                                  for job in jobs}, f"{study.name}: validation loss by epoch")
    if name == "training_loss":
        first = {job.variant: next((f for f in job.folds if f.mlflow_run_id), None) for job in jobs}
        return training_loss({label: (history(client, fold.mlflow_run_id, "train_loss"),
                                      history(client, fold.mlflow_run_id, "train_loss_ewma_corrected"))
                              for label, fold in first.items() if fold is not None},
                             f"{study.name}: training loss and its average (fold 0)")
    if name == "fold_scores":
        metric = study.spec["metric"]
        return fold_scores({job.variant: [f.test_metrics[metric] for f in job.folds
                                          if f.status is FoldStatus.SUCCEEDED and f.test_metrics]
                            for job in jobs}, metric, f"{study.name}: test {metric} per fold")
    raise KeyError(name)


def job_plot(name: str, job: Job, client) -> bytes:
    from services.plots import learning_curves
    if name == "learning_curves":
        return learning_curves({f.index: (history(client, f.mlflow_run_id, "train_loss"),
                                          history(client, f.mlflow_run_id, "val_loss"), f.best_epoch)
                                for f in job.folds}, f"{job.variant or job.name}: learning curves")
    raise KeyError(name)
