"""The dispatcher: claims queued jobs, runs their folds on Ray, records what comes back.

One loop, one thread. Each tick it (1) claims new jobs while it has room, (2) applies
progress reported by running folds, (3) collects finished folds, and finishes a job
once all its folds have ended, (4) carries out cancellations. It is the only writer
of job state once a job is running. Between ticks it waits (pause) for its poll interval
at most: a job submitted, a cancel requested or a fold task that returns wakes it sooner.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from services.capacity import Need, publish, refusal, room
from services.cluster import Cluster
from services.database import Reachability, unreachable
from services.dataset_store import DatasetStore
from services.job_endings import cancel_leftover_folds, close_job, outcome_of, record_fold_result
from services.job_runs import create_runs
from services.job_data import JobData, resolve
from services.job_inputs import check_stored_file, source_of, split_plans_cached
from services.lifecycle import (adopt_orphaned_job, claim_next_job, hold_leases, move_fold, move_job, now,
                                put_back, renew_leases)
from services.metrics import TICK_SECONDS
from services.models import Job
from services.progress_records import store_progress
from services.quotas import Limits, limits_of, runtime_of
from services.results import fold_table
from services.spec import JobSpec
from services.states import FINISHED_FOLD, FoldStatus, JobStatus
from services.study_runs import finish_if_done
from services.sweeps import Sweeps, first_line
from services.settings import get_settings
from services.tick_pause import TickPause
from services.tracking import Tracker, transient
from services.wakeups import Wakeup, listener_for
from workers.plans import FoldPlan
from workers.results import Ending, FoldResult

log = logging.getLogger(__name__)


START_BACKOFF_S = 5.0  # a start that failed for a passing reason is tried again after this,
MAX_START_BACKOFF_S = 300.0  # doubling each time up to this,
MAX_START_ATTEMPTS = 8  # this many times (10 minutes of outage) before the job fails
NODES_EVERY_S = 2.0  # how often the cluster's nodes are looked at (and published for the API)
NODES_WAIT_S = 10.0  # how long a job no node can run waits before it is looked at again

@dataclass
class ActiveJob:
    """A running job's Ray handles, kept in memory by the dispatcher that runs it."""
    job_id: str
    deadline: datetime | None = None  # its max_runtime_s from its start
    tasks: dict[object, list[int]] = field(default_factory=dict)  # Ray task → its fold indices
    cancelling: bool = False
    ran_out: str | None = None  # why it was stopped at its deadline


class LeaseLost(RuntimeError):
    """Another dispatcher adopted a job while this one was still writing it."""


