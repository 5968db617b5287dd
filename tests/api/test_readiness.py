"""GET /readyz: ok when the database, Ray (as a dispatcher last saw it) and MLflow answer;
503 naming each one that does not, and why. Without Ray: a dispatcher's look at the
cluster is a row of cluster_nodes (services.capacity.publish), written here as it writes
it; MLflow's server is a small HTTP server that answers /health as MLflow's does. The
whole service, with a real dispatcher, is in tests/test_observability.py."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fastapi.testclient import TestClient

from api.main import create_app
from services.capacity import NodeShape, publish
from services.database import make_engine, session_factory
from services.models import ClusterNode
from tests.helpers import free_port


@contextmanager
def health_server(status: int):
    """An HTTP server whose /health answers `status`, as an MLflow server's does."""
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def api(settings, sessions, **overrides):
    app = create_app(settings.model_copy(update=overrides), sessions)
    app.state.readiness.max_age_s = 0  # every request checks again
    with TestClient(app) as client:
        yield client


def seen_cluster(sessions, ago_s: float = 0.0) -> None:
    with sessions() as session:
        publish(session, [NodeShape("node-a", 2, 0)])
        if ago_s:
            for node in session.query(ClusterNode):
                node.seen_at = datetime.now(timezone.utc) - timedelta(seconds=ago_s)
            session.commit()


def test_ready_when_the_database_the_cluster_and_mlflow_answer(settings, sessions):
    seen_cluster(sessions)
    with health_server(200) as mlflow, api(settings, sessions, mlflow_tracking_uri=mlflow) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "database": "ok", "ray": "ok", "mlflow": "ok"}


def test_no_dispatcher_has_seen_the_cluster(settings, sessions):
    with health_server(200) as mlflow, api(settings, sessions, mlflow_tracking_uri=mlflow) as client:
        never = client.get("/readyz")
        seen_cluster(sessions, ago_s=75)  # older than the lease (30 s): every dispatcher is gone or stuck
        stale = client.get("/readyz")
    assert never.status_code == 503 and never.headers["Retry-After"]
    assert never.json() == {"status": "unavailable", "database": "ok", "mlflow": "ok",
                            "ray": "no dispatcher has seen the Ray cluster yet"}
    assert stale.status_code == 503
    assert stale.json()["ray"] == "no dispatcher has seen the Ray cluster for 75 s"


def test_mlflow_that_does_not_answer_is_named(settings, sessions):
    seen_cluster(sessions)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with api(settings, sessions, mlflow_tracking_uri=dead) as client:
        refused = client.get("/readyz")
    with health_server(503) as failing, api(settings, sessions, mlflow_tracking_uri=failing) as client:
        unhealthy = client.get("/readyz")
    assert refused.status_code == 503
    body = refused.json()
    assert body["database"] == "ok" and body["ray"] == "ok"
    assert body["mlflow"].startswith("unreachable: ") and "127.0.0.1" not in body["mlflow"], body
    assert unhealthy.status_code == 503 and unhealthy.json()["mlflow"] == "its /health answered 503"


def test_the_local_mlflow_store_is_opened_not_created(settings, sessions):
    """The embedded default: a SQLite MLflow store, read-only; one not made yet is named."""
    from services.tracking import Tracker
    seen_cluster(sessions)
    with api(settings, sessions) as client:
        missing = client.get("/readyz")
        assert not (settings.data_dir / "mlflow.db").exists()  # the probe did not create it
        Tracker(tracking_uri=settings.resolved_tracking_uri(), artifacts_dir=settings.artifacts_dir()).ensure_store()
        made = client.get("/readyz")
    assert missing.status_code == 503
    assert missing.json()["mlflow"] == "the local MLflow store cannot be read: unable to open database file"
    assert made.status_code == 200, made.json()


def test_an_unreachable_database_is_named(settings, database_url, tmp_path):
    """A database that cannot be reached: its reason, with no address; Ray's state, kept in
    that database, is unknown."""
    if database_url.startswith("postgresql"):
        dead_url = f"postgresql://postgres@127.0.0.1:{free_port()}/crossfold"  # nothing listens
    else:
        (tmp_path / "a-folder").mkdir()
        dead_url = f"sqlite:///{tmp_path / 'a-folder'}"  # a folder is no database
    engine = make_engine(dead_url)
    app = create_app(settings, session_factory(engine))
    client = TestClient(app)  # not started: its start-up would need the database
    answer = client.get("/readyz")
    engine.dispose()
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unavailable"
    assert body["database"].startswith("unreachable: ") and "127.0.0.1" not in body["database"], body
    assert body["ray"].startswith("unknown: ")


def test_readyz_needs_no_key(settings, sessions):
    """As /healthz: load balancers and orchestrators probe without a key."""
    with api(settings, sessions, auth_required=True) as client:
        assert client.get("/readyz").status_code in (200, 503)
        assert client.get("/jobs").status_code == 401
