"""API keys and owners, idempotent submission, body limits: on SQLite and PostgreSQL."""
import hashlib
import json
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.cli import main as cli
from api.main import create_app
from services.auth import create_key
from services.models import ApiKey, Job
from tests.helpers import served, small_job


@pytest.fixture
def secured(settings, sessions):
    """An app with authentication on, and a key each for two owners."""
    settings = settings.model_copy(update={"auth_required": True})
    with sessions() as session:
        keys = {owner: create_key(session=session, owner=owner) for owner in ("alice", "bob")}
    with TestClient(create_app(settings, sessions)) as client:
        yield client, keys


def as_owner(key):
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_wrong_key_is_401(secured):
    client, _ = secured
    assert client.post("/jobs", json=small_job()).status_code == 401
    response = client.get("/jobs", headers=as_owner("cf_wrong"))
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200  # liveness needs no key


def test_another_owners_job_is_404_on_every_route(secured):
    client, keys = secured
    job_id = client.post("/jobs", json=small_job(), headers=as_owner(keys["alice"])).json()["id"]
    bob = as_owner(keys["bob"])
    assert client.get(f"/jobs/{job_id}", headers=bob).status_code == 404
    assert client.post(f"/jobs/{job_id}/cancel", headers=bob).status_code == 404
    assert client.get("/jobs", headers=bob).json()["total"] == 0
    alice = as_owner(keys["alice"])
    assert client.get(f"/jobs/{job_id}", headers=alice).status_code == 200
    assert [j["id"] for j in client.get("/jobs", headers=alice).json()["items"]] == [job_id]


def test_keys_are_stored_hashed(secured, sessions):
    _, keys = secured
    with sessions() as session:
        stored = {row.key_hash for row in session.scalars(select(ApiKey))}
    assert keys["alice"] not in stored
    assert hashlib.sha256(keys["alice"].encode()).hexdigest() in stored


def test_cli_creates_a_key_printed_once(settings, sessions, monkeypatch, capsys):
    monkeypatch.setenv("CROSSFOLD_DATABASE_URL", settings.database_url)
    from services.settings import get_settings
    get_settings.cache_clear()
    try:
        assert cli(["keys", "create", "--owner", "carol"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("cf_") and "shown only this once" in out.err
    with TestClient(create_app(settings.model_copy(update={"auth_required": True}), sessions)) as client:
        assert client.get("/jobs", headers=as_owner(key)).status_code == 200


def test_authentication_follows_the_bind_address(settings):
    assert not settings.model_copy(update={"api_host": "127.0.0.1"}).requires_auth()
    assert settings.model_copy(update={"api_host": "0.0.0.0"}).requires_auth()
    assert settings.model_copy(update={"api_host": "10.1.2.3"}).requires_auth()
    assert settings.model_copy(update={"api_host": "0.0.0.0", "auth_required": False}).requires_auth() is False


def test_same_idempotency_key_and_body_returns_the_same_job(client):
    key = {"Idempotency-Key": "submit-42"}
    first = client.post("/jobs", json=small_job(), headers=key)
    again = client.post("/jobs", json=small_job(), headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    other = client.post("/jobs", json=small_job(max_epochs=3), headers=key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    assert client.get("/jobs").json()["total"] == 1


def post_at_once(base: str, count: int, headers: dict | None = None) -> list[httpx.Response]:
    return at_once(base, [lambda http: http.post("/jobs", json=small_job(), headers=headers or {})] * count)


def at_once(base: str, calls: list) -> list[httpx.Response]:
    """Each call(http) from a thread of its own, all released together."""
    barrier, answers = threading.Barrier(len(calls)), []

    def run(call):
        with httpx.Client(base_url=base, timeout=60) as http:
            barrier.wait()
            answers.append(call(http))

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_requests_with_one_key_create_one_job(settings, sessions):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("the concurrency case is the PostgreSQL one")
    with served(create_app(settings, sessions)) as base:
        answers = post_at_once(base, 100, {"Idempotency-Key": "same"})
    codes = [a.status_code for a in answers]
    assert codes.count(201) == 1 and codes.count(200) == 99  # one created, 99 replays
    assert len({a.json()["id"] for a in answers}) == 1
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_more_requests_than_database_connections_all_succeed(settings):
    """Requests queue for a small connection pool instead of deadlocking on it."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("pool sizing is the PostgreSQL deployment's concern")
    from sqlalchemy import create_engine
    from services.database import _with_driver, session_factory, upgrade_schema
    engine = create_engine(_with_driver(settings.database_url), pool_size=1, max_overflow=0, pool_timeout=20)
    upgrade_schema(engine)
    with served(create_app(settings, session_factory(engine))) as base:
        answers = post_at_once(base, 60)
        assert [a.status_code for a in answers] == [201] * 60
        # Reads take a connection each in a worker thread: with one connection for
        # sixty of them, they must queue for it, not deadlock.
        reads = at_once(base, [lambda http, job=a.json()["id"]: http.get(f"/jobs/{job}") for a in answers]
                        + [lambda http: http.get("/jobs")] * 20)
    assert [r.status_code for r in reads] == [200] * 80
    engine.dispose()


def test_bodies_over_the_limit_get_413_and_store_nothing(settings, sessions):
    settings = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(settings, sessions)) as client:
        padded = small_job(name="x" * 10)
        big = json.dumps({**padded, "padding": "y" * 4000})
        assert client.post("/jobs", content=big, headers={"content-type": "application/json"}).status_code == 413

        def chunks():  # no Content-Length: the limit is counted as the body streams
            for _ in range(5):
                yield b" " * 1000
        chunked = client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert client.post("/jobs", json=small_job()).status_code == 201
        assert client.get("/jobs").json()["total"] == 1
