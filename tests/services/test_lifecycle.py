"""Job and fold lifecycle (services.lifecycle, services.states): claims, transitions and
attempts, on SQLite and on PostgreSQL."""
import threading

import pytest
from sqlalchemy import select

from services import jobs
from services.lifecycle import claim_next_job, move_fold, move_job
from services.models import Fold, Job
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


def test_owners_take_turns_and_none_passes_its_running_fold_limit(sessions):
    """Owner flood queued 30 jobs first; a later job of owner calm still starts next (its
    turn: flood was just served), and flood's jobs start only while its unfinished folds
    stay within the limit (5). (Owners used to go by fewest running folds; they now take
    turns, which also holds when no limit is counted.)"""
    with sessions() as session:
        flooded = [store_job(session, small_job(name=f"flood-{i}"), owner="flood").id for i in range(30)]
        calm = store_job(session, small_job(name="calm"), owner="calm").id
        claims = [claim_next_job(session, dispatcher_id="d", max_running_folds=5) for _ in range(3)]
    # 3-fold jobs: flood's first (neither was served: the oldest job), then calm's (never
    # served), then nothing: flood's 3 running + 3 more would pass 5.
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


# -- Priority and owners' turns (the order is claim_next_job's docstring) --------------
def queue(session, owner: str, *names: str, priority: int = 0) -> list[str]:
    """Queue small jobs of `owner` (in this order) as POST /jobs does; their ids."""
    return [store_job(session, small_job(name=name, priority=priority), owner=owner).id for name in names]


def claim_names(session, count: int, **limits) -> list[str | None]:
    claimed = [claim_next_job(session, dispatcher_id="d", **limits) for _ in range(count)]
    return [job.name if job else None for job in claimed]


def test_a_higher_priority_job_queued_later_starts_first_and_equal_ones_in_order(sessions):
    with sessions() as session:
        queue(session, "o", "low")
        queue(session, "o", "first-5", "second-5", priority=5)
        queue(session, "o", "urgent", priority=100)
        queue(session, "o", "whenever", priority=-100)
        queue(session, "o", "third-5", priority=5)
        assert claim_names(session, 7) == ["urgent", "first-5", "second-5", "third-5", "low", "whenever",
                                           None]


@pytest.mark.parametrize("limits", [{}, {"max_running_folds": 1000}], ids=["no-limit", "limit"])
def test_one_owners_many_jobs_do_not_hold_up_anothers_one(sessions, limits):
    """Whether running folds are counted or not: the later owner's job is claimed
    second, and then the flood goes on."""
    with sessions() as session:
        queue(session, "flood", *(f"flood-{i}" for i in range(20)))
        queue(session, "calm", "calm")
        assert claim_names(session, 4, **limits) == ["flood-0", "calm", "flood-1", "flood-2"]


def test_three_owners_take_turns_and_a_newcomer_goes_next(sessions):
    with sessions() as session:
        for owner in "abc":  # a's four jobs first, then b's, then c's
            queue(session, owner, *(f"{owner}{i}" for i in range(4)))
        assert claim_names(session, 5) == ["a0", "b0", "c0", "a1", "b1"]
    with sessions() as session:  # the turns are the database's, not a session's or a process's
        queue(session, "d", "d0")
        assert claim_names(session, 8) == ["d0", "c1", "a2", "b2", "c2", "a3", "b3", "c3"]


def test_priority_comes_before_turns_and_turns_before_age(sessions):
    """b's priority-0 job waits for a's priority-1 jobs, however old it is; among the
    priority-1 jobs, b's later one still gets its turn right after a's first."""
    with sessions() as session:
        queue(session, "b", "b-low")
        queue(session, "a", "a1", "a2", "a3", priority=1)
        queue(session, "b", "b-high", priority=1)
        assert claim_names(session, 5, max_running_folds=100) == ["a1", "b-high", "a2", "a3", "b-low"]


def test_an_owner_at_its_running_fold_limit_lets_the_next_owner_go(sessions):
    """A turn is no reservation: an owner that cannot start a job now (its running folds
    at its limit) is passed over, even for a lower priority."""
    with sessions() as session:
        queue(session, "busy", "busy-0", "busy-1", priority=10)
        queue(session, "other", "other-0")
        assert claim_names(session, 3, max_running_folds=3) == ["busy-0", "other-0", None]


def test_concurrent_dispatchers_keep_the_owners_turns(sessions):
    """Three dispatchers claim 30 jobs of three owners at once: in the order they were
    claimed (started_at), the owners still rotate a, b, c and each owner's jobs go oldest
    first. PostgreSQL: the claims take turns under the advisory lock; SQLite: a claim that
    read the queue before another's commit loses its conditional UPDATE."""
    with sessions() as session:
        for owner in "abc":
            queue(session, owner, *(f"{owner}{i}" for i in range(10)))

    def claimer(name: str) -> None:
        with sessions() as session:
            while claim_next_job(session, dispatcher_id=name, max_running_folds=1000) is not None:
                pass

    threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sessions() as session:
        claimed = list(session.scalars(select(Job.name).order_by(Job.started_at)))
    assert claimed == [f"{owner}{i}" for i in range(10) for owner in "abc"]
