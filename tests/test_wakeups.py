"""The dispatcher does not wait for its poll: a submitted job starts at once, a finished
fold is collected as its task returns, a cancel is carried out at once. The whole
service runs here with a poll far longer than any test (POLL_S), so whatever happens
within seconds was woken by something else:
- SQLite, API and dispatcher in one process (`crossfold serve`): the in-process signal;
- PostgreSQL, the API apart from the dispatcher (no signal between them): NOTIFY;
- SQLite, the API apart: nothing but the poll (the control: the tests can tell).
"""
from __future__ import annotations

import time

import pytest

from tests.helpers import fresh_database, running_service, small_job, wait_for, wait_until_finished

POLL_S = 600.0  # the dispatcher's poll: never reached within a test
LEASE_S = 3600.0  # its leases outlast the poll
STARTS_WITHIN_S = 2.0

SLOW = dict(dataset={"name": "synthetic", "rows": 4000, "features": 20}, max_epochs=200,
            early_stopping={"patience": 1000})


@pytest.fixture(scope="module", params=["sqlite, one process", "postgresql, api apart"])
def service(request, ray_session, tmp_path_factory):
    """(HTTP client, dispatcher): on SQLite woken in-process only; on PostgreSQL by NOTIFY
    only (the API has no signal of the dispatcher's)."""
    kind = request.param.split(",")[0]
    folder = tmp_path_factory.mktemp(f"wakeups-{kind}")
    with fresh_database(kind, folder) as url, running_service(
            url, folder, lease_s=LEASE_S, poll_interval_s=POLL_S, share_wakeup=kind == "sqlite") as (http, _, dispatcher):
        if kind == "postgresql":
            wait_for(lambda: dispatcher.listener and dispatcher.listener.listening.is_set(), 30)
        yield http, dispatcher


def idle(dispatcher) -> int:
    """Its tick count, once it waits with nothing left to do (no tick for 0.5 s)."""
    def quiet():
        before = dispatcher.ticks
        time.sleep(0.5)
        return before if before and dispatcher.ticks == before and not dispatcher.wakeup.event.is_set() else 0
    return wait_for(quiet, 30, interval=0)


def submit_and_time_start(http, dispatcher, spec: dict, within_s: float) -> tuple[str, float | None]:
    """(job id, seconds from its submission to its status running; None if not within_s)."""
    idle(dispatcher)
    began = time.monotonic()
    job_id = http.post("/jobs", json=spec).json()["id"]
    while time.monotonic() - began < within_s:
        if http.get(f"/jobs/{job_id}").json()["status"] != "queued":
            return job_id, time.monotonic() - began
        time.sleep(0.02)
    return job_id, None


def test_a_submitted_job_starts_at_once(service):
    http, dispatcher = service
    job_id, latency = submit_and_time_start(http, dispatcher, small_job(max_epochs=2), STARTS_WITHIN_S)
    assert latency is not None, f"not started within {STARTS_WITHIN_S} s, with a poll of {POLL_S} s"
    assert wait_until_finished(http, job_id, 120)["status"] == "succeeded"


def test_finished_folds_are_collected_as_their_tasks_return(service):
    """Only the fold tasks returning can wake it: the job finishes (its last fold
    collected), minutes before the poll; and each wake is a tick or two, not a spin."""
    http, dispatcher = service
    job_id, latency = submit_and_time_start(http, dispatcher, small_job(max_epochs=3), STARTS_WITHIN_S)
    assert latency is not None
    ticks = dispatcher.ticks
    job = wait_until_finished(http, job_id, 120)
    assert job["status"] == "succeeded" and {f["status"] for f in job["folds"]} == {"succeeded"}
    assert dispatcher.ticks - ticks <= 4 * len(job["folds"]) + 4


def test_a_cancel_is_carried_out_at_once(service):
    """The cancel wakes the dispatcher, which stops the tasks; they return, and wake it
    again to finish the job as cancelled."""
    http, dispatcher = service
    job_id, latency = submit_and_time_start(http, dispatcher, small_job(name="slow", **SLOW), STARTS_WITHIN_S)
    assert latency is not None
    wait_for(lambda: dispatcher.active.get(job_id) and dispatcher.active[job_id].tasks, 60)
    began = time.monotonic()
    assert http.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = wait_until_finished(http, job_id, 30)
    assert job["status"] == "cancelled" and time.monotonic() - began < 15


def test_an_api_in_another_process_on_sqlite_is_found_by_the_poll_alone(ray_session, tmp_path):
    """The control: with neither signal, a job submitted just after a tick waits for the
    next one, a poll later."""
    with fresh_database("sqlite", tmp_path) as url, running_service(
            url, tmp_path, poll_interval_s=5.0, share_wakeup=False) as (http, _, dispatcher):
        idle(dispatcher)
        ticks = dispatcher.ticks
        wait_for(lambda: dispatcher.ticks > ticks, 15, interval=0.005)  # a poll's tick, just done
        began = time.monotonic()
        job_id = http.post("/jobs", json=small_job(max_epochs=2)).json()["id"]
        time.sleep(max(0.0, began + 2.0 - time.monotonic()))
        assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["status"] != "queued", 10)
        http.post(f"/jobs/{job_id}/cancel")
