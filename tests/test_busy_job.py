"""A busy job must not hold the database: an iris job in full batch, thousands of tiny
epochs reported as fast as they run, while another submission and a cancel each
answer within a second. A tick stores a bounded share of the board's events and commits
them; no transaction stays open across MLflow's calls."""
from __future__ import annotations

import time

import pytest

from tests.helpers import fresh_database, running_service, small_job, wait_for

BUSY = small_job(name="busy", dataset="iris", batch_size="full", max_epochs=10_000,
                 early_stopping={"patience": 1000}, cv={"folds": 4, "seed": 0},
                 checkpoint_interval_s=60)


def timed(call) -> tuple[float, object]:
    started = time.monotonic()
    answer = call()
    return time.monotonic() - started, answer


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_busy_job_leaves_room_for_other_submissions_and_cancels(ray_session, kind, tmp_path):
    with fresh_database(kind, tmp_path) as url, running_service(url, tmp_path / "data") as (http, _, _):
        busy = http.post("/jobs", json=BUSY).json()["id"]
        # Hundreds of epochs stored already: the board is busy being drained.
        wait_for(lambda: sum(f["epoch"] for f in http.get(f"/jobs/{busy}").json()["folds"]) > 300, 120)
        for _ in range(3):
            seconds, answer = timed(lambda: http.post("/jobs", json=small_job(name="other")))
            assert answer.status_code == 201 and seconds < 1.0, seconds
            other = answer.json()["id"]
            seconds, answer = timed(lambda: http.post(f"/jobs/{other}/cancel"))
            assert answer.status_code in (200, 202) and seconds < 1.0, seconds
        http.post(f"/jobs/{busy}/cancel")
        wait_for(lambda: http.get(f"/jobs/{busy}").json()["status"] == "cancelled", 60)
