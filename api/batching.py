"""Submissions that arrive together are stored together.

Each POST /jobs hands its prepared submission to its event loop's SubmissionBatcher and
waits. One writer at a time stores everything waiting in one transaction (in a worker
thread, services.submissions.store), then answers each request; what arrives meanwhile
goes in the next batch. Nothing waits for company: a lone submission is stored at once,
as a batch of one. Under load a batch holds tens of jobs, and a job costs a row, not a
round of statements and a commit. A request is answered only after its batch commits.
"""
from __future__ import annotations

import asyncio
import weakref

import anyio
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from services.database import unreachable
from services.models import Job
from services.quotas import Limits
from services.submissions import Outcome, Submission, store

MAX_BATCH = 200  # jobs per transaction; a larger backlog is stored in several


class StoreFailed(Exception):
    """The batch could not be stored (the database is unreachable, say), or this
    submission could not once its batch was retried one by one because the database had
    gone; nothing of it was committed, so the same request may be sent again."""


class Interrupted(Exception):
    """The writer was stopped (the API is shutting down) before this submission's batch
    was answered: it may or may not be stored. Resending it with the same
    Idempotency-Key is safe."""


class SubmissionBatcher:
    """The queue and the writer of one event loop: its futures belong to that loop."""

    def __init__(self, sessions: sessionmaker[Session], limits: Limits | None = None,
                 max_batch: int = MAX_BATCH):
        """`limits`: the owners' default quotas, checked as each batch is stored."""
        self.sessions, self.limits, self.max_batch = sessions, limits, max_batch
        self.waiting: list[tuple[Submission, asyncio.Future]] = []
        self.in_flight: list[tuple[Submission, asyncio.Future]] = []  # the batch being stored
        self.writer: asyncio.Task | None = None

    async def submit(self, submission: Submission) -> tuple[Job, bool]:
        """(job, created) once stored; raises what storing it raised."""
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((submission, answer))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self.write_all())
            self.writer.add_done_callback(self.after_writer)
        return await answer

    async def write_all(self) -> None:
        while self.waiting:
            self.in_flight, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
            try:
                outcomes = await anyio.to_thread.run_sync(self.store, [s for s, _ in self.in_flight])
            except Exception as error:
                outcomes = [failed(error) for _ in self.in_flight]
            for (_, answer), outcome in zip(self.in_flight, outcomes, strict=True):
                # Tried on its own after its batch failed, and the database was gone: not
                # stored, as a failed batch, and answered as one (503, "try again").
                answer_with(answer, failed(outcome) if unreachable(outcome) else outcome)
            self.in_flight = []

    def after_writer(self, writer: asyncio.Task) -> None:
        """A writer stopped midway (cancelled at shutdown, even before it began): no
        request may wait for ever. Those queued for a newer writer stay with it."""
        leftovers, self.in_flight = self.in_flight, []
        if writer is self.writer:
            leftovers, self.waiting = leftovers + self.waiting, []
        for _, answer in leftovers:
            answer_with(answer, Interrupted("the API stopped before answering; resend with the "
                                            "same Idempotency-Key"))

    def store(self, submissions: list[Submission]) -> list[Outcome]:
        with self.sessions() as session:
            return store(session, submissions, self.limits)

    async def close(self) -> None:
        """Wait until everything queued has been stored and answered."""
        if self.writer is not None:
            await asyncio.shield(self.writer)


def failed(error: Exception) -> StoreFailed:
    """An exception of its own for each request (a shared one would gather every
    request's traceback)."""
    try:
        raise StoreFailed(f"storing the submissions failed: {type(error).__name__}") from error
    except StoreFailed as own:
        return own


def answer_with(answer: asyncio.Future, outcome: Outcome) -> None:
    if answer.done():  # the client went away; its job is stored all the same
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


def batcher_for(app: FastAPI) -> SubmissionBatcher:
    """The batcher of the running event loop (an app can be served from several: each
    TestClient runs its own), created on first use."""
    batchers: weakref.WeakKeyDictionary = app.state.batchers
    loop = asyncio.get_running_loop()
    if loop not in batchers:
        batchers[loop] = SubmissionBatcher(app.state.sessions, app.state.settings.default_limits())
    return batchers[loop]
