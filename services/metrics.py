"""What the service tells Prometheus (GET /metrics, and a dispatcher's own port).

Two sources:
- the database, read at each scrape (StoreMetrics): jobs by status, the queue's depth,
  the folds running, and how long finished folds took (from each fold's started_at and
  finished_at). Every API process reads the same rows, so they all answer alike, and a
  restart loses nothing: the histogram's counts only grow, as Prometheus expects;
- the dispatcher's process (DISPATCHER): how long its ticks take, and how late the
  progress it stores is. Only a dispatcher sees these. `crossfold serve` runs one in
  the API's process, whose /metrics shows them; a `crossfold dispatcher` process serves
  them itself on CROSSFOLD_DISPATCHER_METRICS_PORT (serve_dispatcher_metrics).
The names and labels hold counts and times only: no owner, no job name.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, extract, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from services.models import Fold, Job
from services.states import FINISHED_FOLD, FoldStatus, JobStatus
from workers.events import EpochEnded

# A fold runs for seconds (iris) to hours; a tick takes milliseconds, seconds when it
# logs results to MLflow; progress is stored within a poll interval or two.
FOLD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

DISPATCHER = CollectorRegistry()
TICK_SECONDS = Histogram("crossfold_dispatcher_tick_seconds", "How long one dispatcher tick took",
                         buckets=TICK_BUCKETS, registry=DISPATCHER)
PROGRESS_LAG_SECONDS = Histogram(
    "crossfold_progress_lag_seconds",
    "Per epoch stored: from its end on its worker (that node's clock) to its storage", buckets=LAG_BUCKETS,
    registry=DISPATCHER)


def observe_progress_lag(pending: dict[str, list]) -> None:
    """The dispatcher has just stored these events (job id → its events)."""
    now_ms = time.time() * 1000
    for event in (event for events in pending.values() for event in events):
        if isinstance(event, EpochEnded):
            PROGRESS_LAG_SECONDS.observe(max(0.0, (now_ms - event.time_ms) / 1000))


def serve_dispatcher_metrics(port: int, host: str = "0.0.0.0"):
    """A dispatcher in its own process: its metrics on http://host:port/metrics (every
    address by default: Prometheus scrapes from another machine), from a thread of
    prometheus_client's. Returns the server (shutdown() stops it)."""
    server, _ = start_http_server(port, addr=host, registry=DISPATCHER)
    return server


class StoreMetrics:
    """A Prometheus collector that reads the database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield jobs_by_status(session)
            yield GaugeMetricFamily("crossfold_queue_depth", "Queued jobs a dispatcher could start now "
                                    "(not waiting for a retry or for the cluster to grow)",
                                    value=queue_depth(session))
            yield GaugeMetricFamily("crossfold_folds_running", "Folds running now",
                                    value=session.scalar(select(func.count()).where(
                                        Fold.status == FoldStatus.RUNNING)))
            yield fold_durations(session)


def jobs_by_status(session: Session) -> GaugeMetricFamily:
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    family = GaugeMetricFamily("crossfold_jobs", "Jobs by status", labels=["status"])
    for status in JobStatus:
        family.add_metric([status.value], counts.get(status, 0))
    return family


def queue_depth(session: Session) -> int:
    now = datetime.now(timezone.utc)
    return session.scalar(select(func.count()).where(
        Job.status == JobStatus.QUEUED, or_(Job.not_before.is_(None), Job.not_before <= now)))


def fold_durations(session: Session) -> HistogramMetricFamily:
    """Finished folds by status, from their first start to their end (retries included),
    counted into buckets by the database in one query."""
    seconds = seconds_between(session, Fold.started_at, Fold.finished_at)
    rows = session.execute(
        select(Fold.status, func.count(), func.sum(seconds),
               *(func.sum(case((seconds <= bound, 1), else_=0)) for bound in FOLD_BUCKETS))
        .where(Fold.status.in_(FINISHED_FOLD), Fold.started_at.is_not(None), Fold.finished_at.is_not(None))
        .group_by(Fold.status))
    family = HistogramMetricFamily("crossfold_fold_duration_seconds",
                                   "How long finished folds ran, by how they ended", labels=["status"])
    for status, count, total, *in_buckets in rows:
        buckets = [(str(float(bound)), int(n)) for bound, n in zip(FOLD_BUCKETS, in_buckets)]
        family.add_metric([status.value], [*buckets, ("+Inf", count)], float(total or 0.0))
    return family


def seconds_between(session: Session, start, end):
    """`end - start` in seconds, in SQL: SQLite has no interval type."""
    if session.get_bind().dialect.name == "postgresql":
        return extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def registry_for(sessions: sessionmaker[Session], *, with_dispatcher: bool) -> CollectorRegistry:
    """An API process's metrics: the database's, and its dispatcher's when one runs in it."""
    registry = CollectorRegistry(auto_describe=False)  # described at scrape time, not here
    registry.register(StoreMetrics(sessions))
    if with_dispatcher:
        registry.register(Forwarded(DISPATCHER))
    return registry


class Forwarded:
    """Another registry's metrics, as one collector."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The metrics and their content type, in the format the scraper accepts: Prometheus's
    text format (0.0.4) unless it asks for OpenMetrics."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
