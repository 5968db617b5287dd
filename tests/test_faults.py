"""Faults done for real on the whole service: a worker killed with SIGKILL, a dispatcher
killed with SIGKILL, a training that diverges. Each test checks what survived. (The
dispatcher's own recoveries, a tick that fails midway or a lease lost to another
dispatcher, are in tests/services/test_dispatcher.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import event

from api.main import create_app
from services import jobs
from services.database import make_engine, session_factory, upgrade_schema
from services.settings import Settings
from tests.helpers import (PrivatePostgres, running_service, served, small_job, store_job, wait_for,
                           wait_until_finished)

# Long enough for a fold to be caught running by the kill (after its epoch 5), no longer.
SLOW_FOLDS = dict(dataset={"name": "synthetic", "rows": 3000, "features": 20}, max_epochs=30,
                  early_stopping={"patience": 1000}, checkpoint_interval_s=0)
SHORTER_FOLDS = {**SLOW_FOLDS, "dataset": {"name": "synthetic", "rows": 2000, "features": 20}, "max_epochs": 20}


def worker_of(database_url: str, job_id: str, index: int) -> str:
    """A fold's worker as the database keeps it, host:pid (the API does not show it)."""
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            return next(f.worker for f in jobs.get_job(session=session, job_id=job_id).folds
                        if f.index == index)
    finally:
        engine.dispose()


@pytest.mark.parametrize("packed, loading", [(False, "memory"), (True, "memory"), (False, "stream")],
                         ids=["task-per-fold", "packed", "streamed"])
def test_a_killed_worker_resumes_its_folds_from_the_last_checkpoint(ray_session, database_url, tmp_path,
                                                                    packed, loading):
    if (packed or loading == "stream") == database_url.startswith("postgresql"):
        pytest.skip("each variant once: PostgreSQL runs a task a fold, SQLite the packed and the "
                    "streamed task (how a fold reads its data does not depend on the database)")
    with running_service(database_url, tmp_path) as (http, tracker, _):
        spec = small_job(name="kill-worker", pack_folds=packed, data_loading=loading, **SLOW_FOLDS)
        job_id = http.post("/jobs", json=spec).json()["id"]
        victim = wait_for(lambda: next((f for f in http.get(f"/jobs/{job_id}").json()["folds"]
                                        if f["epoch"] >= 5 and f["status"] == "running"), None), 90)
        killed = worker_of(database_url, job_id, victim["index"])
        os.kill(int(killed.rsplit(":", 1)[1]), signal.SIGKILL)
        job = wait_until_finished(http, job_id)
        assert job["status"] == "succeeded", job["error"]
        # One task per fold: the victim's fold was hit; packed: every fold lived in that process.
        hit = [f for f in job["folds"] if packed or f["index"] == victim["index"]]
        for fold in hit:
            assert fold["attempts"] == 2 and fold["epoch"] == SLOW_FOLDS["max_epochs"]
            assert worker_of(database_url, job_id, fold["index"]) != killed
            run = tracker.client.get_run(fold["mlflow_run_id"])
            assert int(run.data.tags["crossfold.attempt_2_resumed_after_epoch"]) >= 5  # not from scratch
            history = tracker.client.get_metric_history(fold["mlflow_run_id"], "val_loss")
            assert sorted(m.step for m in history) == list(range(1, SLOW_FOLDS["max_epochs"] + 1))  # none lost or twice


