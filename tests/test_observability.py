"""/readyz and /metrics of the whole service (the `stack` fixture: the API, a dispatcher
in the same process, as `crossfold serve` runs them, the test session's Ray and a local
MLflow store), on SQLite and on PostgreSQL. The failing cases are in
tests/api/test_readiness.py, the counts of a known set of jobs in tests/api/test_metrics.py."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import small_job, wait_for, wait_until_finished


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
