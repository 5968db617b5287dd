"""Per-owner limits on submissions, done for real against the API: one owner flooding the
queue is stopped with 429 and Retry-After, the others are not."""
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from services.auth import create_key
from services.models import OwnerLimits
from tests.helpers import served, small_job


def app_with(settings, sessions, **limits):
    return create_app(settings.model_copy(update=limits), sessions)


def test_one_owner_flooding_the_queue_is_stopped_at_the_default_limit(client):
    """The review's attack: one key submitting as fast as it can. With the defaults
    (100 queued jobs), the 101st and later get 429 and nothing more is stored."""
    answers = [client.post("/jobs", json=small_job(name=f"flood-{i}", cv={"folds": 20}))
               for i in range(130)]
    codes = [a.status_code for a in answers]
    assert codes[:100] == [201] * 100 and set(codes[100:]) == {429}
    refused = answers[100]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "CROSSFOLD_MAX_QUEUED_JOBS" in refused.json()["detail"]
    assert client.get("/jobs").json()["total"] == 100


def test_submissions_per_minute_are_limited_with_the_wait_until_one_frees(settings, sessions):
    with TestClient(app_with(settings, sessions, submissions_per_minute=5)) as client:
        codes = [client.post("/jobs", json=small_job()).status_code for _ in range(7)]
        assert codes == [201] * 5 + [429] * 2
        refused = client.post("/jobs", json=small_job())
        assert 55 <= int(refused.headers["retry-after"]) <= 60  # the first frees in about a minute
        assert "CROSSFOLD_SUBMISSIONS_PER_MINUTE" in refused.json()["detail"]
        assert client.get("/jobs").json()["total"] == 5


def test_a_cancelled_job_makes_room_in_the_queue(settings, sessions):
    with TestClient(app_with(settings, sessions, max_queued_jobs=2)) as client:
        first, _ = [client.post("/jobs", json=small_job()).json() for _ in range(2)]
        assert client.post("/jobs", json=small_job()).status_code == 429
        client.post(f"/jobs/{first['id']}/cancel")
        assert client.post("/jobs", json=small_job()).status_code == 201


def test_a_replay_of_a_stored_key_is_answered_even_at_the_limit(settings, sessions):
    with TestClient(app_with(settings, sessions, max_queued_jobs=1)) as client:
        headers = {"Idempotency-Key": "k1"}
        job = client.post("/jobs", json=small_job(), headers=headers).json()
        replay = client.post("/jobs", json=small_job(), headers=headers)
        assert replay.status_code == 200 and replay.json()["id"] == job["id"]
        assert client.post("/jobs", json=small_job(), headers={"Idempotency-Key": "k2"}).status_code == 429


def test_concurrent_submissions_cannot_pass_the_limit_together(settings, sessions):
    """Forty submissions at once against a limit of 5: they are stored in batches, and
    each batch counts what the others stored."""
    with served(app_with(settings, sessions, max_queued_jobs=5)) as base:
        with httpx.Client(base_url=base, timeout=60) as http, ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: http.post("/jobs", json=small_job(name=f"c{i}")).status_code,
                                  range(40)))
            assert sorted(codes).count(201) == 5 and codes.count(429) == 35
            assert http.get("/jobs").json()["total"] == 5


def test_an_owners_own_limit_overrides_the_default_and_stops_only_that_owner(settings, sessions):
    with sessions() as session:
        keys = {owner: create_key(session=session, owner=owner) for owner in ("alice", "bob")}
        session.add(OwnerLimits(owner="alice", max_queued_jobs=1))
        session.commit()
    with TestClient(app_with(settings, sessions, auth_required=True)) as client:
        alice, bob = ({"Authorization": f"Bearer {keys[o]}"} for o in ("alice", "bob"))
        assert client.post("/jobs", json=small_job(), headers=alice).status_code == 201
        assert client.post("/jobs", json=small_job(), headers=alice).status_code == 429
        assert [client.post("/jobs", json=small_job(), headers=bob).status_code for _ in range(3)] == [201] * 3


@pytest.mark.parametrize("spec, field, rule", [
    (dict(cv={"folds": 12}), "cv.folds", "running folds your limit allows"),
    (dict(max_runtime_s=7201), "max_runtime_s", "at most 7,200 s"),
])
def test_a_job_that_could_never_run_within_the_limits_is_422(settings, sessions, spec, field, rule):
    with TestClient(app_with(settings, sessions, max_running_folds=10, max_job_runtime_s=7200)) as client:
        answer = client.post("/jobs", json=small_job(**spec))
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["detail"]
        assert error["loc"] == ["body", *field.split(".")] and rule in error["msg"]
        assert client.get("/jobs").json()["total"] == 0
