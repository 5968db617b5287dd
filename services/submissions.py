"""Storing submitted jobs, many in one transaction.

A submission is checked against its data (services.job_data) and turned into its rows
before it is queued (`prepare`), so a bad one is refused on its own. `store` then writes any number of them with one INSERT
of jobs, one of folds and one commit: the API coalesces the submissions that arrive
together (api/batching.py), and under load a job costs a row, not a transaction.

An Idempotency-Key is unique per owner in the database itself (ON CONFLICT DO NOTHING):
a submission whose key is taken, by an earlier request or by another in the same batch,
stores nothing and answers with the job that holds the key.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, selectinload

from services.database import unreachable
from services.errors import IdempotencyConflict, InvalidJob
from services.job_data import JobData
from services.models import LOCAL_OWNER, Fold, Job
from services.quotas import (Limits, QuotaExceeded, check_job_fits, check_submission, limits_of,
                             submission_usage)
from services.spec import JobSpec
from services.states import FoldStatus, JobStatus
from services.wakeups import announce

JOB_COLUMNS = ("id", "name", "owner", "spec", "data", "dataset_id", "status", "cancel_requested",
               "idempotency_key", "request_hash", "priority", "study_id", "variant", "created_at")


@dataclass
class Submission:
    job: Job  # queued, with its pending folds; every column set here, none by the database
    spec: JobSpec

    @property
    def owner(self) -> str:
        return self.job.owner

    @property
    def key(self) -> str | None:
        return self.job.idempotency_key


Outcome = tuple[Job, bool] | Exception  # (job, created) or why this one failed


def prepare(spec: JobSpec, data: JobData, owner: str = LOCAL_OWNER,
            idempotency_key: str | None = None) -> Submission:
    """Build a job on its resolved data (services.job_data.resolve); nothing stored yet."""
    job = Job(id=str(uuid.uuid4()), name=spec.name, owner=owner, spec=spec.model_dump(mode="json"),
              data=data.as_json(), dataset_id=data.dataset_id, status=JobStatus.QUEUED,
              cancel_requested=False, idempotency_key=idempotency_key, priority=spec.priority,
              request_hash=request_hash(spec), created_at=datetime.now(timezone.utc))
    job.folds = [Fold(index=i, status=FoldStatus.PENDING, attempts=0, epoch=0)
                 for i in range(spec.cv.total_folds)]
    return Submission(job, spec)


def store(session: Session, submissions: list[Submission], limits: Limits | None = None) -> list[Outcome]:
    """Store the submissions in one transaction; their outcomes, in order. With `limits`
    (the defaults), each owner's quotas are checked first, in the same transaction.

    Everything, replays included, is settled before the commit, so nothing can fail
    after it. When the database refuses the batch, each submission is tried on its
    own, and one bad row fails only its own request. A lone submission's error is raised,
    and so is the batch's when the database cannot be reached (services.database
    .unreachable): no row is to blame, and trying each would only wait for it again, a
    connect timeout each behind a network cut. Should it go away midway through the
    one-by-one tries, the submissions not yet stored all answer with that error.
    """
    try:
        refused = admit(session, submissions, limits) if limits else {}
        admitted = [s for s in submissions if s.job.id not in refused]
        stored = insert_jobs(session, [s.job for s in admitted]) if admitted else set()
        if stored:
            announce(session)  # dispatchers on other connections start them once committed
        # In the same transaction: it sees its own rows and, once ON CONFLICT has waited
        # for another transaction's, those too.
        outcomes = [refused[s.job.id] if s.job.id in refused else
                    (s.job, True) if s.job.id in stored else replayed(session, s) for s in submissions]
        session.commit()
    except StatementError as error:  # the database's refusals (DBAPIError) and bind errors alike
        session.rollback()
        if len(submissions) == 1 or unreachable(error):
            raise
        outcomes, gone = [], None
        for submission in submissions:
            outcome = gone if gone is not None else store_alone(session, submission, limits)
            if unreachable(outcome):
                gone = outcome
            outcomes.append(outcome)
    return outcomes


def store_alone(session: Session, submission: Submission, limits: Limits | None) -> Outcome:
    """The submission's outcome when stored on its own. Its error is its answer alone, be
    it its own (a row the database refuses) or the database's (unreachable, which the
    API answers with 503)."""
    try:
        return store(session, [submission], limits)[0]
    except Exception as error:
        session.rollback()
        return error


def admit(session: Session, submissions: list[Submission], defaults: Limits) -> dict[str, Exception]:
    """Check each owner's limits for the new submissions (a replay of a stored key is
    not new); job id → why it is refused. On PostgreSQL each owner's submissions are
    checked under a lock of that owner, so that API processes storing batches at the
    same time cannot together pass a limit."""
    stored = stored_keys(session, submissions)
    new: dict[str, list[Submission]] = {}
    for submission in submissions:
        if (submission.owner, submission.key) not in stored:
            new.setdefault(submission.owner, []).append(submission)
    refused: dict[str, Exception] = {}
    for owner in sorted(new):  # locks taken in one order: no deadlock between processes
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"crossfold-quota:{owner}"))))
        limits, usage = limits_of(session, owner, defaults), submission_usage(session, owner)
        accepted = 0
        for submission in new[owner]:
            try:
                check_job_fits(submission.spec, limits)
                check_submission(usage, limits, accepted + 1)
                accepted += 1
            except (InvalidJob, QuotaExceeded) as error:
                refused[submission.job.id] = error
    return refused


def stored_keys(session: Session, submissions: list[Submission]) -> set[tuple[str, str]]:
    """(owner, Idempotency-Key) of the batch's keys that a stored job already holds: one
    query per owner, not one per submission."""
    keys: dict[str, set[str]] = {}
    for submission in submissions:
        if submission.key is not None:
            keys.setdefault(submission.owner, set()).add(submission.key)
    return {(owner, key) for owner, owner_keys in keys.items()
            for key in session.scalars(select(Job.idempotency_key).where(
                Job.owner == owner, Job.idempotency_key.in_(owner_keys)))}


def insert_jobs(session: Session, jobs: list[Job]) -> set[str]:
    """INSERT the jobs whose idempotency keys are free, and their folds; their ids.

    Rows go in (owner, key) order: two API processes inserting overlapping keys then
    wait for each other in one order, never in a cycle (a deadlock)."""
    connection = session.connection()
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    new_jobs = dialect.insert(Job.__table__).on_conflict_do_nothing(
        index_elements=["owner", "idempotency_key"]).returning(Job.__table__.c.id)
    ordered = sorted(jobs, key=lambda job: (job.owner, job.idempotency_key or ""))
    stored = set(connection.execute(new_jobs, [{name: getattr(job, name) for name in JOB_COLUMNS}
                                               for job in ordered]).scalars())
    fold_rows = [{"job_id": job.id, "fold_index": fold.index, "status": fold.status,
                  "attempts": fold.attempts, "epoch": fold.epoch}
                 for job in jobs if job.id in stored for fold in job.folds]
    if fold_rows:
        connection.execute(insert(Fold.__table__), fold_rows)
    return stored


def replayed(session: Session, submission: Submission) -> Outcome:
    """The answer for a submission whose idempotency key was taken: the job holding it,
    when it came from the same spec."""
    earlier = find_by_key(session, submission.owner, submission.key)
    if earlier.request_hash != submission.job.request_hash:
        return IdempotencyConflict("this Idempotency-Key was used with a different job spec")
    return earlier, False


def find_by_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key)
                          .options(selectinload(Job.folds), selectinload(Job.refits)))


def request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
