"""Whole service: HTTP API (real uvicorn) → database → dispatcher → local Ray → MLflow
(the `stack` fixture). Runs once on SQLite and once on PostgreSQL, with the session's
single Ray instance."""
from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from api.cli import main as cli
from tests.helpers import needs_chromium, render, small_job, wait_for, wait_until_finished


@pytest.mark.parametrize("packed", [False, True], ids=["task-per-fold", "packed"])
def test_a_job_runs_its_folds_on_ray_and_lands_in_mlflow(stack, packed):
    http, tracker = stack
    response = http.post("/jobs", json=small_job(pack_folds=packed))
    assert response.status_code == 201
    job = wait_until_finished(http, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    folds = job["folds"]
    assert [f["status"] for f in folds] == ["succeeded"] * 3
    assert all(f["attempts"] == 1 and 1 <= f["best_epoch"] <= f["epoch"] for f in folds)
    accuracies = [f["test_metrics"]["accuracy"] for f in folds]
    assert job["summary"]["test_accuracy_mean"] == pytest.approx(statistics.fmean(accuracies))
    assert job["summary"]["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    assert job["summary"]["test_accuracy_mean"] > 0.8
    # Links open MLflow's model-training view, not its GenAI one.
    assert job["mlflow_url"].endswith(f"/runs/{job['mlflow_run_id']}?workflowType=machine_learning")
    for fold in folds:  # the best epoch's figures, beside the latest epoch's
        assert fold["best_val_loss"] is not None and fold["best_val_accuracy"] is not None
        assert fold["mlflow_url"].endswith(f"/runs/{fold['mlflow_run_id']}?workflowType=machine_learning")
    check_mlflow(tracker.client, job)


def check_mlflow(client, job: dict) -> None:
    parent = client.get_run(job["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["crossfold.job_id"] == job["id"]
    assert parent.data.params["optimizer.name"] == "adam" and parent.data.params["cv.folds"] == "3"
    assert parent.data.params["pack_folds"] == str(job["spec"]["pack_folds"])
    experiment = client.get_experiment(job["mlflow_experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # What is true of iris, and nothing that is not (no generated-size seed).
    facts = {k: v for k, v in parent.data.params.items() if k.startswith("dataset.")}
    assert facts == {"dataset.loading": "memory", "dataset.name": "iris", "dataset.task": "classification",
                     "dataset.rows": "150",
                     "dataset.features": "4", "dataset.classes": "3", "dataset.inputs": "4",
                     "dataset.digest": facts["dataset.digest"], "dataset.feature_columns":
                     "sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)"}
    assert len(facts["dataset.digest"]) == 64
    # MLflow's own dataset tracking: the job's run and each fold's name the data they used.
    for run_id in [job["mlflow_run_id"], *(f["mlflow_run_id"] for f in job["folds"])]:
        [used] = client.get_run(run_id).inputs.dataset_inputs
        assert used.dataset.name == "iris" and facts["dataset.digest"].startswith(used.dataset.digest)
        assert [c["name"] for c in json.loads(used.dataset.schema)["mlflow_colspec"]][-1] == "target"
    # The per-class report and the confusion matrix summed over the test folds.
    assert job["classes"] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"classes.json", "per_class.json", "confusion_matrix.json", "confusion_matrix.png"} <= artifacts
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(parent.info.run_id, "confusion_matrix.json", folder)
        confusion = json.loads(Path(path).read_text())["rows_true_columns_predicted"]
    assert sum(map(sum, confusion)) == 150  # every row tested once
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(job["summary"]["test_accuracy_mean"])
    for fold in job["folds"]:
        run = client.get_run(fold["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name.startswith(f"{fold['index']} ")  # the index first
        assert run.data.metrics["best_epoch"] == fold["best_epoch"]
        assert run.data.metrics["best_val_loss"] == pytest.approx(fold["best_val_loss"])
        best = client.get_metric_history(run.info.run_id, "val_loss")[fold["best_epoch"] - 1]
        assert best.step == fold["best_epoch"] and best.value == pytest.approx(fold["best_val_loss"])
        for metric in ("train_loss", "train_loss_ewma", "val_loss", "val_accuracy", "val_f1"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert steps == list(range(1, fold["epoch"] + 1)), metric  # every epoch, once, in order
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/best.pt"]
        assert run.data.metrics["test_accuracy"] == pytest.approx(fold["test_metrics"]["accuracy"])


def test_cancelling_a_running_job_stops_its_folds(stack):
    http, tracker = stack
    long_job = small_job(name="long", dataset={"name": "synthetic", "rows": 3000, "features": 20},
                         max_epochs=5000, early_stopping={"patience": 1000})
    job_id = http.post("/jobs", json=long_job).json()["id"]
    # Progress reaches the job record while the folds run.
    wait_for(lambda: any(f["epoch"] > 0 for f in http.get(f"/jobs/{job_id}").json()["folds"]), 60)
    asked = time.monotonic()
    assert http.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    job = wait_until_finished(http, job_id, timeout=30)
    print(f"cancelled {time.monotonic() - asked:.2f} s after the request")  # the target is 5 s
    assert job["status"] == "cancelled"
    assert {f["status"] for f in job["folds"]} == {"cancelled"}
    assert tracker.client.get_run(job["mlflow_run_id"]).info.status == "KILLED"
    for fold in job["folds"]:
        assert tracker.client.get_run(fold["mlflow_run_id"]).info.status == "KILLED"
    assert http.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_cli_submits_follows_lists_and_cancels(stack, tmp_path, capsys):
    http, _ = stack
    url = str(http.base_url).rstrip("/")
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(small_job(name="from-cli")))
    assert cli(["--url", url, "submit", str(spec_file), "--wait"]) == 0
    out = capsys.readouterr().out
    assert "fold 2 [" in out and "succeeded" in out and "mean" in out and "std" in out
    header = next(line for line in out.splitlines() if line.startswith("fold  "))
    assert header.split() == ["fold", "status", "best_epoch", "best_val_loss", "best_val_accuracy",
                              "test_accuracy", "test_f1", "test_loss"]  # the best epoch's, named so
    job_id = out.split("submitted job ")[1].split()[0]
    assert cli(["--url", url, "status", job_id]) == 0
    assert f"job {job_id} (from-cli): succeeded" in capsys.readouterr().out
    assert cli(["--url", url, "list", "--status", "succeeded"]) == 0
    assert job_id in capsys.readouterr().out
    assert cli(["--url", url, "cancel", job_id]) == 1  # finished: the API says 409
    assert "409" in capsys.readouterr().err
    spec_file.write_text(json.dumps(small_job(optimizer={"name": "adam", "lr": -1})))
    assert cli(["--url", url, "submit", str(spec_file)]) == 1
    assert "optimizer.adam.lr: Input should be greater than 0" in capsys.readouterr().err


def pets_csv(rows: int = 240, seed: int = 0) -> str:
    """A table as a user brings one: a string label that age and city predict, a string
    feature, a boolean, a missing value, and sex to stratify on."""
    rng = np.random.default_rng(seed)
    lines = ["age,city,member,sex,species"]
    for i in range(rows):
        city = ["Paris", "Lyon", "Nice"][i % 3]
        age = int(rng.integers(1, 15))
        species = "cat" if age < 6 else ("dog" if city != "Nice" else "bird")
        lines.append(f"{'' if i == 7 else age},{city},{'true' if i % 2 else 'false'},"
                     f"{rng.choice(['f', 'm'])},{species}")
    return "\n".join(lines) + "\n"


def test_an_uploaded_csv_trains_and_its_exported_model_predicts_raw_rows(stack, tmp_path):
    """Upload a CSV with string labels, string features and a missing value; train 3 folds
    with missing: mean and strata; then load a fold's model from MLflow as a user would and
    predict on raw rows of the same CSV."""
    import mlflow.pyfunc
    import pandas as pd

    http, tracker = stack
    csv = pets_csv()
    dataset = http.post("/datasets", files={"file": ("pets.csv", csv.encode())}).json()
    spec = small_job(name="pets", dataset={"id": dataset["id"], "label": "species", "missing": "mean",
                                           "strata": ["sex"]}, max_epochs=40)
    job = wait_until_finished(http, http.post("/jobs", json=spec).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["classes"] == ["bird", "cat", "dog"] and job["summary"]["test_accuracy_mean"] > 0.8
    fold_run = job["folds"][0]["mlflow_run_id"]
    assert tracker.client.get_run(fold_run).data.metrics["imputed_values"] == 1  # row 7's age
    assert {a.path for a in tracker.client.list_artifacts(fold_run, "model")} >= {"model/MLmodel"}
    mlflow.set_tracking_uri(tracker.client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{fold_run}/model")
    frame = pd.read_csv(io.StringIO(csv))
    predicted = np.asarray(model.predict(frame.drop(columns=["species"]))).reshape(-1)
    assert set(predicted) <= {"bird", "cat", "dog"} and len(predicted) == len(frame)
    assert (predicted == frame["species"].to_numpy()).mean() > 0.8
    inputs = {c.name for c in model.metadata.get_input_schema().inputs}
    assert inputs == {"age", "city", "member", "sex"}


def test_a_refit_trains_one_model_on_every_row_and_registers_it_with_its_cv_scores(stack, capsys):
    """refit: true. Once the folds have scored the job, a refit job trains one model on all
    150 rows for the folds' mean best epoch (no validation, no test, no early stopping),
    logs it beneath the job's run and registers it under the job's name; loaded from the
    Model Registry, it predicts raw rows."""
    import mlflow.pyfunc
    import pandas as pd
    from sklearn.datasets import load_iris

    http, tracker = stack
    done = wait_until_finished(http, http.post("/jobs", json=small_job(name="iris-refit", refit=True)).json()["id"])
    assert done["status"] == "succeeded", done["error"]
    asked = wait_for(lambda: http.get(f"/jobs/{done['id']}").json()["refit"], 30)
    refit = wait_until_finished(http, asked["job_id"])
    assert refit["status"] == "succeeded", refit["error"]
    epochs = round(statistics.fmean(f["best_epoch"] for f in done["folds"]))
    assert refit["refit_of"] == done["id"] and refit["spec"]["max_epochs"] == epochs
    assert refit["spec"]["early_stopping"] is None and refit["spec"]["refit"] is False
    [fold] = refit["folds"]
    assert fold["epoch"] == fold["best_epoch"] == epochs  # the budget, the last epoch kept
    assert fold["test_metrics"] == {} and fold["val_loss"] is None and fold["train_loss"] > 0
    registered = refit["registered_model"]
    assert registered["name"] == "iris-refit" and registered["mlflow_url"].endswith(
        f"/#/models/iris-refit/versions/{registered['version']}")
    assert http.get(f"/jobs/{done['id']}").json()["refit"]["registered_model"] == registered
    client = tracker.client
    version = client.get_model_version("iris-refit", str(registered["version"]))
    assert version.run_id == fold["mlflow_run_id"]
    assert f"accuracy {done['summary']['test_accuracy_mean']:.4g}" in version.description
    assert f"for {epochs} epochs" in version.description and "over 3 folds" in version.description
    run = client.get_run(refit["mlflow_run_id"])  # beneath the refitted job's run
    assert run.data.tags["mlflow.parentRunId"] == done["mlflow_run_id"]
    assert run.info.experiment_id == done["mlflow_experiment_id"]
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/iris-refit/{registered['version']}")
    iris = load_iris(as_frame=True)
    predicted = np.asarray(model.predict(pd.DataFrame(iris.data))).reshape(-1)
    assert (predicted == iris.target.to_numpy()).mean() > 0.9  # rows it trained on
    assert cli(["--url", str(http.base_url).rstrip("/"), "status", done["id"]]) == 0
    shown = capsys.readouterr().out
    assert f"refit: job {refit['id']} (succeeded, {epochs} epochs)" in shown
    assert f"registered model: iris-refit version {registered['version']}" in shown


def test_a_streamed_job_uses_the_folds_of_the_same_job_in_memory_and_learns_as_much(stack, request):
    """One generated dataset, the same job read two ways: the fold tasks of the second
    read its Parquet file a row group at a time (workers.stream). Both use the one fold
    map kept beside the dataset; the buffered shuffle and other dropout masks move the
    metrics a little, not the folds."""
    if request.node.callspec.params["stack"] == "postgresql":
        pytest.skip("run once: how the fold tasks read their data does not depend on the database")
    http, tracker = stack
    store = tracker.artifacts_dir.parent / "datasets"  # the service's data folder holds both
    maps_before = set(store.glob("foldmap-*.parquet"))
    spec = small_job(name="loading", dataset={"name": "synthetic", "rows": 3000, "features": 10, "classes": 3},
                     max_epochs=6)
    jobs = {loading: wait_until_finished(http, http.post("/jobs", json={**spec, "data_loading": loading}).json()["id"])
            for loading in ("memory", "stream")}
    for loading, job in jobs.items():
        assert job["status"] == "succeeded", job["error"]
        assert job["data_loading"] == loading and {f["data_loading"] for f in job["folds"]} == {loading}
        assert tracker.client.get_run(job["mlflow_run_id"]).data.params["dataset.loading"] == loading
    for memory, streamed in zip(jobs["memory"]["folds"], jobs["stream"]["folds"]):
        assert memory["test_metrics"]["accuracy"] > 0.7
        assert abs(memory["test_metrics"]["accuracy"] - streamed["test_metrics"]["accuracy"]) < 0.06
    # One fold map for both, computed once from the label and kept beside the dataset.
    assert len(set(store.glob("foldmap-*.parquet")) - maps_before) == 1


# -- /readyz and /metrics of the whole service (the failing cases are in
# tests/api/test_readiness.py, the counts of a known set of jobs in tests/api/test_metrics.py)

def scrape(http) -> dict[tuple[str, tuple], float]:
    text = http.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_ready_once_the_dispatcher_has_looked_at_the_cluster(stack):
    http, _ = stack
    answer = wait_for(lambda: (answer := http.get("/readyz")).status_code == 200 and answer, 60)
    assert answer.json() == {"status": "ok", "database": "ok", "ray": "ok", "mlflow": "ok"}


def test_a_job_shows_in_the_metrics(stack):
    """Its folds' durations (from the database), the dispatcher's ticks and the lag of
    every epoch it stored (from the dispatcher in this process)."""
    http, _ = stack
    before = scrape(http)
    job = http.post("/jobs", json=small_job(name="metered", max_epochs=3)).json()
    assert wait_until_finished(http, job["id"])["status"] == "succeeded"
    after = scrape(http)

    def grew(name: str, labels: tuple = ()) -> float:
        return after[name, labels] - before.get((name, labels), 0)
    succeeded = (("status", "succeeded"),)
    assert grew("crossfold_jobs", succeeded) == 1
    assert grew("crossfold_fold_duration_seconds_count", succeeded) == 3
    assert grew("crossfold_fold_duration_seconds_sum", succeeded) > 0
    assert after["crossfold_folds_running", ()] == 0 and after["crossfold_queue_depth", ()] == 0
    assert grew("crossfold_dispatcher_tick_seconds_count") > 0
    assert grew("crossfold_progress_lag_seconds_count") >= 3 * 3  # 3 folds of 3 epochs at least
    assert after["crossfold_progress_lag_seconds_bucket", (("le", "+Inf"),)] \
        == after["crossfold_progress_lag_seconds_count", ()]


def test_a_study_runs_its_variants_and_ranks_them_on_the_same_folds(stack, tmp_path, capsys, request):
    """`crossfold study FILE --wait`: two variants, repeated 3-fold (6 paired scores each),
    a fixed budget of epochs and a target validation loss; the leaderboard ranks them and
    compares the worse one with the best, fold by fold."""
    if request.node.callspec.params["stack"] == "postgresql":
        pytest.skip("run once: a study's jobs are ordinary jobs; its storage on both databases is "
                    "tests/api/test_studies.py")
    http, tracker = stack
    url = str(http.base_url).rstrip("/")
    study = {"name": "study-e2e", "base": small_job(max_epochs=8, early_stopping=None,
                                                     cv={"folds": 3, "seed": 0, "repeats": 2}),
             "variants": [{"label": "adam", "optimizer": {"name": "adam", "lr": 0.02}},
                          {"label": "slow-sgd", "optimizer": {"name": "sgd", "lr": 0.0005}}],
             "target_val_loss": 0.7, "rope": 0.02, "refit": True}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    assert cli(["--url", url, "study", str(path), "--wait"]) == 0
    out = capsys.readouterr().out
    study_id = out.split("submitted study ")[1].split()[0]
    assert "slow-sgd" in out and "P(worse/equiv/better)" in out and "accuracy: higher is better" in out
    board = http.get(f"/studies/{study_id}").json()
    assert board["status"] == "succeeded" and board["best"] == "adam"
    adam, sgd = board["variants"]
    assert (adam["rank"], sgd["rank"]) == (1, 2)
    assert len(adam["fold_scores"]) == len(sgd["fold_scores"]) == 6  # folds × repeats, paired
    assert adam["mean_best_epoch"] == sgd["mean_best_epoch"] == 8  # no early stopping: the budget
    assert adam["epochs_to_target"]["reached"] >= 1 and sgd["epochs_to_target"]["reached"] == 0
    against = sgd["against_best"]
    assert against["differences"] == [s - a for s, a in zip(sgd["fold_scores"], adam["fold_scores"])]
    assert 0 <= against["p_value"] <= 1 and against["p_worse"] > 0.5
    assert abs(against["p_worse"] + against["p_equivalent"] + against["p_better"] - 1) < 1e-9
    jobs = [http.get(f"/jobs/{v['job_id']}").json() for v in board["variants"]]
    adam_run = jobs[0]["mlflow_run_id"]
    assert all(len(j["folds"]) == 6 and j["study_id"] == study_id for j in jobs)
    assert len({j["dataset_id"] for j in jobs}) == 1 and jobs[0]["spec"]["cv"] == jobs[1]["spec"]["cv"]
    assert cli(["--url", url, "study", "show", study_id]) == 0
    assert "adam" in capsys.readouterr().out
    plots = [f"/studies/{study_id}/plots/{name}.png" for name in ("validation_loss", "training_loss", "fold_scores")]
    for path in [*plots, f"/jobs/{adam['job_id']}/plots/learning_curves.png"]:
        answer = http.get(path)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", path
        assert Image.open(io.BytesIO(answer.content)).size == (800, 500)
    report = http.get(f"/studies/{study_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    page = report.text
    assert page.count("data:image/png;base64,") == 3 and "corrected resampled t-test" in page
    assert "slow-sgd" in page and "P(equivalent)" in page
    assert f"runs/{jobs[0]['mlflow_run_id']}" in page  # each variant links to its run in MLflow
    assert http.get(f"/studies/{study_id}/plots/nothing.png").status_code == 404
    # In MLflow: the study's run, each variant's job run beneath it, the results on it.
    client = tracker.client
    parents = {client.get_run(j["mlflow_run_id"]).data.tags["mlflow.parentRunId"] for j in jobs}
    assert len(parents) == 1
    study_run = client.get_run(parents.pop())
    assert study_run.info.status == "FINISHED" and study_run.data.tags["crossfold.best_variant"] == "adam"
    assert study_run.info.experiment_id == jobs[0]["mlflow_experiment_id"] == jobs[1]["mlflow_experiment_id"]
    kept = {a.path for a in client.list_artifacts(study_run.info.run_id)} | \
        {a.path for a in client.list_artifacts(study_run.info.run_id, "plots")}
    assert {"leaderboard.json", "report.html", "plots/validation_loss.png", "plots/fold_scores.png"} <= kept
    assert http.get(f"/jobs/{adam['job_id']}/plots/fold_scores.png").status_code == 404
    # refit: true refits the best variant once all have ended, registered under the study's name.
    asked = wait_for(lambda: http.get(f"/studies/{study_id}").json()["refit"], 30)
    refit = wait_until_finished(http, asked["job_id"])
    assert refit["status"] == "succeeded" and refit["refit_of"] == adam["job_id"]
    assert refit["variant"] == "refit of adam" and refit["spec"]["optimizer"]["name"] == "adam"
    assert refit["spec"]["max_epochs"] == 8 and refit["registered_model"]["name"] == "study-e2e"
    version = client.get_model_version("study-e2e", str(refit["registered_model"]["version"]))
    assert "variant adam of study study-e2e" in version.description
    assert client.get_run(refit["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == adam_run
    assert http.get(f"/studies/{study_id}").json()["variants"] == board["variants"]  # not a variant
    assert f"the best variant, adam, trained again on every row for 8 epochs" in \
        http.get(f"/studies/{study_id}/report").text
    with tempfile.TemporaryDirectory() as folder:  # the study run's report, written as the refit was queued
        kept_report = Path(client.download_artifacts(study_run.info.run_id, "report.html", folder)).read_text()
    assert "the best variant, adam, trained again on every row" in kept_report


@needs_chromium
def test_a_study_report_reads_in_a_real_browser(stack, tmp_path, request):
    """The report page as a person sees it: headless Chromium, offline, renders its
    leaderboard and its three inline figures (a screenshot is left in tmp_path)."""
    if request.node.callspec.params["stack"] == "postgresql":
        pytest.skip("run once: the page does not depend on the database")
    http, _ = stack
    study = {"name": "study-browser", "base": small_job(max_epochs=3),
             "variants": [{"label": "adam"}, {"label": "sgd", "optimizer": {"name": "sgd", "lr": 0.05}}]}
    study_id = http.post("/studies", json=study).json()["id"]
    wait_for(lambda: http.get(f"/studies/{study_id}").json()["status"] in ("succeeded", "failed"), 180)
    url = f"{str(http.base_url).rstrip('/')}/studies/{study_id}/report"
    dom = render(url, screenshot=tmp_path / "report.png")
    assert "<h2>Leaderboard</h2>" in dom and dom.count("data:image/png;base64,") == 3
    assert ">adam<" in dom and ">sgd<" in dom and "corrected resampled t-test" in dom
    assert (tmp_path / "report.png").stat().st_size > 10_000
