"""The HTTP API, on SQLite and on PostgreSQL (no dispatcher: jobs stay queued)."""
import json

import pytest

from tests.helpers import small_job


def submit(client, **overrides):
    return client.post("/jobs", json=small_job(**overrides))


def test_submit_returns_201_with_location_and_the_job(client):
    response = submit(client)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and len(job["folds"]) == 3
    assert client.get(response.headers["location"]).json()["id"] == job["id"]


def error_fields(response) -> list[str]:
    return [".".join(str(p) for p in e["loc"][1:]) for e in response.json()["detail"]]


@pytest.mark.parametrize("change, field, rule", [
    ({"optimizer": {"name": "adam", "lr": -1}}, "optimizer.adam.lr", "greater than 0"),
    ({"optimizer": {"name": "momentum", "lr": 0.1, "beta": 1.0}}, "optimizer.momentum.beta", "less than 1"),
    ({"optimizer": {"name": "rmsprop", "lr": 0.1, "eps": 0}}, "optimizer.rmsprop.eps", "greater than 0"),
    ({"optimizer": {"name": "lbfgs", "lr": 0.1}}, "optimizer", "sgd"),
    ({"cv": {"folds": 1}}, "cv.folds", "greater than or equal to 3"),
    ({"model": {"hidden": [16], "dropout": 1.0}}, "model.mlp.dropout", "less than 1"),
    ({"model": {"hidden": []}}, "model.mlp.hidden", "at least 1"),
    ({"model": {"hidden": [100000]}}, "model.mlp.hidden.0", "less than or equal to 4096"),
    ({"batch_size": 0}, "batch_size", "integer from 1 to 1,000,000 or \"full\""),
    ({"batch_size": "half"}, "batch_size", "integer from 1 to 1,000,000 or \"full\""),
    ({"dataset": "mnist"}, "dataset.name", "digits"),
    ({"max_epochs": 10**6}, "max_epochs", "less than or equal to 10000"),
    ({"learning_rate": 0.1}, "learning_rate", "Extra inputs are not permitted"),
    ({"batch_size": 1}, "", "batch normalization needs at least 2 samples"),
    ({"model": {"type": "rnn"}}, "model", "mlp"),
    ({"model": {"hidden": [8] * 9}}, "model.mlp.hidden", "at most 8"),
    ({"max_epochs": 0}, "max_epochs", "greater than or equal to 1"),
    ({"optimizer": {"name": "sgd", "lr": 1e9}}, "optimizer.sgd.lr", "less than or equal to 10"),
    ({"optimizer": {"name": "adam", "lr": 0.01, "beta2": -0.1}}, "optimizer.adam.beta2", "greater than or equal to 0"),
    ({"cv": {"folds": 3, "shuffle": True}}, "cv.shuffle", "Extra inputs are not permitted"),
    ({"dataset": {"name": "synthetic", "rows": 20_000_000, "features": 1000}}, "dataset",
     "rows × features must be at most 2,000,000,000"),
    ({"resources": {"cpus_per_fold": 0}}, "resources.cpus_per_fold", "greater than 0"),
    ({"loss_ewma_beta": 1.5}, "loss_ewma_beta", "less than 1"),
    ({"priority": 101}, "priority", "less than or equal to 100"),
    ({"priority": -101}, "priority", "greater than or equal to -100"),
    ({"priority": "high"}, "priority", "valid integer"),
    ({"priority": 2.5}, "priority", "valid integer"),
])
def test_invalid_specs_get_422_naming_the_field_and_nothing_is_stored(client, change, field, rule):
    response = submit(client, **change)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(f == field and rule in d["msg"] for f, d in zip(error_fields(response), details)), details
    assert client.get("/jobs").json()["total"] == 0


def test_the_issue_examples_are_refused(client):
    adam = client.post("/jobs", json={**small_job(), "optimizer": {"name": "adam", "lr": -1}})
    folds = client.post("/jobs", json={**small_job(), "cv": {"folds": 1}})
    assert adam.status_code == folds.status_code == 422
    assert "optimizer.adam.lr" in error_fields(adam) and "cv.folds" in error_fields(folds)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_the_json_body_are_refused(client, literal):
    body = json.dumps(small_job()).replace('"lr": 0.01', f'"lr": {literal}')
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "optimizer.adam.lr" in error_fields(response)
    assert client.get("/jobs").json()["total"] == 0


def test_data_dependent_rules_are_422_too(client):
    response = submit(client, dataset={"name": "synthetic", "rows": 30, "classes": 5}, cv={"folds": 10})
    assert response.status_code == 422
    assert error_fields(response) == ["cv.folds"]
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize("change, field", [
    ({"model": {"type": "cnn"}}, "model.type"),                       # iris is not an image
    ({"dataset": "diabetes", "early_stopping": {"monitor": "val_accuracy"}}, "early_stopping.monitor"),
    ({"dataset": "digits", "model": {"type": "cnn"}, "pack_folds": True}, "pack_folds"),
])
def test_rules_that_need_the_dataset(client, change, field):
    response = submit(client, **change)
    assert response.status_code == 422 and error_fields(response) == [field]


def test_lecture_options_are_accepted(client):
    response = submit(client, dataset="digits", model={"type": "cnn", "batch_norm": True},
                      optimizer={"name": "adam", "lr": 0.001, "bias_correction": False},
                      batch_size="full", loss_ewma_beta=0.8)
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]
    assert spec["optimizer"]["bias_correction"] is False and spec["model"]["channels"] == [16, 32]


def test_unknown_job_is_404(client):
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/jobs/nope/cancel").status_code == 404


def test_list_newest_first_with_status_filter_and_pages(client):
    ids = [submit(client, name=f"job-{i}").json()["id"] for i in range(4)]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = client.get("/jobs", params={"limit": 2}).json()
    assert page["total"] == 4 and [j["id"] for j in page["items"]] == [ids[3], ids[2]]
    second = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in second["items"]] == [ids[1], ids[0]]
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[1]]
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_cancel_queued_then_409(client):
    job_id = submit(client).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert {f["status"] for f in response.json()["folds"]} == {"cancelled"}
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_healthz_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/healthz"} <= set(paths)


def test_a_statement_the_database_refuses_is_a_server_error_not_an_outage(settings, sessions, engine):
    """503 with Retry-After is for a database that cannot be reached; a broken schema
    (here: a table gone) must not pass for one, or it would be retried for ever."""
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from api.main import create_app
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE jobs RENAME TO jobs_gone"))
    with TestClient(create_app(settings, sessions), raise_server_exceptions=False) as client:
        response = client.get("/jobs")
    assert response.status_code == 500 and "retry-after" not in response.headers
