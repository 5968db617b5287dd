"""services.wakeups: the in-process signal, and PostgreSQL's NOTIFY on commit reaching a
listener that survives a database restart. (The dispatcher woken by them, and by its
Ray tasks, is in tests/test_wakeups.py.)"""
from __future__ import annotations

import os

import psycopg
import pytest
from services import jobs
from services.database import make_engine
from services.lifecycle import claim_next_job
from services.wakeups import CHANNEL, Wakeup, announce, listener_for
from tests.helpers import PrivatePostgres, small_job, store_job, wait_for


def test_a_notification_sent_while_no_one_waits_ends_the_next_wait_once():
    wakeup = Wakeup()
    assert not wakeup.wait(0.01)
    wakeup.notify()
    wakeup.notify()  # two while the dispatcher ticks: one more tick, not two
    assert wakeup.wait(0)
    assert not wakeup.wait(0.01)


@pytest.fixture
def listening(engine):
    """A Wakeup and the listener that wakes it (None on SQLite), already listening."""
    wakeup = Wakeup()
    listener = listener_for(engine, wakeup)
    if listener is not None:
        wait_for(listener.listening.is_set, 10)
        assert wakeup.wait(5)  # its first wake: for what was committed before it listened
    yield wakeup, listener
    if listener is not None:
        listener.stop()


def test_a_stored_job_and_a_cancel_request_wake_listeners_on_commit_only(listening, sessions, engine):
    wakeup, listener = listening
    if engine.dialect.name == "sqlite":
        assert listener is None  # between processes, SQLite has the poll alone
        return
    with sessions() as session:
        queued = store_job(session, small_job())
        assert wakeup.wait(5)
        jobs.cancel_job(session=session, job_id=queued.id)  # cancelled by the API itself:
        assert not wakeup.wait(0.5)  # nothing for a dispatcher to do
        announce(session)
        session.rollback()  # what is not committed wakes no one
        assert not wakeup.wait(0.5)
        running = store_job(session, small_job())
        assert wakeup.wait(5)
        assert claim_next_job(session, dispatcher_id="test").id == running.id
        assert not wakeup.wait(0.5)  # the dispatcher's own writes are not announced
        jobs.cancel_job(session=session, job_id=running.id)
        assert wakeup.wait(5)  # its dispatcher stops it


@pytest.fixture
def private_postgres():
    if (why := PrivatePostgres.available()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the database-restart test: {why}")
        pytest.skip(why)
    server = PrivatePostgres().create()
    yield server
    server.remove()


def test_the_listener_listens_again_once_the_database_is_back(private_postgres, caplog):
    """PostgreSQL crashes and comes back: the listener says so once each way, listens
    again, wakes the dispatcher then (for what was committed meanwhile), and the next
    NOTIFY reaches it."""
    caplog.set_level("WARNING")
    engine, wakeup = make_engine(private_postgres.url), Wakeup()
    listener = listener_for(engine, wakeup)
    try:
        wait_for(listener.listening.is_set, 10)
        assert wakeup.wait(5)
        private_postgres.crash()
        wait_for(lambda: not listener.listening.is_set(), 10)
        private_postgres.start()
        wait_for(listener.listening.is_set, 30)
        assert wakeup.wait(5)  # for what was committed while it was not listening
        with psycopg.connect(private_postgres.url, autocommit=True) as connection:
            connection.execute(f"NOTIFY {CHANNEL}")
        assert wakeup.wait(5)
    finally:
        listener.stop()
        engine.dispose()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job listener:")]
    assert len(said) == 2 and "unreachable" in said[0] and "reachable again" in said[1], said
    assert not [r for r in caplog.records if r.exc_info]
