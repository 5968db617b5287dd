"""Job and fold lifecycle (services.lifecycle, services.states): claims, transitions and
attempts, on SQLite and on PostgreSQL."""
import threading

import pytest
from sqlalchemy import select

from services import jobs
from services.lifecycle import claim_next_job, move_fold, move_job
from services.models import Fold
from services.states import (FOLD_TRANSITIONS, JOB_TRANSITIONS, FoldStatus, IllegalTransition,
                             JobStatus)
from tests.helpers import small_job, store_job


def create(sessions, **overrides):
    with sessions() as session:
        return store_job(session, small_job(**overrides))


def test_claims_take_the_oldest_job_once(sessions):
    first, second = create(sessions, name="first"), create(sessions, name="second")
    with sessions() as session:
        claimed = claim_next_job(session, dispatcher_id="d1")
        assert claimed.id == first.id and claimed.status is JobStatus.RUNNING
        assert claimed.dispatcher_id == "d1" and claimed.started_at is not None
        assert claim_next_job(session, dispatcher_id="d2").id == second.id
        assert claim_next_job(session, dispatcher_id="d3") is None


def test_concurrent_claims_never_share_a_job(sessions):
    created = {create(sessions, name=f"job-{i}").id for i in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        with sessions() as session:
            while (job := claim_next_job(session, dispatcher_id=name)) is not None:
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(created)


class Row:
    def __init__(self, status):
        self.status, self.attempts = status, 0
        self.started_at = self.finished_at = None


def every_pair(states, table, move):
    return [(table, move, current, target) for current in states for target in states]


@pytest.mark.parametrize("table, move, current, target",
                         every_pair(list(JobStatus), JOB_TRANSITIONS, move_job)
                         + every_pair(list(FoldStatus), FOLD_TRANSITIONS, move_fold))
def test_transitions_follow_their_table(table, move, current, target):
    row = Row(current)
    if target in table[current]:
        move(row, target)
        assert row.status is target
    else:
        with pytest.raises(IllegalTransition):
            move(row, target)
        assert row.status is current


def test_a_retried_fold_counts_its_attempts(sessions):
    job = create(sessions)
    with sessions() as session:
        fold = session.get(Fold, jobs.get_job(session=session, job_id=job.id).folds[0].id)
        move_fold(fold, FoldStatus.RUNNING)
        move_fold(fold, FoldStatus.PENDING)  # worker lost
        move_fold(fold, FoldStatus.RUNNING)
        session.commit()
        assert fold.attempts == 2


def claim_all(url: str, name: str, out, max_running_folds: int | None = None) -> None:
    """One dispatcher process's claim loop (module level, so a spawned process can run it)."""
    from services.database import make_engine, session_factory
    engine = make_engine(url)
    with session_factory(engine)() as session:
        while (job := claim_next_job(session, dispatcher_id=name, max_running_folds=max_running_folds)):
            out.put(job.id)
    out.put(None)


def claimed_by_processes(database_url: str, processes: int, **limits) -> list[str]:
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=claim_all, args=(database_url, f"d{i}", out), kwargs=limits)
               for i in range(processes)]
    for worker in workers:
        worker.start()
    claimed, finished = [], 0
    while finished < processes:
        item = out.get(timeout=120)
        finished += item is None
        if item is not None:
            claimed.append(item)
    for worker in workers:
        worker.join(timeout=30)
    return claimed


def test_four_dispatcher_processes_claim_each_of_200_jobs_exactly_once(sessions, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("concurrent dispatchers are a PostgreSQL deployment")
    from services.models import Job
    with sessions() as session:  # 200 trivially small jobs, inserted directly
        session.add_all([Job(name=f"job-{i}", spec=small_job(), status=JobStatus.QUEUED,
                             cancel_requested=False) for i in range(200)])
        session.commit()
    claimed = claimed_by_processes(database_url, 4)
    assert len(claimed) == 200 and len(set(claimed)) == 200
    with sessions() as session:
        assert {j.status for j in session.scalars(select(Job))} == {JobStatus.RUNNING}


def test_the_owner_running_fewest_folds_goes_first_and_none_passes_its_limit(sessions):
    """Owner flood queued 30 jobs first; a later job of owner calm still starts next,
    and flood's jobs start only while its unfinished folds stay within the limit (5)."""
    with sessions() as session:
        flooded = [store_job(session, small_job(name=f"flood-{i}"), owner="flood").id for i in range(30)]
        calm = store_job(session, small_job(name="calm"), owner="calm").id
        claims = [claim_next_job(session, dispatcher_id="d", max_running_folds=5) for _ in range(3)]
    # 3-fold jobs: flood's first (nobody runs anything), then calm's (0 folds < flood's 3),
    # then nothing: flood's 3 running + 3 more would pass 5.
    assert [job.id if job else None for job in claims] == [flooded[0], calm, None]


def test_an_owners_own_running_fold_limit_overrides_the_default(sessions):
    from services.models import OwnerLimits
    with sessions() as session:
        session.add(OwnerLimits(owner="big", max_running_folds=9))
        session.commit()
        [store_job(session, small_job(name=f"big-{i}"), owner="big") for i in range(4)]
        claimed = [claim_next_job(session, dispatcher_id="d", max_running_folds=3) for _ in range(4)]
    assert [job is not None for job in claimed] == [True, True, True, False]  # 9 folds, not 3


def test_finished_folds_free_their_room_and_a_put_back_job_waits_its_turn(sessions):
    from datetime import timedelta

    from services.lifecycle import now, put_back
    with sessions() as session:
        first = store_job(session, small_job(name="first"), owner="o").id
        second = store_job(session, small_job(name="second"), owner="o").id
        job = claim_next_job(session, dispatcher_id="d", max_running_folds=3)
        assert job.id == first and claim_next_job(session, dispatcher_id="d", max_running_folds=3) is None
        for fold in job.folds:
            move_fold(fold, FoldStatus.RUNNING)
            move_fold(fold, FoldStatus.SUCCEEDED)
        put_back(job, not_before=now() + timedelta(hours=1))  # as a start that failed for a passing reason
        session.commit()
        assert claim_next_job(session, dispatcher_id="d", max_running_folds=3).id == second
        assert claim_next_job(session, dispatcher_id="d", max_running_folds=3) is None  # first waits


def test_a_claim_counts_the_folds_of_a_claim_made_while_it_counted(sessions, database_url):
    """The race itself, made certain: dispatcher A has counted the owner's running folds
    (none) and picked a job, and waits a second before committing; B claims meanwhile.
    B must wait for A and count its job, so the limit of 3 folds admits one 3-fold job."""
    if not database_url.startswith("postgresql"):
        pytest.skip("concurrent dispatchers are a PostgreSQL deployment")
    import time

    from sqlalchemy import event
    with sessions() as session:
        [store_job(session, small_job(name=f"job-{i}"), owner="o") for i in range(2)]
        engine = session.get_bind()
    claimed: dict[str, object] = {}

    def pause_a(conn, cursor, statement, *args):
        if threading.current_thread().name == "A" and "FOR UPDATE" in statement:
            time.sleep(1.0)  # A holds its count and its pick, not yet committed

    def claim(name: str) -> None:
        with sessions() as session:
            claimed[name] = claim_next_job(session, dispatcher_id=name, max_running_folds=3)

    event.listen(engine, "after_cursor_execute", pause_a)
    try:
        a = threading.Thread(target=claim, args=("A",), name="A")
        a.start()
        time.sleep(0.3)
        claim("B")
        a.join()
    finally:
        event.remove(engine, "after_cursor_execute", pause_a)
    assert claimed["A"] is not None and claimed["B"] is None