def test_a_diverging_fold_fails_the_job_with_its_reason_and_keeps_the_others(stack):
    http, tracker = stack
    spec = small_job(name="diverge", optimizer={"name": "sgd", "lr": 10.0},
                     model={"type": "mlp", "hidden": [64, 64], "batch_norm": False}, dataset="wine")
    job = wait_until_finished(http, http.post("/jobs", json=spec).json()["id"])
    failed = [f for f in job["folds"] if f["status"] == "failed"]
    # Chosen (deterministic on CPU) so that folds 1 and 2 blow up and fold 0 does not.
    assert [f["index"] for f in failed] == [1, 2], [f["status"] for f in job["folds"]]
    assert job["status"] == "failed"
    for fold in failed:
        assert "loss became" in fold["error"] and f"fold {fold['index']} failed" in job["error"]
        run = tracker.client.get_run(fold["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert all(abs(v) < float("inf") for v in run.data.metrics.values())  # nothing non-finite
        assert not tracker.client.list_artifacts(fold["mlflow_run_id"])  # no checkpoint
    assert all(f["test_metrics"] for f in job["folds"] if f["status"] == "succeeded")


def dispatcher_process(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "api.cli", "dispatcher"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_killed_dispatcher_is_replaced_and_nothing_finished_runs_again(ray_session, tmp_path, database_url):
    if database_url.startswith("sqlite"):
        pytest.skip("dispatchers apart from the API are a PostgreSQL deployment; the embedded service "
                    "restarts whole (tests/test_serve.py), and adoption on SQLite is in test_dispatcher.py")
    env = {**os.environ, "CROSSFOLD_DATA_DIR": str(tmp_path), "CROSSFOLD_DATABASE_URL": database_url,
           "CROSSFOLD_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "CROSSFOLD_LEASE_S": "2", "CROSSFOLD_POLL_INTERVAL_S": "0.2"}
    engine = make_engine(database_url)
    upgrade_schema(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        job_id = store_job(session, small_job(name="kill-dispatcher", cv={"folds": 3}, **SHORTER_FOLDS)).id

    def job():
        with sessions() as session:
            return jobs.get_job(session=session, job_id=job_id)

    first = dispatcher_process(env)
    wait_for(lambda: any(f.status.value == "succeeded" for f in job().folds)
             and any(f.status.value == "running" and f.epoch >= 2 for f in job().folds), 120)
    first.kill()
    first.wait()
    done_before = {f.index: f.finished_at for f in job().folds if f.status.value == "succeeded"}
    second = dispatcher_process(env)
    try:
        wait_for(lambda: job().status.value in ("succeeded", "failed"), 180)
    finally:
        second.terminate()
        second.wait(timeout=60)
    final = job()
    assert final.status.value == "succeeded", final.error
    assert all(f.status.value == "succeeded" for f in final.folds)
    for fold in final.folds:
        if fold.index in done_before:  # finished before the crash: not run again
            assert fold.attempts == 1 and fold.finished_at == done_before[fold.index]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in [final.mlflow_run_id, *(f.mlflow_run_id for f in final.folds)]:
        assert client.get_run(run_id).info.status == "FINISHED"
    for fold in final.folds:
        steps = sorted(m.step for m in client.get_metric_history(fold.mlflow_run_id, "val_loss"))
        assert steps == list(range(1, fold.epoch + 1))
    engine.dispose()


@pytest.fixture
def private_postgres():
    if (why := PrivatePostgres.available()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the database-outage test: {why}")
        pytest.skip(why)
    server = PrivatePostgres().create()
    yield server
    server.remove()


def test_concurrent_submissions_to_a_stopped_database_all_answer_503_and_none_is_stored(
        private_postgres, tmp_path, caplog):
    """Bursts of submissions (20, then 5, from threads on a real uvicorn) while PostgreSQL
    is down: they are stored in batches, and every request is answered 503 with
    Retry-After and told nothing was stored, as a lone one is. A batch the database could
    not take is not retried one submission at a time against a database that is gone
    (behind a network cut, each try would wait out the connect timeout): one connection
    attempt a batch at most. The API logs one line when it goes and one when it is back,
    no traceback. Once it is back, a submission is stored, and none of the refused ones."""
    caplog.set_level("WARNING")
    engine = make_engine(private_postgres.url)
    upgrade_schema(engine)
    connects = []
    event.listen(engine, "do_connect", lambda *_: connects.append(1))
    app = create_app(Settings(data_dir=tmp_path, database_url=private_postgres.url), session_factory(engine))
    spec = small_job(dataset={"name": "synthetic", "rows": 200})  # nothing to read before the batch

    def submit_together(http, names):
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(lambda name: http.post("/jobs", json={**spec, "name": name}), names))

    with served(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        # A pool of live connections, in use a moment ago, for the crash to kill.
        assert {a.status_code for a in submit_together(http, [f"before-{i}" for i in range(20)])} == {201}
        private_postgres.crash()
        for burst in (20, 5):
            connects.clear()
            answers = submit_together(http, [f"refused-{burst}-{i}" for i in range(burst)])
            assert [a.status_code for a in answers] == [503] * burst, [a.text for a in answers]
            for answer in answers:
                assert int(answer.headers["retry-after"]) > 0
                assert "nothing was stored" in answer.json()["detail"], answer.json()
            assert len(connects) <= burst  # one a batch, not one a submission besides
        private_postgres.start()
        assert wait_for(lambda: http.get("/healthz").status_code == 200, 30)
        assert http.post("/jobs", json={**spec, "name": "after"}).status_code == 201
        names = [job["name"] for job in http.get("/jobs", params={"limit": 200}).json()["items"]]
    engine.dispose()
    assert sorted(names) == sorted([f"before-{i}" for i in range(20)] + ["after"])
    said = [r.getMessage() for r in caplog.records if "the database is" in r.getMessage()]
    assert len([m for m in said if m.startswith("API: the database is unreachable")]) == 1, said
    assert len([m for m in said if m.startswith("API: the database is reachable again")]) == 1, said
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_a_database_outage_answers_503_logs_one_line_each_way_and_loses_nothing(
        ray_session, private_postgres, tmp_path, caplog):
    """PostgreSQL crashes mid-job and comes back: meanwhile every route answers 503 with
    Retry-After, /healthz says the database is down, the API and the dispatcher each log
    one line when it goes and one when it is back (no traceback), and the job then
    finishes with every epoch in MLflow once."""
    caplog.set_level("WARNING")
    with running_service(private_postgres.url, tmp_path) as (http, tracker, _):
        spec = small_job(name="outage", max_epochs=60, early_stopping={"patience": 1000},
                         dataset={"name": "synthetic", "rows": 3000, "features": 20})
        job_id = http.post("/jobs", json=spec).json()["id"]
        wait_for(lambda: any(f["epoch"] >= 2 for f in http.get(f"/jobs/{job_id}").json()["folds"]), 90)
        private_postgres.crash()
        answers = {"GET /jobs/{id}": http.get(f"/jobs/{job_id}"), "GET /jobs": http.get("/jobs"),
                   "POST /jobs": http.post("/jobs", json=small_job(name="during-outage")),
                   "POST /jobs/{id}/cancel": http.post(f"/jobs/{job_id}/cancel"),
                   "GET /healthz": http.get("/healthz")}
        for route, answer in answers.items():
            assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0, route
        assert answers["GET /healthz"].json()["status"] == "unavailable"
        assert answers["GET /healthz"].json()["database"].startswith("unreachable: ")
        time.sleep(3)  # some dispatcher ticks fail meanwhile, and more requests
        assert http.get(f"/jobs/{job_id}").status_code == 503
        private_postgres.start()
        assert wait_for(lambda: http.get("/healthz").status_code == 200, 30)
        job = wait_until_finished(http, job_id)
        assert job["status"] == "succeeded", job["error"]
        assert http.get("/jobs").json()["total"] == 1  # the submission refused during the outage
        for fold in job["folds"]:
            steps = [m.step for m in tracker.client.get_metric_history(fold["mlflow_run_id"], "val_loss")]
            assert sorted(steps) == list(range(1, 61)), fold["index"]
    said = [r.getMessage() for r in caplog.records if "the database is" in r.getMessage()]
    for who in ("API", "dispatcher"):
        assert len([m for m in said if m.startswith(f"{who}: the database is unreachable")]) == 1, said
        assert len([m for m in said if m.startswith(f"{who}: the database is reachable again")]) == 1, said
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
