"""Jobs on uploaded datasets, on SQLite and PostgreSQL: the dataset section checked against
the data at submission (422 naming the field and the rule, nothing stored), owners, and
a dataset in use."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from services.auth import create_key
from tests.helpers import small_job

ROWS = 120
# 120 rows: species (string label, 3 classes), age (numbers), city (strings, a third missing),
# when (dates), ratio (with an infinite value), owner (a group per 4 rows), code (unique).
CSV = "species,age,city,when,ratio,owner,code\n" + "".join(
    f"{['cat', 'dog', 'bird'][i % 3]},{20 + i},{['Paris', 'Lyon', ''][i % 3] if i != 5 else 'Nice'},"
    f"2024-01-{i % 28 + 1:02d},{'inf' if i == 7 else i / 10},o{i // 4},c{i}\n" for i in range(ROWS))


@pytest.fixture
def pets(client) -> str:
    response = client.post("/datasets", files={"file": ("pets.csv", CSV.encode())})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def job_on(dataset_id: str, **section) -> dict:
    return small_job(dataset={"id": dataset_id, "label": "species", "drop": ["when", "ratio", "code"],
                              "missing": "mean", **section})


def test_a_job_on_an_uploaded_dataset_is_queued_with_its_classes(client, pets):
    response = client.post("/jobs", json=job_on(pets, strata=["city"], group="owner"))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["classes"] == ["bird", "cat", "dog"] and job["dataset_id"] == pets
    by_name = client.post("/jobs", json=small_job(dataset={"name": "pets", "label": "species",
                                                            "features": ["age"]}))
    assert by_name.status_code == 201 and by_name.json()["dataset_id"] == pets


@pytest.mark.parametrize("section, field, rule", [
    ({"label": "kind"}, "dataset.label", "no column 'kind'; the columns are species, age, city"),
    ({"features": ["age", "height"]}, "dataset.features", "no column 'height'"),
    ({"drop": ["nope"]}, "dataset.drop", "no column 'nope'"),
    ({"strata": ["sex"]}, "dataset.strata", "no column 'sex'"),
    ({"group": "family"}, "dataset.group", "no column 'family'"),
    ({"drop": ["ratio", "code"]}, "dataset.features", "'when' holds a date or time (date32[day])"),
    ({"drop": ["when", "code"]}, "dataset.features", "'ratio' has 1 infinite values"),
    ({"drop": ["when", "ratio"]}, "dataset.features", "'code' has 120 distinct values, over the cap of 100"),
    ({"missing": "refuse"}, "dataset.missing", "columns with missing values: city (39)"),
    ({"features": ["species"]}, "dataset.features", "'species' is the label"),
    ({"task": "regression"}, "dataset.task", "regression needs numbers"),
])
def test_a_dataset_section_the_data_refuses_is_422_and_stores_nothing(client, pets, section, field, rule):
    response = client.post("/jobs", json=job_on(pets, **section))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert ".".join(error["loc"][1:]) == field and rule in error["msg"], error
    assert client.get("/jobs").json()["total"] == 0


def test_class_sizes_are_checked_against_the_folds(client):
    few = "label,x\n" + "".join(f"{'rare' if i < 2 else 'common'},{i}\n" for i in range(30))
    one = "label,x\n" + "".join(f"same,{i}\n" for i in range(30))
    ids = [client.post("/datasets", files={"file": (f"{n}.csv", data.encode())}).json()["id"]
           for n, data in (("few", few), ("one", one))]
    small = client.post("/jobs", json=small_job(dataset={"id": ids[0], "label": "label"}, cv={"folds": 3}))
    assert small.status_code == 422 and "class 'rare' has 2 rows; 3 stratified folds" in small.text
    single = client.post("/jobs", json=small_job(dataset={"id": ids[1], "label": "label"}))
    assert single.status_code == 422 and "a single class, 'same'" in single.text


def test_the_task_is_inferred_from_the_label(client):
    numbers = "y,x\n" + "".join(f"{i * 1.5},{i}\n" for i in range(40))
    dataset = client.post("/datasets", files={"file": ("numbers.csv", numbers.encode())}).json()["id"]
    job = client.post("/jobs", json=small_job(dataset={"id": dataset, "label": "y"})).json()
    assert job["classes"] is None
    assert client.post("/jobs", json=small_job(dataset={"id": dataset, "label": "y"},
                                               early_stopping={"monitor": "val_accuracy"})).status_code == 422


def test_another_owners_dataset_is_404_for_a_job_too(settings, sessions):
    settings = settings.model_copy(update={"auth_required": True})
    with sessions() as session:
        alice, bob = ({"Authorization": f"Bearer {create_key(session=session, owner=o)}"} for o in ("alice", "bob"))
    with TestClient(create_app(settings, sessions)) as client:
        dataset = client.post("/datasets", files={"file": ("pets.csv", CSV.encode())}, headers=alice).json()
        by_id = client.post("/jobs", json=job_on(dataset["id"]), headers=bob)
        assert by_id.status_code == 404 and "not found" in by_id.json()["detail"]
        by_name = small_job(dataset={"name": "pets", "label": "species", "features": ["age"]})
        assert client.post("/jobs", json=by_name, headers=bob).status_code == 404
        assert client.post("/jobs", json=by_name, headers=alice).status_code == 201
        assert client.get("/jobs", headers=bob).json()["total"] == 0


def test_a_dataset_used_by_a_queued_job_cannot_be_deleted(client, pets):
    job = client.post("/jobs", json=job_on(pets)).json()
    refused = client.delete(f"/datasets/{pets}")
    assert refused.status_code == 409 and job["id"] in refused.json()["detail"]
    client.post(f"/jobs/{job['id']}/cancel")
    assert client.delete(f"/datasets/{pets}").status_code == 204


def test_the_example_csv_and_its_job_are_accepted_as_they_are(client):
    from pathlib import Path
    examples = Path(__file__).resolve().parents[2] / "examples"
    uploaded = client.post("/datasets", files={"file": ("pets.csv", (examples / "pets.csv").read_bytes())})
    assert uploaded.status_code == 201 and uploaded.json()["rows"] == 300
    job = client.post("/jobs", content=(examples / "pets-adam.json").read_bytes(),
                      headers={"content-type": "application/json"})
    assert job.status_code == 201, job.text
    assert job.json()["classes"] == ["cat", "dog", "rabbit"]
