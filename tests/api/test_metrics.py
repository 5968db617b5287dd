"""GET /metrics: Prometheus's text format, read from the database at each scrape, for a
known set of jobs (on SQLite and PostgreSQL); the dispatcher's own metrics on its port.
The whole service, where a dispatcher fills them, is in tests/test_observability.py."""
from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from services.lifecycle import move_fold, move_job, now
from services.metrics import TICK_SECONDS, serve_dispatcher_metrics
from services.models import Job
from services.states import FoldStatus, JobStatus
from tests.helpers import free_port, small_job, store_job

FOLD_SECONDS = (2.0, 40.0, 700.0)  # the succeeded job's three folds


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, its labels sorted) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def known_jobs(sessions) -> None:
    """Two queued jobs, one queued but waiting for a retry, one running with one fold
    running, one succeeded whose folds ran 2 s, 40 s and 700 s."""
    with sessions() as session:
        for name in ("queued-a", "queued-b", "retry-later", "running", "done"):
            store_job(session, small_job(name=name))
        jobs = {job.name: job for job in session.query(Job)}
        jobs["retry-later"].not_before = now() + timedelta(hours=1)
        move_job(jobs["running"], JobStatus.RUNNING)
        move_fold(jobs["running"].folds[0], FoldStatus.RUNNING)
        done = jobs["done"]
        move_job(done, JobStatus.RUNNING)
        for fold, seconds in zip(done.folds, FOLD_SECONDS):
            move_fold(fold, FoldStatus.RUNNING)
            move_fold(fold, FoldStatus.SUCCEEDED)
            fold.finished_at = fold.started_at + timedelta(seconds=seconds)
        move_job(done, JobStatus.SUCCEEDED)
        session.commit()


def test_the_metrics_count_what_the_database_holds(client, sessions):
    known_jobs(sessions)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    jobs = {status.value: found["crossfold_jobs", (("status", status.value),)] for status in JobStatus}
    assert jobs == {"queued": 3, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert found["crossfold_queue_depth", ()] == 2  # not the one waiting for its retry
    assert found["crossfold_folds_running", ()] == 1
    succeeded = (("status", "succeeded"),)
    assert found["crossfold_fold_duration_seconds_count", succeeded] == 3
    assert abs(found["crossfold_fold_duration_seconds_sum", succeeded] - sum(FOLD_SECONDS)) < 0.01
    buckets = {le: found["crossfold_fold_duration_seconds_bucket", (("le", le), ("status", "succeeded"))]
               for le in ("1.0", "5.0", "30.0", "60.0", "600.0", "1800.0", "+Inf")}
    assert buckets == {"1.0": 0, "5.0": 1, "30.0": 1, "60.0": 2, "600.0": 2, "1800.0": 3, "+Inf": 3}


def test_an_api_without_a_dispatcher_shows_none_of_its_metrics(client):
    """`crossfold api` alone: the dispatcher's metrics are on its own port, not here."""
    names = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    assert {"crossfold_jobs", "crossfold_queue_depth", "crossfold_folds_running",
            "crossfold_fold_duration_seconds"} <= names
    assert not {"crossfold_dispatcher_tick_seconds", "crossfold_progress_lag_seconds"} & names


def test_openmetrics_when_the_scraper_asks_for_it(client):
    answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")


def test_metrics_need_no_key(settings, sessions):
    """Counts and timings of the whole service, nothing of an owner's: no key, as /healthz."""
    with TestClient(create_app(settings.model_copy(update={"auth_required": True}), sessions)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/jobs").status_code == 401


def test_a_dispatcher_process_serves_its_own_metrics():
    """`crossfold dispatcher` with CROSSFOLD_DISPATCHER_METRICS_PORT."""
    TICK_SECONDS.observe(0.01)
    server = serve_dispatcher_metrics(port := free_port(), host="127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
    found = samples(text)
    assert found["crossfold_dispatcher_tick_seconds_count", ()] >= 1
    assert ("crossfold_progress_lag_seconds_count", ()) in found
