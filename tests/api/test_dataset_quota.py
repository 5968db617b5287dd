"""Each owner's dataset storage limit (CROSSFOLD_MAX_DATASET_BYTES, or the owner's own),
on SQLite and PostgreSQL, through the real app: the sum of the stored Parquet sizes of
the owner's datasets (bundled ones do not count) may not pass it."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import api.routes.datasets as dataset_routes
from api.main import create_app
from services.auth import create_key
from services.models import Dataset, OwnerLimits
from tests.helpers import served

CSV = (b"age,city,score,label\n"
       b"31,Paris,2.5,cat\n"
       b"45,Lyon,,dog\n"
       b"27,Paris,4.0,cat\n")


def upload(client, name: str, headers=None, data: bytes = CSV):
    return client.post("/datasets", files={"file": (f"{name}.csv", data)}, data={"name": name},
                       headers=headers or {})


def app_with_limit(settings, sessions, limit: int, **more):
    return create_app(settings.model_copy(update={"max_dataset_bytes": limit, **more}), sessions)


def owners_datasets(sessions, owner: str) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner == owner))


@pytest.fixture
def stored_size(settings, sessions) -> int:
    """Bytes the store keeps for CSV (the limit counts stored Parquet, not uploaded bytes)."""
    with TestClient(create_app(settings, sessions)) as client:
        answer = upload(client, "measure")
        assert answer.status_code == 201, answer.text
        assert client.delete(f"/datasets/{answer.json()['id']}").status_code == 204
    return answer.json()["size"]


def assert_refused_for_storage(answer) -> None:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert "CROSSFOLD_MAX_DATASET_BYTES" in answer.json()["detail"]
    assert "delete" in answer.json()["detail"]


def test_an_upload_whose_stored_file_would_pass_the_limit_is_refused_and_nothing_kept(
        settings, sessions, stored_size):
    with TestClient(app_with_limit(settings, sessions, stored_size - 1)) as client:
        store, before = client.app.state.store, client.app.state.store.files()
        answer = upload(client, "pets")
        assert_refused_for_storage(answer)
        assert f"{stored_size:,} more" in answer.json()["detail"]  # refused on its stored size
        assert store.files() == before  # neither the dataset's file nor a staging file
        assert not list(settings.uploads_dir().glob("*"))  # nor the received upload
        assert owners_datasets(sessions, "local") == 0
        assert client.get("/datasets").json()["total"] == 5  # the bundled ones only


def test_an_upload_that_just_fits_is_kept_and_the_next_is_refused_before_its_body_is_read(
        settings, sessions, stored_size, monkeypatch):
    with TestClient(app_with_limit(settings, sessions, stored_size)) as client:
        first = upload(client, "first")
        assert first.status_code == 201, first.text  # kept + size == limit: it fits

        def must_not_read(*_args, **_kwargs):
            raise AssertionError("the body was read")
        monkeypatch.setattr(dataset_routes, "receive_upload", must_not_read)
        # Not even multipart (else 415): the answer comes before the body is looked at.
        answer = client.post("/datasets", content=b"x" * 10_000, headers={"content-type": "text/csv"})
        assert_refused_for_storage(answer)
        assert f"keep {stored_size:,} bytes" in answer.json()["detail"]
        assert not settings.uploads_dir().exists() or not list(settings.uploads_dir().glob("*"))
        assert owners_datasets(sessions, "local") == 1


def test_deleting_a_dataset_frees_its_bytes(settings, sessions, stored_size):
    with TestClient(app_with_limit(settings, sessions, stored_size)) as client:
        first = upload(client, "first")
        assert first.status_code == 201, first.text
        assert_refused_for_storage(upload(client, "second"))
        assert client.delete(f"/datasets/{first.json()['id']}").status_code == 204
        again = upload(client, "second")
        assert again.status_code == 201, again.text
        assert owners_datasets(sessions, "local") == 1


def test_one_owners_datasets_do_not_count_against_another(settings, sessions, stored_size):
    with sessions() as session:
        keys = {owner: {"Authorization": f"Bearer {create_key(session=session, owner=owner)}"}
                for owner in ("alice", "bob")}
    app = app_with_limit(settings, sessions, stored_size, auth_required=True)
    with TestClient(app) as client:
        assert upload(client, "pets", keys["alice"]).status_code == 201
        assert_refused_for_storage(upload(client, "more", keys["alice"]))
        answer = upload(client, "pets", keys["bob"])  # alice's bytes are not bob's
        assert answer.status_code == 201, answer.text
        assert_refused_for_storage(upload(client, "more", keys["bob"]))  # his own room is full now
        assert owners_datasets(sessions, "alice") == 1
        assert owners_datasets(sessions, "bob") == 1


def test_an_owners_own_limit_takes_precedence_over_the_setting(settings, sessions, stored_size):
    with sessions() as session:
        keys = {owner: {"Authorization": f"Bearer {create_key(session=session, owner=owner)}"}
                for owner in ("alice", "bob", "carol")}
        session.add_all([OwnerLimits(owner="alice", max_dataset_bytes=3 * stored_size),  # more room
                         OwnerLimits(owner="bob", max_dataset_bytes=stored_size - 1)])  # less room
        session.commit()
    app = app_with_limit(settings, sessions, stored_size, auth_required=True)
    with TestClient(app) as client:
        assert [upload(client, f"d{i}", keys["alice"]).status_code for i in range(4)] == [201, 201, 201, 429]
        assert_refused_for_storage(upload(client, "d0", keys["bob"]))
        assert [upload(client, f"d{i}", keys["carol"]).status_code for i in range(2)] == [201, 429]
    assert [owners_datasets(sessions, owner) for owner in ("alice", "bob", "carol")] == [3, 0, 1]


def test_uploads_arriving_together_cannot_together_pass_the_limit(settings, sessions, stored_size,
                                                                  monkeypatch):
    """Two uploads by one owner, each fitting alone, not both: checked at once, with the
    check held open a while (so that without a lock both would pass), one is refused."""
    checking = dataset_routes.check_storage

    def slow_check(*args, **kwargs):
        checking(*args, **kwargs)
        time.sleep(1.0)  # another upload's check runs now, unless it waits for this one
    monkeypatch.setattr(dataset_routes, "check_storage", slow_check)
    app = app_with_limit(settings, sessions, 2 * stored_size - 1)
    answers: dict[str, httpx.Response] = {}
    with served(app) as base:
        def send(name: str) -> None:
            with httpx.Client(base_url=base, timeout=60) as http:
                answers[name] = upload(http, name)
        threads = [threading.Thread(target=send, args=(name,)) for name in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(answer.status_code for answer in answers.values()) == [201, 429], answers
    assert owners_datasets(sessions, "local") == 1
    assert len(app.state.store.files()) == 5 + 1  # the bundled ones and the kept one
