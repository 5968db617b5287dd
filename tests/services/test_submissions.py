"""Many submissions stored in one transaction, on SQLite and on PostgreSQL."""
from sqlalchemy import func, select

from services import jobs
from services.errors import IdempotencyConflict
from services.models import Fold, Job
from services.job_data import resolve
from services.spec import JobSpec
from services.submissions import prepare, store
from tests.helpers import small_job

# Generated data: what these tests store is the point, and it needs no dataset lookup.
GENERATED = {"name": "synthetic", "rows": 200, "features": 4, "classes": 3}


def submission(key=None, owner="team-a", **overrides):
    spec = JobSpec.model_validate(small_job(**{"dataset": GENERATED, **overrides}))
    return prepare(spec, resolve(spec, session=None, owner=owner), owner, key)


def counts(sessions) -> tuple[int, int]:
    with sessions() as session:
        return (session.scalar(select(func.count()).select_from(Job)),
                session.scalar(select(func.count()).select_from(Fold)))


def test_a_batch_stores_every_job_with_its_folds_and_answers_in_order(sessions):
    batch = [submission(name=f"job-{i}", cv={"folds": 3 + i % 2}) for i in range(6)]
    with sessions() as session:
        outcomes = store(session, batch)
    assert [(job.name, created) for job, created in outcomes] == [(f"job-{i}", True) for i in range(6)]
    assert counts(sessions) == (6, 3 * 3 + 3 * 4)
    with sessions() as session:
        stored = jobs.get_job(session=session, job_id=outcomes[3][0].id)
        assert stored.name == "job-3" and [f.index for f in stored.folds] == [0, 1, 2, 3]


def test_one_key_twice_in_a_batch_stores_one_job_and_replays_it(sessions):
    first, again, other_body = submission("k1"), submission("k1"), submission("k1", name="other")
    with sessions() as session:
        outcomes = store(session, [first, again, other_body])
    assert outcomes[0] == (first.job, True)
    replayed, created = outcomes[1]
    assert (replayed.id, created) == (first.job.id, False)
    assert isinstance(outcomes[2], IdempotencyConflict)
    assert counts(sessions) == (1, 3)


def test_a_row_the_database_refuses_fails_alone(sessions):
    """A batch the database rejects is retried one submission at a time: only the bad
    one fails, and nothing half-stored is left of it."""
    with sessions() as session:
        (taken, _), = store(session, [submission()])
    clash = submission()
    clash.job.id = taken.id  # a primary key already in use: the INSERT itself fails
    batch = [submission(name="before"), clash, submission(name="after")]
    with sessions() as session:
        outcomes = store(session, batch)
    assert [o[0].name for o in (outcomes[0], outcomes[2])] == ["before", "after"]
    assert "UNIQUE" in str(outcomes[1]).upper() or "duplicate key" in str(outcomes[1])
    assert counts(sessions) == (3, 9)


def test_keys_belong_to_their_owner(sessions):
    mine = submission("shared-key", owner="team-a")
    theirs = submission("shared-key", owner="team-b")
    with sessions() as session:
        outcomes = store(session, [mine, theirs])
    assert [created for _, created in outcomes] == [True, True]
    assert counts(sessions) == (2, 6)


def test_two_writers_racing_on_the_same_keys_store_each_key_once(sessions, database_url):
    """Two API processes' batches with overlapping keys, in opposite orders, at once:
    each key gets one job, created by one writer and replayed by the other."""
    import threading
    keys = [f"key-{i}" for i in range(100)]
    batches = [[submission(k) for k in keys], [submission(k) for k in reversed(keys)]]
    outcomes, barrier = [], threading.Barrier(2)

    def write(batch):
        with sessions() as session:
            barrier.wait()
            outcomes.append(store(session, batch))
    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts(sessions) == (100, 300)
    created = [o[1] for batch in outcomes for o in batch]
    assert created.count(True) == 100 and created.count(False) == 100
