"""A busy job must not hold the database: an iris job in full batch, thousands of tiny
epochs reported as fast as they run, while another submission and a cancel each get
the locks they need within a second. A tick stores a bounded share of the board's
events and commits them; no transaction stays open across MLflow's calls.

The API's connections give up on a lock after a second (SQLite's busy timeout,
PostgreSQL's lock_timeout), so a lock held longer fails the request (503) whatever
the machine's load; a wall-clock bound would also fail when a shared machine is slow."""
from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from tests.helpers import fresh_database, running_service, small_job, wait_for

BUSY = small_job(name="busy", dataset="iris", batch_size="full", max_epochs=10_000,
                 early_stopping={"patience": 1000}, cv={"folds": 4, "seed": 0},
                 checkpoint_interval_s=60)


def timed(call) -> tuple[float, object]:
    started = time.monotonic()
    answer = call()
    return time.monotonic() - started, answer


def waiting_a_second_for_locks(url: str) -> str:
    if url.startswith("sqlite"):
        return f"{url}?timeout=1"
    return f"{url}?options={quote('-c lock_timeout=1000')}"


def epochs_stored(http, job_id: str) -> int:
    return sum(f["epoch"] for f in http.get(f"/jobs/{job_id}").json()["folds"])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_busy_job_leaves_room_for_other_submissions_and_cancels(ray_session, kind, tmp_path):
    with fresh_database(kind, tmp_path) as url, \
            running_service(url, tmp_path / "data", api_database_url=waiting_a_second_for_locks(url)) as (
                http, _, dispatcher):
        busy = http.post("/jobs", json=BUSY).json()["id"]
        # Hundreds of epochs stored already: the board is busy being drained.
        wait_for(lambda: epochs_stored(http, busy) > 300, 120)
        stored_before, ticks_before = epochs_stored(http, busy), dispatcher.ticks
        # Requests all through several ticks, not only in a gap between two.
        while dispatcher.ticks < ticks_before + 5:
            seconds, answer = timed(lambda: http.post("/jobs", json=small_job(name="other")))
            assert answer.status_code == 201, (seconds, answer.text)
            other = answer.json()["id"]
            seconds, answer = timed(lambda: http.post(f"/jobs/{other}/cancel"))
            assert answer.status_code in (200, 202), (seconds, answer.text)
            time.sleep(0.05)
        assert epochs_stored(http, busy) > stored_before  # the drain went on meanwhile
        http.post(f"/jobs/{busy}/cancel")
        wait_for(lambda: http.get(f"/jobs/{busy}").json()["status"] == "cancelled", 60)
