"""The PostgreSQL connection pool: dead connections are replaced, live ones not pinged."""
import time

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from services.database import make_engine
from tests.helpers import POSTGRES_ADMIN, fresh_database, postgres_available


@pytest.fixture
def postgres_url(tmp_path):
    with fresh_database("postgresql", tmp_path) as url:
        yield url


def backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()


def kill_backend(pid: int) -> None:
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.2)


def test_a_connection_that_died_while_idle_is_replaced_before_use(postgres_url):
    engine = make_engine(postgres_url, ping_after_idle_s=0.1)
    first = backend_pid(engine)
    kill_backend(first)  # as a database restart would
    assert backend_pid(engine) != first  # no error: the checkout ping found it dead
    engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(postgres_url):
    """The saving under load, and its price: a connection that dies within the idle
    window fails its next statement (one error, then the pool replaces it)."""
    engine = make_engine(postgres_url, ping_after_idle_s=60)
    first = backend_pid(engine)
    kill_backend(first)
    with pytest.raises(OperationalError):
        backend_pid(engine)  # not pinged: the dead connection was used as it was
    assert backend_pid(engine) != first
    engine.dispose()


def test_only_a_database_that_cannot_be_reached_counts_as_unreachable(tmp_path):
    """Down, restarting or cut off: try again later (503). A statement the database
    refuses (SQLite's lock, a missing table, a deadlock) is not that."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from services.database import make_engine, unreachable
    from tests.helpers import free_port

    def error_of(url: str, statement: str) -> DBAPIError:
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                connection.execute(text(statement))
        except DBAPIError as error:
            return error
        finally:
            engine.dispose()
        raise AssertionError("no error")

    nobody_listens = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    assert unreachable(error_of(nobody_listens, "SELECT 1"))
    assert not unreachable(error_of(f"sqlite:///{tmp_path / 'x.db'}", "SELECT * FROM missing"))
    if postgres_available():
        assert not unreachable(error_of(POSTGRES_ADMIN, "SELECT * FROM missing"))
        assert not unreachable(error_of(POSTGRES_ADMIN, "SET statement_timeout = 1; SELECT pg_sleep(1)"))
        # The server ending the session (57P01, as a shutdown or a proxy's restart does).
        assert unreachable(error_of(POSTGRES_ADMIN, "SELECT pg_terminate_backend(pg_backend_pid())"))
    assert not unreachable(ValueError("not a database error"))


def test_a_sqlite_writer_waits_for_the_lock_as_long_as_its_url_says(tmp_path):
    """30 s by default; `?timeout=` (seconds) for a caller that must fail sooner."""
    default = make_engine(f"sqlite:///{tmp_path / 'nested' / 'jobs.db'}")
    short = make_engine(f"sqlite:///{tmp_path / 'nested' / 'jobs.db'}?timeout=0.3")
    with default.connect() as holder, short.connect() as waiter:
        assert holder.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert waiter.exec_driver_sql("PRAGMA busy_timeout").scalar() == 300
        holder.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        holder.commit()
        holder.exec_driver_sql("INSERT INTO t VALUES (1)")  # holds the write lock
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            waiter.exec_driver_sql("INSERT INTO t VALUES (2)")
        assert time.monotonic() - started > 0.25  # it waited, then gave up
    assert (tmp_path / "nested" / "jobs.db").exists()  # its folder made, not one named after the query
