"""Starting the service's processes: the API, the dispatcher, the MLflow UI, or all three."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import uvicorn

from api.main import create_app
from services.database import make_engine, session_factory, upgrade_schema
from services.settings import Settings

log = logging.getLogger("crossfold")


def build_dispatcher(settings: Settings):
    # Imported here: the API alone (`crossfold api`) needs neither Ray nor MLflow.
    from services.cluster import Cluster
    from services.dispatcher import Dispatcher
    from services.tracking import Tracker

    engine = make_engine(settings.resolved_database_url())
    upgrade_schema(engine)
    tracker = Tracker(tracking_uri=settings.resolved_tracking_uri(),
                      artifacts_dir=settings.artifacts_dir())
    tracker.ensure_store()
    cluster = Cluster(address=settings.ray_address, max_retries=settings.fold_max_retries)
    return Dispatcher(sessions=session_factory(engine), cluster=cluster, tracker=tracker,
                      max_active_jobs=settings.max_active_jobs, poll_interval_s=settings.poll_interval_s,
                      lease_s=settings.lease_s)


def run_api(settings: Settings, workers: int = 1) -> None:
    if workers > 1:
        # Several processes: each builds its own app from the same environment.
        uvicorn.run("api.main:create_app", factory=True, host=settings.api_host,
                    port=settings.api_port, workers=workers, log_level="warning")
    else:
        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                    log_level="warning")


def run_dispatcher(settings: Settings) -> None:
    stop = threading.Event()
    try:
        build_dispatcher(settings).run_forever(stop)
    except KeyboardInterrupt:
        stop.set()


@contextmanager
def mlflow_ui(settings: Settings) -> Iterator[None]:
    """Run `mlflow server` on the local store for as long as the block lasts."""
    host, port = settings.mlflow_ui_url.removeprefix("http://").rstrip("/").split(":")
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", settings.resolved_tracking_uri(),
               "--default-artifact-root", settings.artifacts_dir().as_uri(),
               "--host", host, "--port", port, "--workers", "1"]
    # Its own process group: `mlflow server` starts helper processes of its own, and
    # all of them must stop with it.
    ui = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    log.warning("MLflow UI on %s", settings.mlflow_ui_url)
    try:
        yield
    finally:
        stop_group(ui)


def stop_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM a process group, then SIGKILL it if it is still there after `grace_s`."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def serve(settings: Settings, *, with_ui: bool = True) -> None:
    """The embedded service: API, dispatcher (in a thread), local Ray, MLflow UI."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    dispatcher = build_dispatcher(settings)  # creates the MLflow store before the UI opens it
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True,
                              name="dispatcher")
    thread.start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: make that a clean
    # exit (0) that runs the clean-up below, whatever handler Ray installed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if with_ui and not settings.mlflow_tracking_uri:
            with mlflow_ui(settings):
                run_api(settings)
        else:
            run_api(settings)
    finally:
        stop.set()
        thread.join(timeout=10)