class Dispatcher:
    def __init__(self, *, sessions: sessionmaker[Session], cluster: Cluster, tracker: Tracker,
                 store: DatasetStore, max_active_jobs: int | None = None, poll_interval_s: float = 0.5,
                 lease_s: float = 30.0, limits: Limits | None = None,
                 start_backoff_s: float = START_BACKOFF_S, cluster_can_grow: bool = False,
                 wakeup: Wakeup | None = None):
        """`limits`: the owners' default limits (services.quotas), the settings' by default.
        `max_active_jobs`: a bound on the jobs this dispatcher runs at once, besides the
        cluster's room (services.capacity); None: none. `cluster_can_grow`: an autoscaler
        adds nodes, so a job no node can run yet waits instead of failing.
        `wakeup`: ends the wait between ticks (services.wakeups); the API's, when both run
        in one process. On PostgreSQL, its listener wakes it too (run_forever)."""
        self.wakeup, self.listener = wakeup or Wakeup(), None
        self.ticks = 0  # ticks run so far: how often it woke (tests read it)
        self.cluster_can_grow = cluster_can_grow
        self.nodes_seen_at, self.nodes, self.total = float("-inf"), [], Need(0.0, 0.0)
        self.sessions, self.cluster, self.tracker, self.store = sessions, cluster, tracker, store
        self.limits = limits or get_settings().default_limits()
        self.start_backoff_s = start_backoff_s
        self.sweeps = Sweeps(tracker)
        self.max_active_jobs, self.poll_interval_s, self.lease_s = max_active_jobs, poll_interval_s, lease_s
        self.between_ticks = TickPause(cluster, self.wakeup, poll_interval_s)
        self.dispatcher_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.active: dict[str, ActiveJob] = {}
        self.database = Reachability(log, "dispatcher")

    def run_forever(self, stop: threading.Event) -> None:
        self.tracker.ensure_store()
        self.listener = listener_for(self.engine(), self.wakeup)  # None on SQLite
        try:
            while not stop.is_set():
                self.tick_once()
                self.pause(stop)
        finally:
            if self.listener is not None:
                self.listener.stop()

    @TICK_SECONDS.time()  # its duration, for /metrics (services.metrics)
    def tick_once(self) -> None:
        try:
            self.tick()
            self.database.succeeded()
        except Exception as error:  # one bad tick must not kill the service; log and go on
            if unreachable(error):
                self.database.failed(error)  # a line when it goes, one when it is back
            else:
                log.exception("dispatcher tick failed")
        self.ticks += 1

    def engine(self) -> Engine:
        with self.sessions() as session:
            return session.get_bind()

    def pause(self, stop: threading.Event) -> None:
        """Wait for the next tick (services.tick_pause)."""
        self.between_ticks.wait([task for active in self.active.values() for task in active.tasks], stop)

    def tick(self) -> None:
        with self.sessions() as session:
            held = renew_leases(session, dispatcher_id=self.dispatcher_id, job_ids=list(self.active),
                                lease_s=self.lease_s)
            self.drop_lost_jobs(held)
            self.fence(session)
            self.look_at_nodes(session)
            self.claim_jobs(session)
            # Look for finished tasks before draining progress: a task reports all its
            # epochs before it returns, so every epoch of these tasks is on the board now.
            finished = self.finished_tasks()
            store_progress(session, self.cluster, self.tracker, list(self.active))
            self.collect_results(session, finished)
            self.carry_out_cancellations(session)
            self.stop_overdue_jobs()
            self.sweeps.run(session)

    def fence(self, session: Session) -> None:
        """From here on, each commit of this tick first checks that every job it holds is
        still its own. A tick that stalled past its leases (a long pause) while another
        dispatcher adopted a job then writes nothing: LeaseLost rolls the transaction
        back, and the next tick drops that job. Progress not yet acknowledged and results
        not yet popped are read again then, so the rollback loses nothing."""
        def check(checked: Session) -> None:
            held = hold_leases(checked, dispatcher_id=self.dispatcher_id, job_ids=list(self.active),
                               lease_s=self.lease_s)
            if lost := set(self.active) - held:
                raise LeaseLost(f"jobs {sorted(lost)} now belong to another dispatcher; "
                                "this tick's writes are dropped")
        event.listen(session, "before_commit", check)

    # -- starting jobs -------------------------------------------------------------
    def look_at_nodes(self, session: Session) -> None:
        """Every NODES_EVERY_S: the cluster's alive nodes, published for the API, and
        their total CPUs and GPUs (a node added since counts at once)."""
        if time.monotonic() - self.nodes_seen_at < NODES_EVERY_S:
            return
        nodes = self.cluster.nodes()
        publish(session, nodes)
        self.nodes = nodes
        self.total = Need(sum(n.cpus for n in nodes), sum(n.gpus for n in nodes))
        self.nodes_seen_at = time.monotonic()

    def below_bound(self) -> bool:
        return self.max_active_jobs is None or len(self.active) < self.max_active_jobs

    def claim_jobs(self, session: Session) -> None:
        # Jobs whose dispatcher died come first: they have waited longest, and their
        # folds are counted in the cluster's room already.
        while self.below_bound() and (adopted := adopt_orphaned_job(
                session, dispatcher_id=self.dispatcher_id, lease_s=self.lease_s, held=list(self.active))):
            self.start_or_retry(session, adopted, adopted=True)
        # New jobs while their folds have room: the cluster's CPUs less what the folds
        # of running jobs ask for.
        while self.below_bound() and room(session, self.total).cpus > 0:
            job = claim_next_job(session, dispatcher_id=self.dispatcher_id, lease_s=self.lease_s,
                                 max_running_folds=self.limits.max_running_folds)
            if job is None:
                return
            if (why := self.unrunnable(job)) is not None:
                self.set_aside(session, job, why)
                continue
            if not self.start_or_retry(session, job, adopted=False):
                return  # MLflow is down: the jobs behind this one need not wait on its timeouts

    def unrunnable(self, job: Job) -> str | None:
        """Why no node of the cluster can run this job's folds; None when one can (or
        when its spec is broken: starting it fails it, saying why)."""
        try:
            need = Need.of(JobSpec.model_validate(job.spec))
        except ValueError:
            return None
        found = refusal(need, self.nodes)
        return None if found is None else found[1]

    def start_or_retry(self, session: Session, job: Job, *, adopted: bool) -> bool:
        """Start the job; False when its start failed for a passing reason (retried later)."""
        try:
            self.start_job(session, job, adopted=adopted)
        except Exception as error:
            if transient(error) and job.start_attempts + 1 < MAX_START_ATTEMPTS:
                self.retry_later(session, job, error, adopted=adopted)
                return False
            log.exception("job %s could not start", job.id)
            self.fail_before_start(session, job, f"could not start: {error}")
        return True

    def set_aside(self, session: Session, job: Job, why: str) -> None:
        """A job no node can run: where the cluster can grow, back to the queue with its
        reason shown (looked at again after NODES_WAIT_S, holding no capacity meanwhile);
        else it fails saying what is missing."""
        if not self.cluster_can_grow:
            self.fail_before_start(session, job, why)
            return
        put_back(job, not_before=now() + timedelta(seconds=NODES_WAIT_S))
        job.waiting_reason = f"waiting for the cluster to grow: {why}"
        session.commit()

    def start_job(self, session: Session, job: Job, *, adopted: bool = False) -> None:
        """Submit the folds of a newly claimed job, or the unfinished folds of an adopted one."""
        spec = JobSpec.model_validate(job.spec)
        job.waiting_reason = None
        data = self.data_of(session, job, spec)
        check_stored_file(data)
        if adopted:
            self.reset_interrupted_folds(session, job)
        if job.mlflow_run_id is None:  # new, or adopted from a dispatcher that died before
            create_runs(session, self.tracker, self.store, job, spec, data)
        runtime = runtime_of(spec, limits_of(session, job.owner, self.limits))
        active = self.active[job.id] = ActiveJob(job.id, deadline=job.started_at + timedelta(seconds=runtime))
        if now() >= active.deadline:  # adopted past its time: nothing more is started
            self.run_out(active)
        unfinished = [fold.index for fold in job.folds if fold.status not in FINISHED_FOLD]
        if unfinished and not job.cancel_requested and not active.cancelling:
            source = source_of(data, self.store)
            plans = ([FoldPlan.everything(data.rows)] if job.refit_of else
                     split_plans_cached(data, source, spec.cv, unfinished, self.store))
            config = spec.training_config(data_loading=data.loading)
            self.active[job.id].tasks = self.cluster.submit(source, plans, config, job.id)
        log.info("job %s %s: %d folds to run", job.id, "adopted" if adopted else "started", len(unfinished))

    @staticmethod
    def data_of(session: Session, job: Job, spec: JobSpec) -> JobData:
        """The data resolved at submission; resolved now for a job queued before jobs kept it."""
        if job.data is None:
            job.data = resolve(spec, session=session, owner=job.owner).as_json()
        return JobData.of(job.data)

    @staticmethod
    def reset_interrupted_folds(session: Session, job: Job) -> None:
        """Folds that were running when their dispatcher died go back to pending; the
        ones that had finished stay finished and are not run again."""
        for fold in job.folds:
            if fold.status is FoldStatus.RUNNING:
                move_fold(fold, FoldStatus.PENDING)
        session.commit()

    def retry_later(self, session: Session, job: Job, error: Exception, *, adopted: bool) -> None:
        """A start that failed for a passing reason (MLflow unreachable, say): the job is
        tried again later, each time after twice the wait, so a short outage fails no job;
        the queue behind it is not failed one after another. A new job goes back to the
        queue; an adopted one (some folds may have finished) stays running, left for any
        dispatcher to adopt again once the wait is over. One cancelled meanwhile ends."""
        session.rollback()
        self.active.pop(job.id, None)
        job = session.get(Job, job.id)
        if job.cancel_requested:
            cancel_leftover_folds(self.tracker, job)
            move_job(job, JobStatus.CANCELLED)
            job.lease_expires_at = None
            session.commit()
            return
        job.start_attempts += 1
        wait = min(self.start_backoff_s * 2 ** (job.start_attempts - 1), MAX_START_BACKOFF_S)
        if adopted:
            job.dispatcher_id, job.lease_expires_at = None, now() + timedelta(seconds=wait)
        else:
            put_back(job, not_before=now() + timedelta(seconds=wait))
        session.commit()
        log.warning("job %s could not start (%s); back in the queue, tried again in %.0f s",
                    job.id, first_line(error), wait)

    def fail_before_start(self, session: Session, job: Job, reason: str) -> None:
        """A job that cannot start fails at once, its unfinished folds cancelled and
        its MLflow runs closed; the dispatcher forgets it."""
        session.rollback()
        self.active.pop(job.id, None)
        job = session.get(Job, job.id)
        job.error = reason
        cancel_leftover_folds(self.tracker, job)
        move_job(job, JobStatus.FAILED)
        job.lease_expires_at = None
        session.commit()
        if job.mlflow_run_id:
            self.tracker.finish_job(job.mlflow_run_id, status="failed", summary={},
                                    table=fold_table(job.folds), error=reason)

    # -- results -------------------------------------------------------------------
    def finished_tasks(self) -> dict[str, list]:
        """Job id → its Ray tasks that have ended."""
        return {job_id: self.cluster.ready(list(active.tasks)) for job_id, active in self.active.items()}

    def collect_results(self, session: Session, finished: dict[str, list]) -> None:
        for job_id, refs in finished.items():
            active = self.active[job_id]
            for ref in refs:
                for result in self.cluster.results(ref, job_id, active.tasks[ref]):
                    if active.cancelling and result.status is not Ending.SUCCEEDED:
                        result = FoldResult.cancelled(result.index)  # killed by us, whatever Ray says
                    record_fold_result(session, self.tracker, active.job_id, result)
            session.commit()
            # Only now, with the results stored: should anything above fail, the next
            # tick collects these tasks again.
            for ref in refs:
                del active.tasks[ref]
            if not active.tasks:
                self.finish_job(session, active.job_id)
        if any(finished.values()):
            self.wakeup.notify()  # room for queued jobs: the next tick claims them without waiting

    def finish_job(self, session: Session, job_id: str) -> None:
        job = session.get(Job, job_id)
        session.refresh(job)
        target, error = outcome_of(job, self.active[job_id].ran_out)
        target = close_job(session, self.tracker, job, target, error)
        session.commit()
        del self.active[job_id]
        self.cluster.forget(job_id)
        log.info("job %s %s", job_id, target.value)
        if job.study_id:  # its study's last variant: the study's run gets its results
            finish_if_done(session, self.tracker, job.study_id)

    def drop_lost_jobs(self, held: set[str]) -> None:
        """Jobs whose lease lapsed (this dispatcher stalled) and that another dispatcher
        adopted: stop their tasks here and leave them to their new dispatcher."""
        for job_id in [j for j in self.active if j not in held]:
            log.warning("lost the lease of job %s to another dispatcher", job_id)
            for ref in self.active.pop(job_id).tasks:
                self.cluster.cancel(ref)

    # -- cancellation --------------------------------------------------------------
    def carry_out_cancellations(self, session: Session) -> None:
        if not self.active:
            return
        wanted = session.scalars(select(Job.id).where(Job.id.in_(list(self.active)),
                                                      Job.cancel_requested.is_(True)))
        for job_id in wanted:
            active = self.active[job_id]
            if active.cancelling:
                continue
            active.cancelling = True
            for ref in active.tasks:
                self.cluster.cancel(ref)
            # The cancelled tasks come back through collect_results on the next
            # ticks, which then finish the job as cancelled.


    def stop_overdue_jobs(self) -> None:
        """Jobs past their max_runtime_s: their tasks are cancelled, and once those come back
        (collect_results) the job fails saying why."""
        for active in self.active.values():
            if not active.cancelling and active.deadline is not None and now() >= active.deadline:
                self.run_out(active)

    def run_out(self, active: ActiveJob) -> None:
        log.warning("job %s ran past its max_runtime_s; cancelling its folds", active.job_id)
        active.cancelling = True
        active.ran_out = "the job ran past its time limit (max_runtime_s); its unfinished folds were cancelled"
        for ref in active.tasks:
            self.cluster.cancel(ref)
