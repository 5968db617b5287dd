"""Faults done for real: a worker killed with SIGKILL, a dispatcher killed with SIGKILL,
a training that diverges. Each test checks what survived."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from services import jobs
from services.database import make_engine, session_factory, upgrade_schema
from services.spec import JobSpec
from tests.conftest import small_job
from tests.test_end_to_end import stack, wait_for, wait_until_finished  # noqa: F401 (fixture)

SLOW_FOLDS = dict(dataset={"name": "synthetic", "rows": 4000, "features": 20}, max_epochs=40,
                  early_stopping={"patience": 1000}, checkpoint_interval_s=0)


@pytest.mark.parametrize("packed", [False, True], ids=["task-per-fold", "packed"])
def test_a_killed_worker_resumes_its_folds_from_the_last_checkpoint(stack, packed):  # noqa: F811
    http, tracker = stack
    spec = small_job(name="kill-worker", pack_folds=packed, **SLOW_FOLDS)
    job_id = http.post("/jobs", json=spec).json()["id"]
    victim = wait_for(lambda: next((f for f in http.get(f"/jobs/{job_id}").json()["folds"]
                                    if f["epoch"] >= 5 and f["status"] == "running"), None), 90)
    os.kill(int(victim["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    job = wait_until_finished(http, job_id)
    assert job["status"] == "succeeded", job["error"]
    # One task per fold: the victim's fold was hit; packed: every fold lived in that process.
    hit = [f for f in job["folds"] if packed or f["index"] == victim["index"]]
    for fold in hit:
        assert fold["attempts"] == 2 and fold["epoch"] == 40 and fold["worker"] != victim["worker"]
        run = tracker.client.get_run(fold["mlflow_run_id"])
        assert int(run.data.tags["crossfold.attempt_2_resumed_after_epoch"]) >= 5  # not from scratch
        history = tracker.client.get_metric_history(fold["mlflow_run_id"], "val_loss")
        assert sorted(m.step for m in history) == list(range(1, 41))  # no epoch lost, none twice


def test_a_diverging_fold_fails_the_job_with_its_reason_and_keeps_the_others(stack):  # noqa: F811
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
    env = {**os.environ, "CROSSFOLD_DATA_DIR": str(tmp_path), "CROSSFOLD_DATABASE_URL": database_url,
           "CROSSFOLD_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "CROSSFOLD_LEASE_S": "2", "CROSSFOLD_POLL_INTERVAL_S": "0.2"}
    engine = make_engine(database_url)
    upgrade_schema(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        spec = JobSpec.model_validate(small_job(name="kill-dispatcher", cv={"folds": 4}, **SLOW_FOLDS))
        job_id = jobs.create_job(session=session, spec=spec)[0].id

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


def test_a_job_that_cannot_start_fails_alone_and_the_next_one_runs(ray_session, tmp_path, database_url):
    from services.cluster import Cluster
    from services.dispatcher import Dispatcher
    from services.models import Fold, Job
    from services.states import JobStatus
    from services.tracking import Tracker
    engine = make_engine(database_url)
    upgrade_schema(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        # A spec this version cannot read (say, written by a newer one), then a good job.
        broken = Job(name="broken", spec={"name": "broken"}, status=JobStatus.QUEUED, cancel_requested=False)
        broken.folds = [Fold(index=i) for i in range(3)]
        session.add(broken)
        session.commit()
        good = jobs.create_job(session=session, spec=JobSpec.model_validate(small_job(max_epochs=3)))[0]
    tracker = Tracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_dir=tmp_path / "art")
    dispatcher = Dispatcher(sessions=sessions, cluster=Cluster(), tracker=tracker, max_active_jobs=1)

    def status(job_id):
        with sessions() as session:
            return jobs.get_job(session=session, job_id=job_id)

    def step():
        dispatcher.tick()
        return status(good.id).status is JobStatus.SUCCEEDED

    wait_for(step, 120)
    failed = status(broken.id)
    assert failed.status is JobStatus.FAILED and failed.error.startswith("could not start")
    assert {f.status.value for f in failed.folds} == {"cancelled"}
    assert not dispatcher.active
    engine.dispose()


def test_progress_stays_on_the_board_until_the_dispatcher_acknowledges_it(ray_session):
    from services.cluster import Cluster
    cluster = Cluster()
    job = "ack-test-job"
    for epoch in (1, 2):
        cluster.board.report.remote({"job_id": job, "fold": 0, "kind": "epoch", "epoch": epoch})
    first = cluster.pending_progress([job])[job]
    assert [e["epoch"] for e in first] == [1, 2]
    assert cluster.pending_progress([job])[job] == first  # read again: still there
    cluster.board.report.remote({"job_id": job, "fold": 0, "kind": "epoch", "epoch": 3})
    cluster.acknowledge_progress({job: len(first)})
    assert [e["epoch"] for e in cluster.pending_progress([job])[job]] == [3]  # arrived meanwhile
    cluster.forget(job)


def test_a_tick_that_fails_midway_loses_no_epoch_and_logs_none_twice(ray_session, tmp_path, database_url):
    """The dispatcher fails while storing progress (MLflow unreachable for a moment):
    the events it had read stay on the board, the next tick stores them, and every
    epoch appears once in MLflow."""
    from services.cluster import Cluster
    from services.dispatcher import Dispatcher
    from services.states import JobStatus
    from services.tracking import Tracker

    class FlakyTracker(Tracker):
        calls = 0

        def log_epoch(self, *args, **kwargs):
            FlakyTracker.calls += 1
            super().log_epoch(*args, **kwargs)  # this one is stored, then the tick fails
            if FlakyTracker.calls in (4, 9):
                raise ConnectionError("MLflow unreachable")

    engine = make_engine(database_url)
    upgrade_schema(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        job_id = jobs.create_job(session=session, spec=JobSpec.model_validate(
            small_job(max_epochs=8, early_stopping={"patience": 100})))[0].id
    tracker = FlakyTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_dir=tmp_path / "art")
    dispatcher = Dispatcher(sessions=sessions, cluster=Cluster(), tracker=tracker, poll_interval_s=0.2)
    failures = []

    def finished():
        try:
            dispatcher.tick()
        except ConnectionError as error:
            failures.append(error)
        with sessions() as session:
            return jobs.get_job(session=session, job_id=job_id).status is JobStatus.SUCCEEDED
    wait_for(finished, 120)
    assert len(failures) == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with sessions() as session:
        final = jobs.get_job(session=session, job_id=job_id)
    for fold in final.folds:
        steps = [m.step for m in client.get_metric_history(fold.mlflow_run_id, "val_loss")]
        assert sorted(steps) == list(range(1, 9)), fold.index
        assert fold.attempts == 1
    engine.dispose()


def test_a_dispatcher_that_lost_a_job_writes_nothing_more_to_it(ray_session, tmp_path, database_url):
    """A dispatcher stalls past its lease and another adopts its job: the stalled one's
    next commit is refused (fenced), and nothing it wrote lands."""
    from sqlalchemy import update

    from services.cluster import Cluster
    from services.dispatcher import Dispatcher, LeaseLost
    from services.models import Job
    from services.states import JobStatus
    from services.tracking import Tracker
    engine = make_engine(database_url)
    upgrade_schema(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        job_id = jobs.create_job(session=session, spec=JobSpec.model_validate(
            small_job(**SLOW_FOLDS)))[0].id
    tracker = Tracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_dir=tmp_path / "art")
    stalled = Dispatcher(sessions=sessions, cluster=Cluster(), tracker=tracker)
    stalled.tick()
    assert job_id in stalled.active
    with sessions() as session:  # meanwhile another dispatcher adopted the job
        session.execute(update(Job).where(Job.id == job_id).values(dispatcher_id="the-other-one"))
        session.commit()
    with sessions() as session:
        stalled.fence(session)  # as in each tick, once its leases are renewed
        session.get(Job, job_id).error = "a stale write"
        with pytest.raises(LeaseLost):
            session.commit()
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.error is None and job.dispatcher_id == "the-other-one"
        assert job.status is JobStatus.RUNNING
    stalled.tick()  # the next tick lets the job go
    assert job_id not in stalled.active
    engine.dispose()
