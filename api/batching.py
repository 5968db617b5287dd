"""Submissions that arrive together are stored together.

Each POST /jobs hands its prepared submission to the app's SubmissionBatcher and waits.
One writer at a time stores everything waiting in one transaction (in a worker thread,
services.submissions.store), then answers each request; what arrives meanwhile goes in
the next batch. Nothing waits for company: a lone submission is stored at once, as a
batch of one. Under load a batch holds tens of jobs, and a job costs a row, not a round
of statements and a commit. A request is answered only after its batch has committed.
"""
from __future__ import annotations

import asyncio

import anyio
from sqlalchemy.orm import Session, sessionmaker

from services.models import Job
from services.submissions import Outcome, Submission, store

MAX_BATCH = 200  # jobs per transaction; a larger backlog is stored in several


class SubmissionBatcher:
    def __init__(self, sessions: sessionmaker[Session], max_batch: int = MAX_BATCH):
        self.sessions, self.max_batch = sessions, max_batch
        self.waiting: list[tuple[Submission, asyncio.Future]] = []
        self.writer: asyncio.Task | None = None

    async def submit(self, submission: Submission) -> tuple[Job, bool]:
        """(job, created) once stored; raises what storing it raised."""
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((submission, answer))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self.write_all())
        return await answer

    async def write_all(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
            try:
                outcomes = await anyio.to_thread.run_sync(self.store, [s for s, _ in batch])
            except Exception as error:  # the database is unreachable, say: all of them fail
                outcomes = [error] * len(batch)
            for (_, answer), outcome in zip(batch, outcomes):
                answer_with(answer, outcome)

    def store(self, submissions: list[Submission]) -> list[Outcome]:
        with self.sessions() as session:
            return store(session, submissions)


def answer_with(answer: asyncio.Future, outcome: Outcome) -> None:
    if answer.done():  # the client went away; its job is stored all the same
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
