"""Shared fixtures: real databases (SQLite and PostgreSQL), one local Ray per session,
real MLflow stores in temporary folders, and the whole service (`stack`). Helpers that
are not fixtures are in tests/helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from services.database import make_engine, session_factory, upgrade_schema
from services.dataset_store import DatasetStore
from services.datasets import register_bundled
from services.settings import Settings
from tests.helpers import fresh_database, running_service
from tests.s3 import S3_CREDENTIALS


def pytest_itemcollected(item):
    """`make test` runs two test processes (pytest-xdist, --dist loadgroup): the tests of a
    module whose fixture lives as long as the module (a whole service, an MLflow server, a
    Ray cluster) all go to one process, which starts that fixture once. Marked as each
    test is collected: pytest-xdist reads the marks in its own collection_modifyitems."""
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures and any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values()):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path):
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(settings) -> DatasetStore:
    """The test's dataset store (in its data folder), where its app keeps datasets too."""
    return DatasetStore(settings.resolved_dataset_store())


@pytest.fixture
def sessions(engine, store):
    """Sessions on the test's database, which holds the bundled datasets (in the test's
    dataset store), as a started service's does."""
    sessions = session_factory(engine)
    with sessions() as session:
        register_bundled(session=session, store=store)
    return sessions


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url,
                    mlflow_ui_url="http://127.0.0.1:5000", poll_interval_s=0.2,
                    allowed_hosts="testserver")  # the name FastAPI's TestClient calls the API by


@pytest.fixture
def client(settings, sessions):
    with TestClient(create_app(settings, sessions)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting one takes seconds). Its workers
    keep the environment they start with: the test S3 server's credentials are put there
    first, as every node of a real cluster holds its own (tests/test_s3.py)."""
    import ray
    for name, value in S3_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    # "local": a Ray of its own, never one found on this machine (the other test process's,
    # or a multi-node test's `ray start`).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, ray_session, tmp_path_factory):
    """The whole service in this process (tests/helpers.py running_service) on a fresh
    database of each kind. Yields (HTTP client, tracker)."""
    folder = tmp_path_factory.mktemp(f"stack-{request.param}")
    with fresh_database(request.param, folder) as url, running_service(url, folder) as (http, tracker, _):
        yield http, tracker
