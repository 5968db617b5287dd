"""Shared fixtures: real databases (SQLite and PostgreSQL), one local Ray per session,
real MLflow stores in temporary folders, and the whole service (`stack`). Helpers that
are not fixtures are in tests/helpers.py."""
from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from services.database import make_engine, session_factory, upgrade_schema
from services.settings import Settings
from tests.helpers import fresh_database, served


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
def sessions(engine):
    return session_factory(engine)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url,
                    mlflow_ui_url="http://127.0.0.1:5000", poll_interval_s=0.2)


@pytest.fixture
def client(settings, sessions):
    with TestClient(create_app(settings, sessions)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting one takes seconds)."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, ray_session, tmp_path_factory):
    """The whole service in this process: the HTTP API (real uvicorn) → the database → a
    dispatcher → the session's Ray → an MLflow store. Yields (HTTP client, tracker)."""
    from services.cluster import Cluster
    from services.dispatcher import Dispatcher
    from services.tracking import Tracker
    folder = tmp_path_factory.mktemp(f"stack-{request.param}")
    with fresh_database(request.param, folder) as url:
        settings = Settings(data_dir=folder, database_url=url, poll_interval_s=0.2)
        engine = make_engine(url)
        upgrade_schema(engine)
        tracker = Tracker(tracking_uri=settings.resolved_tracking_uri(),
                          artifacts_dir=settings.artifacts_dir())
        dispatcher = Dispatcher(sessions=session_factory(engine), cluster=Cluster(),
                                tracker=tracker, poll_interval_s=0.2)
        stop = threading.Event()
        threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True).start()
        with served(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as http:
            yield http, tracker
        stop.set()
        engine.dispose()
