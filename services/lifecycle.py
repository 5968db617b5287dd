"""The only code that writes a job's or a fold's status, always along the tables in
services.states (an illegal transition raises IllegalTransition)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.models import Fold, Job, OwnerLimits, OwnerTurn
from services.states import FINISHED_FOLD, FINISHED_JOB, FoldStatus, JobStatus, check_fold, check_job


CLAIM_LOCK = 0x63726f73  # PostgreSQL advisory lock key: claims are taken one at a time


def now() -> datetime:
    return datetime.now(timezone.utc)


def move_job(job: Job, target: JobStatus) -> None:
    check_job(JobStatus(job.status), target)
    job.status = target
    if target is JobStatus.RUNNING:
        job.started_at = now()
    if target in FINISHED_JOB:
        job.finished_at = now()


def move_fold(fold: Fold, target: FoldStatus) -> None:
    check_fold(FoldStatus(fold.status), target)
    fold.status = target
    if target is FoldStatus.RUNNING:
        fold.attempts += 1
        fold.started_at = fold.started_at or now()
    if target in FINISHED_FOLD:
        fold.finished_at = now()


def claim_next_job(session: Session, *, dispatcher_id: str, lease_s: float = 30.0,
                   max_running_folds: int | None = None) -> Job | None:
    """Atomically take the next queued job, or return None.

    The order, among the ready jobs (a job put back after a failed start waits until its
    `not_before`) of the owners whose unfinished folds (of their running jobs) plus the
    job's own stay within their running-fold limit (`max_running_folds`, or the owner's
    own in owner_limits; no limit when None):
    1. the highest `priority` first, whoever owns the job;
    2. within a priority, owners take turns: the owner served longest ago (or never)
       goes first, so one owner's thousand queued jobs do not hold up another's one;
    3. then that owner's oldest job.
    Each claim makes its owner the one served last (services.models.OwnerTurn).

    PostgreSQL: claims are taken one at a time under an advisory lock held to the end
    of this short transaction, so that two dispatchers neither serve the same owner's
    turn twice nor each start a job of one owner on the same count of its running folds
    and pass its limit together; the row is also locked with FOR UPDATE SKIP LOCKED.
    SQLite has no row locks: a conditional UPDATE (… WHERE status = 'queued') lets
    exactly one writer win, and its write lock covers the turn it records.
    """
    check_job(JobStatus.QUEUED, JobStatus.RUNNING)
    query = next_job_query(max_running_folds)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))
        query = query.with_for_update(skip_locked=True, of=Job)
    found = session.execute(query).first()
    if found is None:
        return None
    claimed = session.execute(
        update(Job).where(Job.id == found.id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=now(), dispatcher_id=dispatcher_id,
                lease_expires_at=now() + timedelta(seconds=lease_s)))
    if claimed.rowcount == 1:
        take_turn(session, found.owner)
    session.commit()
    return session.get(Job, found.id) if claimed.rowcount == 1 else None


def next_job_query(max_running_folds: int | None):
    """(id, owner) of the next job to start, in claim_next_job's order."""
    ready = (Job.status == JobStatus.QUEUED) & (Job.not_before.is_(None) | (Job.not_before <= now()))
    last_turn = func.coalesce(OwnerTurn.turn, 0)  # never served: before everyone else
    query = (select(Job.id, Job.owner).outerjoin(OwnerTurn, OwnerTurn.owner == Job.owner).where(ready)
             .order_by(Job.priority.desc(), last_turn, Job.created_at).limit(1))
    return query if max_running_folds is None else within_fold_limits(query, max_running_folds)


def within_fold_limits(query, max_running_folds: int):
    """`query` kept to the jobs whose folds fit within their owner's running-fold limit."""
    running = (select(Job.owner.label("owner"), func.count(Fold.id).label("folds"))
               .join(Fold, Fold.job_id == Job.id)
               .where(Job.status == JobStatus.RUNNING, Fold.status.not_in(FINISHED_FOLD))
               .group_by(Job.owner).subquery())
    own_folds = select(func.count(Fold.id)).where(Fold.job_id == Job.id).scalar_subquery()
    busy = func.coalesce(running.c.folds, 0)
    limit = func.coalesce(OwnerLimits.max_running_folds, max_running_folds)
    return (query.outerjoin(running, running.c.owner == Job.owner)
            .outerjoin(OwnerLimits, OwnerLimits.owner == Job.owner)
            .where(busy + own_folds <= limit))


