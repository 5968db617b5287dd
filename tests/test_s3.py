"""The stores on S3, against a real S3 server (moto's, tests/s3.py) spoken to by pyarrow:
the dataset store's round trip, fold-side readers opening a dataset by its URI alone, an
upload over HTTP, and a whole job whose Ray tasks read their data and write their
checkpoints there. Credentials travel only in each process's environment, never in a URI:
URIs are logged to MLflow and shown in job and dataset JSON."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from services.dataset_store import DatasetStore
from services.settings import Settings
from tests.helpers import fresh_database, running_service, small_job, wait_until_finished
from tests.s3 import REGION, S3_CREDENTIALS, new_bucket, s3_server
from workers.storage import child_uri
from workers.stream.source import ParquetSource
from workers.table import read_table

SECRET = S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def credentials(monkeypatch):
    """In this process's environment only, where any node's pyarrow reads them."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups


@pytest.fixture
def s3_settings(tmp_path, endpoint, credentials) -> Settings:
    bucket = new_bucket(endpoint)
    return Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
                    dataset_store=f"s3://{bucket}/datasets", checkpoint_store=f"s3://{bucket}/checkpoints",
                    s3_endpoint=endpoint, s3_region=REGION, allowed_hosts="testserver")


def test_s3_settings_go_into_the_store_uris_and_credentials_never_do(endpoint):
    settings = Settings(dataset_store="s3://bucket/datasets", checkpoint_store="s3://bucket/ckpt?region=eu-west-3",
                        s3_endpoint=endpoint, s3_region=REGION, s3_access_key_id="key",
                        s3_secret_access_key=SECRET)
    host = endpoint.removeprefix("http://")
    assert settings.resolved_dataset_store() == \
        f"s3://bucket/datasets?region={REGION}&endpoint_override={host}&scheme=http"
    assert "region=eu-west-3" in settings.resolved_checkpoint_store()  # the URI's own option wins
    assert SECRET not in settings.resolved_dataset_store() + settings.resolved_checkpoint_store() + repr(settings)
    assert Settings(dataset_store="/srv/data").resolved_dataset_store() == "/srv/data"  # not S3: as it is
    with pytest.raises(ValueError, match="must not hold credentials"):
        Settings(dataset_store=f"s3://key:{SECRET}@bucket/datasets")
    with pytest.raises(ValueError, match="or neither") as refused:
        Settings(s3_secret_access_key=SECRET)
    assert SECRET not in str(refused.value)


def test_the_s3_settings_read_the_standard_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://objects.example.com:9443")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert Settings().s3_options() == {"region": "eu-west-3", "endpoint_override": "objects.example.com:9443",
                                       "scheme": "https"}
    monkeypatch.setenv("CROSSFOLD_S3_ENDPOINT", "http://minio:9000")  # crossfold's own wins
    assert Settings().s3_options()["endpoint_override"] == "minio:9000"


def test_a_dataset_round_trips_through_an_s3_store_and_fold_readers_open_it_by_uri(s3_settings):
    store = DatasetStore(s3_settings.resolved_dataset_store())
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    with store.writing("numbers") as staging, store.fs.open_output_stream(staging) as sink:
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "label": [0, 1] * 3}), sink, row_group_size=4)
    assert store.exists("numbers") and not store.exists("other")
    assert store.files() == [store.path_of("numbers")]  # the staging copy is gone
    uri = store.uri_of("numbers")
    assert uri == child_uri(store.uri, "numbers.parquet") and uri.startswith(f"s3://{store.root}/numbers.parquet?")
    assert "endpoint_override=" in uri and SECRET not in uri
    # What a fold task does on any node: the URI alone, its credentials from its environment.
    table = read_table(uri, ["a", "b"], "label")
    assert np.array_equal(np.column_stack([table.features["a"], table.features["b"]]), x)
    source = ParquetSource(uri, ["a", "b"], "label")
    assert source.rows == 6 and [group.rows for group in source.groups] == [4, 2]
    store.delete("numbers")
    assert store.files() == []


def test_a_store_on_a_missing_bucket_stops_the_service_at_start_up(s3_settings):
    with pytest.raises(OSError, match="allow_bucket_creation"):
        DatasetStore(s3_settings.store_uri("s3://no-such-bucket/datasets"))


def test_an_upload_over_http_lands_in_the_s3_store_with_credentials_from_settings(s3_settings, monkeypatch):
    """Credentials given as crossfold settings: the app puts them where pyarrow reads them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-these")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-these")
    settings = s3_settings.model_copy(update={"s3_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                              "s3_secret_access_key": SecretStr(SECRET)})
    with TestClient(create_app(settings)) as client:
        response = client.post("/datasets", files={"file": ("pets.csv", b"age,label\n3,cat\n9,dog\n5,cat\n")})
        assert response.status_code == 201, response.text
        dataset, store = response.json(), client.app.state.store
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET  # exported at start-up
        assert store.uri.startswith("s3://") and store.path_of(dataset["id"]) in store.files()
        assert read_table(store.uri_of(dataset["id"]), ["age"], "label").label.tolist() == ["cat", "dog", "cat"]
        assert SECRET not in response.text + client.get(f"/datasets/{dataset['id']}").text
        assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
        assert store.path_of(dataset["id"]) not in store.files()


def test_a_job_trains_on_data_in_s3_through_ray_and_mlflow_logs_no_secret(
        ray_session, endpoint, credentials, tmp_path, monkeypatch):
    """The real service (API, dispatcher, the session's Ray, MLflow) with both stores on S3,
    set as an operator would: CROSSFOLD_* variables. The Ray workers have the credentials
    in their environment (tests/conftest.py), and the endpoint from the URIs they receive."""
    bucket = new_bucket(endpoint)
    for name, value in {"CROSSFOLD_DATASET_STORE": f"s3://{bucket}/datasets", "CROSSFOLD_S3_ENDPOINT": endpoint,
                        "CROSSFOLD_CHECKPOINT_STORE": f"s3://{bucket}/checkpoints",
                        "CROSSFOLD_S3_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with fresh_database("sqlite", tmp_path) as url, running_service(url, tmp_path) as (http, tracker, dispatcher):
        response = http.post("/jobs", json=small_job(max_epochs=3))
        assert response.status_code == 201, response.text
        job = wait_until_finished(http, response.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert [fold["status"] for fold in job["folds"]] == ["succeeded"] * 3
        assert dispatcher.store.uri.startswith(f"s3://{bucket}/datasets?")
        assert SECRET not in json.dumps(job)
        for run_id in [job["mlflow_run_id"], *(fold["mlflow_run_id"] for fold in job["folds"])]:
            [used] = tracker.client.get_run(run_id).inputs.dataset_inputs
            source = json.loads(used.dataset.source)["uri"]
            assert source.startswith(f"s3://{bucket}/datasets/") and SECRET not in used.dataset.source
