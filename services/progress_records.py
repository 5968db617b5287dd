"""Storing the progress that running folds report on the board: their starts (with the
node each attempt ran on) and their epochs, into the database and MLflow.

A tick stores everything at once: one MLflow call per run (services.tracking.RunWrites),
then one commit, whatever the number of epochs, since a big cluster's folds report
thousands a second (bench/progress_throughput.py).
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.cluster import Cluster
from services.lifecycle import move_fold
from services.metrics import observe_progress_lag
from services.models import Fold
from services.run_records import record_best
from services.states import FINISHED_FOLD, FoldStatus
from services.tracking import RunWrites, Tracker
from workers.events import EpochEnded, FoldStarted

# A tick stores at most this many progress events, shared out evenly between jobs: a job
# reporting thousands of tiny epochs is stored over several ticks, each short (commits,
# cancellations and claims come in between), not in one that holds up everything else.
MAX_EVENTS_PER_TICK = 2000


def store_progress(session: Session, cluster: Cluster, tracker: Tracker, job_ids: list[str]) -> None:
    """The events the board holds for these jobs (at most MAX_EVENTS_PER_TICK), stored
    and then acknowledged."""
    pending = cluster.pending_progress(job_ids, limit=MAX_EVENTS_PER_TICK)
    if not pending:
        return
    folds = folds_of(session, list(pending))
    writes = RunWrites()
    for event in (event for events in pending.values() for event in events):
        fold = folds.get((event.job_id, event.fold))
        if fold is None or fold.status in FINISHED_FOLD:
            continue  # a late event from a fold that has already ended
        if isinstance(event, FoldStarted):
            mark_started(fold, event, writes)
        elif isinstance(event, EpochEnded):
            record_epoch(fold, event, writes)
    # MLflow, then the database, then the board: should anything fail midway, the events
    # are read again and stored again, which changes nothing (MLflow is given the same
    # metrics: services.tracking.RunWrites; see mark_started, record_epoch).
    tracker.write(writes)
    session.commit()
    observe_progress_lag(pending)  # how late it is stored (services.metrics)
    cluster.acknowledge_progress({job_id: len(events) for job_id, events in pending.items()})


def folds_of(session: Session, job_ids: list[str]) -> dict[tuple[str, int], Fold]:
    """These jobs' folds by (job id, index), in one query, not one per event."""
    folds = session.scalars(select(Fold).where(Fold.job_id.in_(job_ids)))
    return {(fold.job_id, fold.index): fold for fold in folds}


def mark_started(fold: Fold, event: FoldStarted, writes: RunWrites) -> None:
    if fold.status is FoldStatus.RUNNING and fold.worker == event.worker:
        return  # this attempt's start, already recorded
    if fold.status is FoldStatus.RUNNING:
        # Started again: its worker died and Ray retried the task.
        move_fold(fold, FoldStatus.PENDING)
    move_fold(fold, FoldStatus.RUNNING)
    fold.worker = event.worker
    attempt = {"attempt": fold.attempts, "node": event.node, "resumed_after_epoch": event.resumed_after_epoch}
    fold.nodes = [*(fold.nodes or []), attempt]  # a new list: SQLAlchemy sees the change
    if event.node:
        writes.tag(fold.mlflow_run_id, "crossfold.node", event.node)  # the latest attempt's
        writes.tag(fold.mlflow_run_id, f"crossfold.attempt_{fold.attempts}_node", event.node)
    if fold.attempts > 1:
        writes.tag(fold.mlflow_run_id, f"crossfold.attempt_{fold.attempts}_resumed_after_epoch",
                   str(event.resumed_after_epoch))


def record_epoch(fold: Fold, event: EpochEnded, writes: RunWrites) -> None:
    if fold.status is FoldStatus.PENDING:
        move_fold(fold, FoldStatus.RUNNING)
    if event.epoch <= fold.epoch:
        # A retried fold re-ran an epoch already recorded (it had passed its last
        # checkpoint when its worker died): keep the first record, log no duplicate.
        return
    metrics = event.metrics
    fold.epoch = event.epoch
    fold.train_loss, fold.val_loss = metrics["train_loss"], metrics.get("val_loss")  # none in a refit
    fold.val_accuracy = metrics.get("val_accuracy")  # None for regression
    if event.best_epoch == event.epoch:  # the best so far: shown beside the latest
        record_best(fold, event.epoch, metrics)
    writes.epoch(fold.mlflow_run_id, event.epoch, metrics, event.time_ms)
