"""Shared fixtures: real databases (SQLite and PostgreSQL), one local Ray per session,
real MLflow stores in temporary folders."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from services.database import make_engine, session_factory, upgrade_schema
from services.settings import Settings

POSTGRES_ADMIN = os.environ.get("CROSSFOLD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_available() -> bool:
    try:
        psycopg.connect(POSTGRES_ADMIN, connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A new, empty database of this kind; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'jobs.db'}"
        return
    if not postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and is not reachable at {POSTGRES_ADMIN}")
        pytest.skip("PostgreSQL not reachable")
    name = f"crossfold_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def small_job(**overrides) -> dict:
    """A job that trains in seconds: iris, 3 folds, a small MLP."""
    spec = {"name": "iris-test", "dataset": "iris",
            "model": {"type": "mlp", "hidden": [16], "batch_norm": True, "dropout": 0.1},
            "optimizer": {"name": "adam", "lr": 0.01}, "batch_size": 16, "max_epochs": 15,
            "early_stopping": {"patience": 5}, "cv": {"folds": 3, "seed": 0}}
    spec.update(overrides)
    return spec
