"""Starting the service's processes: the API, the dispatcher, the MLflow UI, or all three."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit
from urllib.request import urlopen

import uvicorn

from api import watchdog
from api.main import create_app
from services.database import make_engine, session_factory, upgrade_schema
from services.dataset_store import DatasetStore
from services.datasets import register_bundled
from services.metrics import serve_dispatcher_metrics
from services.settings import Settings
from services.wakeups import Wakeup

log = logging.getLogger("crossfold")
PORT_WAIT_S = 5.0  # a port in use may be a killed service's child that its watchdog is ending


class PortInUse(RuntimeError):
    """Something else answers on a port the service must own."""


def build_dispatcher(settings: Settings):
    # Imported here: the API alone (`crossfold api`) needs neither Ray nor MLflow.
    from services.cluster import Cluster
    from services.dispatcher import Dispatcher
    from services.tracking import Tracker

    settings.export_s3_credentials()  # before the stores open and a local Ray starts (inherits them)
    engine = make_engine(settings.resolved_database_url())
    upgrade_schema(engine)
    sessions = session_factory(engine)
    store = DatasetStore(settings.resolved_dataset_store())
    with sessions() as session:  # as the API does: either may start first
        register_bundled(session=session, store=store)
    tracker = Tracker(tracking_uri=settings.resolved_tracking_uri(),
                      artifacts_dir=settings.artifacts_dir(), access=mlflow_access(settings))
    tracker.ensure_store()
    cluster = Cluster(checkpoints=settings.resolved_checkpoint_store(), address=settings.ray_address,
                      max_retries=settings.fold_max_retries)
    return Dispatcher(sessions=sessions, cluster=cluster, tracker=tracker, store=store,
                      max_active_jobs=settings.max_active_jobs, poll_interval_s=settings.poll_interval_s,
                      cluster_can_grow=settings.cluster_can_grow,
                      lease_s=settings.lease_s, limits=settings.default_limits())


def mlflow_access(settings: Settings):
    """The MLflow server's basic-auth, when it runs it (CROSSFOLD_MLFLOW_AUTH)."""
    if not settings.mlflow_auth:
        return None
    from services.mlflow_access import MlflowAccess
    return MlflowAccess(settings.resolved_tracking_uri())


def run_api(settings: Settings, workers: int = 1, wakeup: Wakeup | None = None) -> None:
    """`wakeup`: that of a dispatcher in this process, woken by each submission."""
    if workers > 1:
        # Several processes: each builds its own app from the same environment.
        uvicorn.run("api.main:create_app", factory=True, host=settings.api_host,
                    port=settings.api_port, workers=workers, log_level="warning")
    else:
        uvicorn.run(create_app(settings, wakeup=wakeup), host=settings.api_host, port=settings.api_port,
                    log_level="warning")


def run_dispatcher(settings: Settings) -> None:
    stop = threading.Event()
    if settings.dispatcher_metrics_port is not None:
        ensure_free("0.0.0.0", settings.dispatcher_metrics_port, "the dispatcher's metrics",
                    "CROSSFOLD_DISPATCHER_METRICS_PORT")
        serve_dispatcher_metrics(settings.dispatcher_metrics_port)
    try:
        build_dispatcher(settings).run_forever(stop)
    except KeyboardInterrupt:
        stop.set()


def ensure_free(host: str, port: int, what: str, setting: str, wait_s: float = PORT_WAIT_S) -> None:
    """Raise PortInUse, naming the port and the setting that moves it, if another process
    listens there (after `wait_s`): never show or serve through someone else's."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as probe:
            # As servers bind: a closed connection lingering in TIME_WAIT does not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise PortInUse(f"{what}: port {port} on {host} is already in use by another "
                                    f"process; stop it, or set {setting} to another port") from None
        time.sleep(0.2)


def ui_address(settings: Settings) -> tuple[str, int]:
    address = urlsplit(settings.mlflow_ui_url)
    return address.hostname, address.port or 80


@contextmanager
def mlflow_ui(settings: Settings) -> Iterator[None]:
    """Run `mlflow server` on the local store for as long as the block lasts."""
    host, port = ui_address(settings)
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", settings.resolved_tracking_uri(),
               "--default-artifact-root", settings.artifacts_dir().as_uri(),
               "--host", host, "--port", str(port), "--workers", "1"]
    log_path = settings.data_dir.resolve() / "mlflow-ui.log"
    # Its own process group: `mlflow server` starts helper processes of its own, and
    # all of them must stop with it.
    with open(log_path, "ab") as output:
        ui = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=announce_ui, args=(ui, settings.mlflow_ui_url, log_path), daemon=True).start()
    try:
        yield
    finally:
        stop_group(ui)


def announce_ui(ui: subprocess.Popen, url: str, log_path: Path, timeout_s: float = 120) -> None:
    """Say where the MLflow UI is once it answers there, or why it stopped."""
    deadline = time.monotonic() + timeout_s
    while ui.poll() is None and time.monotonic() < deadline:
        try:
            with urlopen(f"{url.rstrip('/')}/health", timeout=2):
                log.warning("MLflow UI on %s", url)
                return
        except OSError:
            time.sleep(0.5)
    tail = log_path.read_text(errors="replace").splitlines()[-5:]
    log.error("the MLflow UI did not start (%s); its log, %s, ends with:\n%s",
              f"exit status {ui.returncode}" if ui.returncode is not None else "no answer",
              log_path, "\n".join(tail))


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
    """The embedded service: API, dispatcher (in a thread), local Ray, MLflow UI. Raises
    PortInUse, before starting anything, when the API's or the UI's port is taken."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with_ui = with_ui and not settings.mlflow_tracking_uri  # an MLflow server has its own UI
    ensure_free(settings.api_host, settings.api_port, "the API", "CROSSFOLD_API_PORT")
    if with_ui:
        ensure_free(*ui_address(settings), "the MLflow UI", "CROSSFOLD_MLFLOW_UI_URL")
    # Kept open, never written: when this process ends, however it ends, the watchdog
    # ends Ray's processes and the MLflow UI it started.
    watchdog.start(os.getpid(), settings.data_dir.resolve() / "watchdog.log")
    dispatcher = build_dispatcher(settings)  # creates the MLflow store before the UI opens it
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True,
                              name="dispatcher")
    thread.start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: make that a clean
    # exit (0) that runs the clean-up below, whatever handler Ray installed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # The API wakes the dispatcher when a job is submitted: it starts without waiting
        # for its poll, on SQLite too (services.wakeups).
        if with_ui:
            with mlflow_ui(settings):
                run_api(settings, wakeup=dispatcher.wakeup)
        else:
            run_api(settings, wakeup=dispatcher.wakeup)
    finally:
        stop.set()
        thread.join(timeout=10)