def take_turn(session: Session, owner: str) -> None:
    """Record that `owner` was served just now: its turn becomes the latest. Read and
    written while the claim holds its lock (PostgreSQL's advisory lock, SQLite's write
    lock), so turns are numbered one claim at a time."""
    turn = session.scalar(select(func.coalesce(func.max(OwnerTurn.turn), 0))) + 1
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(OwnerTurn).values(owner=owner, turn=turn)
                    .on_conflict_do_update(index_elements=[OwnerTurn.owner], set_={"turn": turn}))


def put_back(job: Job, *, not_before: datetime) -> None:
    """A claimed job whose start failed for a passing reason goes back to the queue."""
    check_job(JobStatus(job.status), JobStatus.QUEUED)
    job.status, job.started_at, job.not_before = JobStatus.QUEUED, None, not_before
    job.dispatcher_id = job.lease_expires_at = None


def adopt_orphaned_job(session: Session, *, dispatcher_id: str, lease_s: float = 30.0,
                       held: list[str] = ()) -> Job | None:
    """Take over a running job whose dispatcher stopped renewing its lease (it died).

    The status stays `running`; only the owner and the lease change, conditionally on
    the lease still being lapsed, so two dispatchers cannot both adopt the job.
    """
    expired = (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now())
    if held:  # this dispatcher's own jobs; one it let go of (its start failed) it may adopt too
        expired &= Job.id.not_in(held)
    query = select(Job.id, Job.dispatcher_id).where(expired).order_by(Job.started_at).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    found = session.execute(query).first()
    if found is None:
        return None
    adopted = session.execute(
        update(Job).where(Job.id == found.id, expired, Job.dispatcher_id.is_not_distinct_from(found.dispatcher_id))
        .values(dispatcher_id=dispatcher_id, lease_expires_at=now() + timedelta(seconds=lease_s)))
    session.commit()
    return session.get(Job, found.id) if adopted.rowcount == 1 else None


def renew_leases(session: Session, *, dispatcher_id: str, job_ids: list[str], lease_s: float) -> set[str]:
    """Keep this dispatcher's running jobs its own for another `lease_s` seconds; returns
    the ids it still holds (a job adopted by another dispatcher is no longer among them)."""
    held = hold_leases(session, dispatcher_id=dispatcher_id, job_ids=job_ids, lease_s=lease_s)
    session.commit()
    return held


def hold_leases(session: Session, *, dispatcher_id: str, job_ids: list[str], lease_s: float) -> set[str]:
    """The fence before a dispatcher commits: extend its leases inside the caller's
    transaction and return the ids still its own. A job adopted meanwhile is missing,
    and on PostgreSQL the rows stay locked to this transaction until it ends, so no
    adoption can slip in between this check and the commit."""
    if not job_ids:
        return set()
    return set(session.scalars(
        update(Job).where(Job.id.in_(job_ids), Job.dispatcher_id == dispatcher_id)
        .values(lease_expires_at=now() + timedelta(seconds=lease_s)).returning(Job.id)))


def cancel_if_queued(session: Session, *, job_id: str) -> bool:
    """Cancel a job that no dispatcher has claimed yet; False if one got there first.

    Conditional on status = 'queued', like the claim, so a cancel and a claim that
    race cannot both win.
    """
    check_job(JobStatus.QUEUED, JobStatus.CANCELLED)
    cancelled = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=now()))
    if cancelled.rowcount != 1:
        return False
    check_fold(FoldStatus.PENDING, FoldStatus.CANCELLED)
    session.execute(update(Fold).where(Fold.job_id == job_id, Fold.status == FoldStatus.PENDING)
                    .values(status=FoldStatus.CANCELLED, finished_at=now()))
    return True
