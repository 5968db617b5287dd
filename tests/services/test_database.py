"""The PostgreSQL connection pool: dead connections are replaced, live ones not pinged."""
import time

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from services.database import make_engine
from tests.helpers import POSTGRES_ADMIN, fresh_database


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
