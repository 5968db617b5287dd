"""Helpers the tests share (fixtures live in conftest.py): the small job, real databases,
waiting for something to happen, free ports, storing a job without HTTP."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
from services.job_data import resolve
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


def submission(session, spec: dict | JobSpec, owner: str = LOCAL_OWNER, key: str | None = None):
    """A job ready to store, as POST /jobs prepares it: checked against its data."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    return prepare(spec, resolve(spec, session=session, owner=owner), owner, key)


def store_job(session, spec: dict | JobSpec, owner: str = LOCAL_OWNER) -> Job:
    """Queue a job as POST /jobs does (services.submissions), without HTTP."""
    outcome = store(session, [submission(session, spec, owner)])[0]
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


class PrivatePostgres:
    """A PostgreSQL server of the test's own, in a temporary folder, to stop and start
    for real (the shared one at 127.0.0.1:5432 serves every other test). It runs as the
    `postgres` user when the tests run as root, since PostgreSQL refuses root; its folder
    is then one that user can reach (pytest's own are private to root)."""

    def __init__(self):
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="crossfold-postgres-")), free_port()
        self.data = self.folder / "pgdata"
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @staticmethod
    def available() -> str | None:
        """Why it cannot run here, or None."""
        if shutil.which("pg_ctl") is None or shutil.which("initdb") is None:
            return "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
        if os.geteuid() == 0 and (shutil.which("runuser") is None or not user_exists("postgres")):
            return "running as root without a postgres user to run PostgreSQL as"
        return None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg(self, *args: str) -> None:
        subprocess.run([*self.user, *args], check=True, capture_output=True, timeout=120)

    def create(self) -> "PrivatePostgres":
        if self.user:
            shutil.chown(self.folder, "postgres")
        self.pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        return self.start()

    def remove(self) -> None:
        subprocess.run([*self.user, "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> "PrivatePostgres":
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self.pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")
        return self

    def crash(self) -> None:
        """As a crash: no checkpoint, every connection dropped at once."""
        self.pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


def user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextmanager
def running_service(database_url: str, folder: Path, lease_s: float = 30.0, poll_interval_s: float = 0.2,
                    share_wakeup: bool = True, api_database_url: str | None = None, **overrides):
    """The whole service in this process: the HTTP API (real uvicorn) → the database → a
    dispatcher → the test session's Ray → an MLflow store in `folder`. Yields (HTTP
    client, tracker, dispatcher). `share_wakeup`: the API wakes the dispatcher in-process,
    as `crossfold serve` does; False: as an API in another process (PostgreSQL's NOTIFY,
    or the poll alone on SQLite). `api_database_url`: the API's own, when it must connect
    otherwise than the dispatcher (the same database). `overrides`: more settings."""
    import httpx

    from api.main import create_app
    from services.cluster import Cluster
    from services.database import make_engine, session_factory, upgrade_schema
    from services.dataset_store import DatasetStore
    from services.dispatcher import Dispatcher
    from services.settings import Settings
    from services.tracking import Tracker
    settings = Settings(data_dir=folder, database_url=api_database_url or database_url, poll_interval_s=0.2,
                        lease_s=lease_s, **overrides)
    engine = make_engine(database_url)
    upgrade_schema(engine)
    tracker = Tracker(tracking_uri=settings.resolved_tracking_uri(), artifacts_dir=settings.artifacts_dir())
    cluster = Cluster(checkpoints=settings.resolved_checkpoint_store())
    dispatcher = Dispatcher(sessions=session_factory(engine), cluster=cluster, tracker=tracker,
                            store=DatasetStore(settings.resolved_dataset_store()),
                            max_active_jobs=settings.max_active_jobs, poll_interval_s=poll_interval_s,
                            lease_s=lease_s, cluster_can_grow=settings.cluster_can_grow)
    stop = threading.Event()
    threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True).start()
    try:
        app = create_app(settings, wakeup=dispatcher.wakeup if share_wakeup else None)
        with served(app) as base, httpx.Client(base_url=base, timeout=30) as http:
            yield http, tracker, dispatcher
    finally:
        stop.set()
        engine.dispose()


@contextmanager
def mlflow_server(folder: Path, port: int, auth_config: Path | None = None, *,
                  backend_store: str | None = None, workers: int = 1, startup_s: float = 90) -> Iterator[str]:
    """A real `mlflow server` on loopback (a SQLite store in `folder`, or `backend_store`,
    say postgresql+psycopg://...; artifacts proxied to `folder`), with its basic-auth app
    when given its config; yields its URL once it answers."""
    import requests
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_store or f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--workers", str(workers)]
    # MLflow's job runner (GenAI jobs, unused here) is seven more processes to start, and
    # they outlived the server's own termination.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    if auth_config is not None:
        command[4:4] = ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_config), MLFLOW_FLASK_SERVER_SECRET_KEY="tests")
    # A session of its own: the server and its worker processes are stopped together.
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or still starting
            return False
    try:
        wait_for(healthy, startup_s, 0.5)
        yield url
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """Stop a process started in a session of its own, and every process of its group."""
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(process, signal.SIGKILL)  # those that did not stop when asked, if any
    process.wait(timeout=grace_s)


def signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:  # the whole group has ended
        pass
