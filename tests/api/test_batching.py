"""The API's submission batcher, on a real database: coalescing, limits and failures."""
import asyncio
import time

import pytest
from sqlalchemy import func, select

import threading

from fastapi.testclient import TestClient

from api.batching import Interrupted, StoreFailed, SubmissionBatcher, batcher_for
from api.main import create_app
from services.database import make_engine, session_factory, upgrade_schema
from services.job_data import resolve
from services.models import LOCAL_OWNER, Job
from services.spec import JobSpec
from services.submissions import prepare
from tests.helpers import small_job


class CountingBatcher(SubmissionBatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def store(self, submissions):
        self.batches.append(len(submissions))
        return super().store(submissions)


def submission(name="job"):
    # Generated data: what these tests store is the point, and it needs no dataset lookup.
    spec = JobSpec.model_validate(small_job(name=name, dataset={"name": "synthetic", "rows": 200}))
    return prepare(spec, resolve(spec, session=None, owner=LOCAL_OWNER))


def stored_jobs(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job))


async def submit_all(batcher, count):
    return await asyncio.gather(*(batcher.submit(submission(f"job-{i}")) for i in range(count)),
                                return_exceptions=True)


def test_submissions_that_arrive_together_are_stored_in_one_transaction(sessions):
    batcher = CountingBatcher(sessions)
    outcomes = asyncio.run(submit_all(batcher, 30))
    assert [(job.name, created) for job, created in outcomes] == [(f"job-{i}", True) for i in range(30)]
    assert batcher.batches == [30]
    assert stored_jobs(sessions) == 30


def test_a_backlog_is_stored_in_batches_of_at_most_max_batch(sessions):
    batcher = CountingBatcher(sessions, max_batch=8)
    asyncio.run(submit_all(batcher, 20))
    assert batcher.batches == [8, 8, 4]
    assert stored_jobs(sessions) == 20


def test_a_failed_batch_fails_its_requests_and_the_next_batch_proceeds(database_url):
    engine = make_engine(database_url)  # no schema yet: every INSERT fails
    sessions = session_factory(engine)
    batcher = SubmissionBatcher(sessions)

    async def scenario():
        failed = await submit_all(batcher, 3)
        upgrade_schema(engine)
        return failed, await submit_all(batcher, 2)
    failed, succeeded = asyncio.run(scenario())
    assert all(isinstance(outcome, Exception) for outcome in failed)
    assert [created for _, created in succeeded] == [True, True]
    assert stored_jobs(sessions) == 2
    engine.dispose()


def test_a_request_that_goes_away_still_gets_its_job_stored(sessions):
    batcher = SubmissionBatcher(sessions)

    async def scenario():
        waiting = asyncio.create_task(batcher.submit(submission("abandoned")))
        await asyncio.sleep(0)  # queued; the writer has not stored it yet
        waiting.cancel()
        await batcher.writer
        return waiting
    waiting = asyncio.run(scenario())
    assert waiting.cancelled()
    assert stored_jobs(sessions) == 1


def test_when_storing_fails_outright_each_request_gets_its_own_error_and_a_503(settings, sessions):
    def broken_sessions():
        raise ConnectionError("database unreachable")
    batcher = SubmissionBatcher(broken_sessions)
    outcomes = asyncio.run(submit_all(batcher, 3))
    assert all(isinstance(o, StoreFailed) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3  # not one exception shared by all
    app = create_app(settings, sessions)
    with TestClient(app) as client:
        app.state.sessions = broken_sessions  # the batcher of the client's loop is made now
        # Generated data: nothing to read before the batch, which is what fails here.
        answer = client.post("/jobs", json=small_job(dataset={"name": "synthetic", "rows": 200}))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert stored_jobs(sessions) == 0


@pytest.mark.parametrize("when", ["before it began", "while storing"])
def test_a_stopped_writer_answers_every_waiting_request(sessions, when):
    """Cancelled (a shutdown): nobody waits for ever; the answer says the outcome is
    unknown, so the client resends with its Idempotency-Key."""
    def slow_sessions():
        time.sleep(0.3)
        return sessions()
    batcher = SubmissionBatcher(slow_sessions)

    async def scenario():
        waiting = [asyncio.create_task(batcher.submit(submission(f"job-{i}"))) for i in range(3)]
        await asyncio.sleep(0)  # all queued, the writer created
        if when == "while storing":
            await asyncio.sleep(0.1)
        batcher.writer.cancel()
        return await asyncio.gather(*waiting, return_exceptions=True)
    outcomes = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert all(isinstance(o, Interrupted) for o in outcomes)


def test_each_event_loop_has_its_own_batcher(settings, sessions):
    """An app served from two loops at once (two TestClients, say) stores from both."""
    app = create_app(settings, sessions)
    seen, results = [], []

    def serve(name):
        async def one():
            batcher = batcher_for(app)
            seen.append(batcher)
            return await batcher.submit(submission(name))
        results.append(asyncio.run(asyncio.wait_for(one(), 30)))

    threads = [threading.Thread(target=serve, args=(f"loop-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and seen[0] is not seen[1]
    assert stored_jobs(sessions) == 2
