"""A failed batch's one-by-one retries when the database goes away midway (the whole
outage, on a real server, is in tests/test_faults.py)."""
import asyncio

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from api.batching import StoreFailed, SubmissionBatcher
from services import submissions
from services.database import unreachable
from services.job_data import resolve
from services.models import LOCAL_OWNER, Job
from services.spec import JobSpec
from services.submissions import prepare, store
from tests.helpers import small_job


def submission(name):
    spec = JobSpec.model_validate(small_job(name=name, dataset={"name": "synthetic", "rows": 200}))
    return prepare(spec, resolve(spec, session=None, owner=LOCAL_OWNER))


def test_a_database_gone_during_the_one_by_one_retries_fails_the_rest_untried(sessions, monkeypatch):
    """A row the database refuses fails its batch, whose submissions are then stored one
    by one. The database goes away at the second: it and the third are not stored, the
    third is not even tried, and both answer as a failed batch does (StoreFailed, a 503),
    each with an exception of its own; the first one stays stored and answered."""
    with sessions() as session:
        (taken, _), = store(session, [submission("taken")])
    first, clash, last = submission("first"), submission("clash"), submission("last")
    clash.job.id = taken.id  # a primary key already in use: the batch's INSERT fails
    gone = OperationalError(None, None, ConnectionError("connection refused"))  # none made
    assert unreachable(gone)
    tried, store_alone = [], submissions.store_alone

    def going_away(session, one, limits):
        tried.append(one.job.name)
        return gone if one is clash else store_alone(session, one, limits)
    monkeypatch.setattr(submissions, "store_alone", going_away)

    async def together():
        batcher = SubmissionBatcher(sessions)
        return await asyncio.gather(*(batcher.submit(s) for s in (first, clash, last)),
                                    return_exceptions=True)
    stored, *failed = asyncio.run(together())
    assert tried == ["first", "clash"]
    assert stored == (first.job, True)
    assert all(isinstance(f, StoreFailed) and f.__cause__ is gone for f in failed)
    assert failed[0] is not failed[1]
    with sessions() as session:
        assert sorted(session.scalars(select(Job.name))) == ["first", "taken"]
        assert session.scalar(select(func.count()).select_from(Job)) == 2
