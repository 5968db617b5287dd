"""Helpers the tests share (fixtures live in conftest.py): the small job, real databases,
waiting for something to happen, free ports, storing a job without HTTP."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import uvicorn

from services.models import LOCAL_OWNER, Job
from services.spec import JobSpec
from services.states import FINISHED_JOB
from services.submissions import prepare, store

POSTGRES_ADMIN = os.environ.get("CROSSFOLD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
FINISHED = {status.value for status in FINISHED_JOB}


def small_job(**overrides) -> dict:
    """A job that trains in seconds: iris, 3 folds, a small MLP."""
    spec = {"name": "iris-test", "dataset": "iris",
            "model": {"type": "mlp", "hidden": [16], "batch_norm": True, "dropout": 0.1},
            "optimizer": {"name": "adam", "lr": 0.01}, "batch_size": 16, "max_epochs": 15,
            "early_stopping": {"patience": 5}, "cv": {"folds": 3, "seed": 0}}
    spec.update(overrides)
    return spec


def store_job(session, spec: dict | JobSpec, owner: str = LOCAL_OWNER) -> Job:
    """Queue a job as POST /jobs does (services.submissions), without HTTP."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    outcome = store(session, [prepare(spec, owner)])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome[0]


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s")


def wait_until_finished(http, job_id: str, timeout: float = 180) -> dict:
    return wait_for(lambda: (job := http.get(f"/jobs/{job_id}").json())["status"] in FINISHED
                    and job, timeout)


@contextmanager
def served(app):
    """The app on a real uvicorn server on a free loopback port, for concurrent clients."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           limit_concurrency=500))
    threading.Thread(target=server.run, daemon=True).start()
    wait_for(lambda: server.started, 30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                    "(apt-get install -y chromium)")


def render(url: str, *, screenshot: Path | None = None, offline: bool = True, wait_ms: int = 15000) -> str:
    """The page's DOM once its scripts have run, in headless Chromium, as a person would
    see it; `offline`: every host but loopback fails to resolve, as on an air-gapped
    cluster. With `screenshot`, a PNG of the page too."""
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
               f"--virtual-time-budget={wait_ms}"]
    if offline:
        browser.append("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    if screenshot is not None:
        subprocess.run([*browser, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
