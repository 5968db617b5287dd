"""Whether the service's dependencies answer (GET /readyz): the database, Ray and MLflow.

Each check says "ok" or why not, in a few seconds at most. The API process has no Ray
and no MLflow library (`crossfold api` runs apart from the dispatcher), so:
- the database: `SELECT 1`;
- Ray: the dispatcher, the one process that talks to Ray, publishes the cluster's alive
  nodes every 2 s (services.capacity.publish). Ray answers when some dispatcher saw the
  nodes within the lease (CROSSFOLD_LEASE_S): past it, Ray or every dispatcher is stuck
  or gone, and either way no fold starts. The API cannot tell which; its answer says so;
- MLflow: a server (http:// or https://) is asked for its `/health`, which answers
  without a login even behind MLflow's basic-auth app; a local SQLite store is opened
  read-only. Other tracking URIs are not checked, and say so.
Answers are cached for `max_age_s` (Readiness), so that frequent probes, from several
load balancers say, do not each reach every dependency.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from services.database import reason
from services.models import ClusterNode
from services.public_errors import public_message

OK = "ok"
PROBE_TIMEOUT_S = 2.0
UNKNOWN_RAY = "unknown: the database, where dispatchers record the cluster, cannot be reached"


def database_status(sessions: sessionmaker[Session]) -> str:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except DBAPIError as error:
        return f"unreachable: {public_message(reason(error))}"
    return OK


def ray_status(sessions: sessionmaker[Session], *, within_s: float) -> str:
    """OK when a dispatcher saw the Ray cluster's nodes in the last `within_s` seconds."""
    try:
        with sessions() as session:
            seen = session.scalar(select(func.max(ClusterNode.seen_at)))
    except DBAPIError:
        return UNKNOWN_RAY
    if seen is None:
        return "no dispatcher has seen the Ray cluster yet"
    age = (datetime.now(timezone.utc) - seen).total_seconds()
    if age > within_s:
        return f"no dispatcher has seen the Ray cluster for {age:.0f} s"
    return OK


def mlflow_status(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return mlflow_server_status(tracking_uri, timeout_s)
    if tracking_uri.startswith("sqlite:"):
        return sqlite_store_status(tracking_uri, timeout_s)
    scheme = tracking_uri.split(":", 1)[0]
    return f"{OK} (not checked: a {scheme} tracking URI)"


def mlflow_server_status(uri: str, timeout_s: float) -> str:
    try:
        answer = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except httpx.HTTPError as error:
        # The reason without the server's address: /readyz needs no key (the log has it all).
        return f"unreachable: {public_message(str(error) or type(error).__name__)}"
    if answer.status_code != 200:
        return f"its /health answered {answer.status_code}"
    return OK


def sqlite_store_status(uri: str, timeout_s: float) -> str:
    """The local store opens read-only (never created here) and holds MLflow's tables."""
    path = Path(make_url(uri).database or "")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=timeout_s)) as store:
            store.execute("SELECT 1 FROM experiments LIMIT 1")
    except sqlite3.Error as error:
        return f"the local MLflow store cannot be read: {error}"
    return OK


def is_ok(status: str) -> bool:
    return status.startswith(OK)


class Readiness:
    """The checks' answers, computed at most once per `max_age_s`: callers meanwhile (and
    those that wait while it is computed) get the same answer."""

    def __init__(self, checks: Callable[[], dict[str, str]], max_age_s: float = 1.0):
        self.checks, self.max_age_s = checks, max_age_s
        self.answer: dict[str, str] = {}
        self.computed_at = float("-inf")
        self.lock = threading.Lock()

    def current(self) -> dict[str, str]:
        with self.lock:
            if time.monotonic() - self.computed_at >= self.max_age_s:
                self.answer = self.checks()
                self.computed_at = time.monotonic()
            return self.answer


def service_checks(sessions: sessionmaker[Session], *, tracking_uri: str, lease_s: float
                   ) -> Callable[[], dict[str, str]]:
    """The service's three checks, by the name /readyz reports them under."""
    def check() -> dict[str, str]:
        database = database_status(sessions)
        # Without the database, Ray's state (kept there) is unknown: not asked again, which
        # would wait for a second connect timeout behind a network cut.
        ray = ray_status(sessions, within_s=lease_s) if database == OK else UNKNOWN_RAY
        return {"database": database, "ray": ray, "mlflow": mlflow_status(tracking_uri)}
    return check
