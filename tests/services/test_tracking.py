"""The MLflow layout, on a real local MLflow store."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from services.tracking import RunWrites, Tracker


@pytest.fixture
def tracker(tmp_path):
    tracker = Tracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                      artifacts_dir=tmp_path / "artifacts")
    tracker.ensure_store()
    return tracker


def test_one_parent_run_with_nested_fold_runs(tracker):
    experiment, parent, children = tracker.start_job(
        job_id="j1", name="demo", owner="alice", params={"optimizer.name": "adam", "cv.folds": "3"}, n_folds=3)
    client: MlflowClient = tracker.client
    assert client.get_experiment(experiment).name == "alice/demo"
    run = client.get_run(parent)
    assert run.data.params == {"optimizer.name": "adam", "cv.folds": "3"}
    assert run.data.tags["crossfold.job_id"] == "j1"
    for index, child in enumerate(children):
        tags = client.get_run(child).data.tags
        assert tags["mlflow.parentRunId"] == parent and tags["crossfold.fold"] == str(index)
    assert tracker.experiment_id("alice", "demo") == experiment  # reused, not duplicated


def test_a_job_named_default_keeps_out_of_mlflows_default_experiment(tracker, tmp_path):
    """MLflow's own experiment 0, Default, keeps its artifacts under the working
    directory (mlruns/0): a job of that name must not write there."""
    experiment, _, (child,) = tracker.start_job(job_id="j1", name="Default", owner="local", params={},
                                                n_folds=1)
    tracker.finish_fold(child, status="succeeded", checkpoint=b"weights")
    assert experiment != "0" and tracker.client.get_experiment(experiment).name == "local/Default"
    location = tracker.client.get_experiment(experiment).artifact_location
    assert location.startswith((tmp_path / "artifacts" / "local").resolve().as_uri())
    assert not (Path.cwd() / "mlruns").exists()


def test_an_owner_name_cannot_lead_artifacts_out_of_their_folder(tracker, tmp_path):
    experiment = tracker.experiment_id("../../escape", "demo")
    location = tracker.client.get_experiment(experiment).artifact_location
    assert location.startswith((tmp_path / "artifacts").resolve().as_uri() + "/") and "/../" not in location


def test_a_deleted_experiment_is_restored(tracker):
    experiment = tracker.experiment_id("alice", "demo")
    tracker.client.delete_experiment(experiment)
    assert tracker.experiment_id("alice", "demo") == experiment
    assert tracker.client.get_experiment(experiment).lifecycle_stage == "active"


def test_fold_run_gets_epochs_checkpoint_and_test_metrics(tracker):
    _, parent, (child,) = tracker.start_job(job_id="j1", name="demo", owner="alice", params={}, n_folds=1)
    for epoch in (1, 2, 3):
        tracker.log_epoch(child, epoch, {"train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch})
    tracker.finish_fold(child, status="succeeded", test_metrics={"accuracy": 0.9, "loss": 0.3},
                        best={"best_epoch": 3, "best_val_loss": 2.0 / 3}, checkpoint=b"weights")
    client = tracker.client
    history = client.get_metric_history(child, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    run = client.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == 0.9 and run.data.metrics["best_epoch"] == 3
    assert run.data.metrics["best_val_loss"] == 2.0 / 3  # named apart from the latest val_loss
    assert [a.path for a in client.list_artifacts(child, "checkpoint")] == ["checkpoint/best.pt"]


def test_epochs_written_again_are_kept_once(database_url):
    """A tick that failed once MLflow had its epochs gives them again, with newer ones:
    each epoch is kept once, on a SQLite and a PostgreSQL store (where the repeated rows
    break MLflow's primary key and it keeps only the new ones)."""
    tracker = Tracker(tracking_uri=database_url.replace("postgresql://", "postgresql+psycopg://"))
    if database_url.startswith("postgresql"):
        tracker.writers = 4  # several runs at once, as against a server
    _, _, runs = tracker.start_job(job_id="j1", name="demo", owner="alice", params={}, n_folds=3)

    def tick(epochs):
        writes = RunWrites()
        for run_id in runs:
            for epoch in epochs:  # stamped by the worker, once
                writes.epoch(run_id, epoch, {"train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch}, 1000 + epoch)
        writes.tag(runs[0], "crossfold.node", "node-1")
        return writes
    tracker.write(tick([1, 2, 3]))
    tracker.write(tick([2, 3, 4, 5]))
    for run_id in runs:
        history = tracker.client.get_metric_history(run_id, "val_loss")
        assert sorted((m.step, m.value) for m in history) == [(e, 2.0 / e) for e in range(1, 6)]
    assert tracker.client.get_run(runs[0]).data.tags["crossfold.node"] == "node-1"


def test_job_run_gets_the_summary_and_fold_table(tracker):
    _, parent, _ = tracker.start_job(job_id="j1", name="demo", owner="alice", params={}, n_folds=1)
    tracker.finish_job(parent, status="failed", summary={"test_accuracy_mean": 0.8},
                       table=[{"fold": 0, "status": "failed"}], error="fold 0 failed: boom")
    run = tracker.client.get_run(parent)
    assert run.info.status == "FAILED" and run.data.metrics["test_accuracy_mean"] == 0.8
    assert run.data.tags["crossfold.error"] == "fold 0 failed: boom"
    assert [a.path for a in tracker.client.list_artifacts(parent)] == ["fold_table.json"]


def test_a_registered_model_someone_else_made_is_not_added_to(tracker):
    from services.tracking import ModelOfAnother
    tracker.client.create_registered_model("shared-name", tags={"crossfold.owner": "ana"})
    run = tracker.client.create_run(tracker.experiment_id("bob", "shared-name")).info.run_id
    with pytest.raises(ModelOfAnother, match="not yours"):
        tracker.register_model(run, "shared-name", "bob's refit", "bob")
    assert tracker.client.search_model_versions("name='shared-name'") == []
