"""Engine, sessions and schema migrations for SQLite (embedded default) and PostgreSQL."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


# A pooled connection idle for longer than this is checked before use (see ping_if_idle).
PING_AFTER_IDLE_S = 1.0
# How long a SQLite writer waits for the write lock before failing ("database is
# locked"); `?timeout=<seconds>` in the URL sets it, as Python's sqlite3 takes it.
SQLITE_LOCK_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 5


def make_engine(url: str, ping_after_idle_s: float = PING_AFTER_IDLE_S) -> Engine:
    if url.startswith("sqlite"):
        parsed = make_url(url)
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        wait_s = float(parsed.query.get("timeout", SQLITE_LOCK_WAIT_S))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": wait_s})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    # More connections than SQLAlchemy's default 5 + 10: an API process holds one per
    # handler thread (CROSSFOLD_API_THREADS, which may be raised), one for its batch writer
    # and one per key lookup in flight, and a request waiting for a connection holds a thread.
    # A server that does not answer at all (a network cut) fails the connection in seconds,
    # so requests answer 503 instead of hanging.
    engine = create_engine(_with_driver(url), pool_size=10, max_overflow=40,
                           connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", lambda *args: ping_if_idle(*args, after_s=ping_after_idle_s))
    return engine


def _note_checkin(_dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def ping_if_idle(dbapi_connection, record, _proxy, *, after_s: float) -> None:
    """Check a pooled connection before use, but only one that sat idle: a database
    restart or an idle timeout kills connections at rest, while one that was in use a
    moment ago is alive. Under load this skips a round trip on nearly every request
    (pool_pre_ping would ping each time). DisconnectionError makes the pool replace the
    connection with a fresh one."""
    idle_since = record.info.get("checked_in_at")  # absent on a connection just opened
    if idle_since is None or time.monotonic() - idle_since < after_s:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()  # end the transaction the ping began
    except Exception as error:
        raise DisconnectionError("pooled connection is dead") from error


def _with_driver(url: str) -> str:
    """postgresql://… uses psycopg 3, the driver this project installs."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _tune_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the dispatcher writes (a writer waits for the lock:
    # sqlite3's timeout, make_engine's wait_s).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database to the newest migration, or to `revision` (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def unreachable(error: BaseException) -> bool:
    """Whether the database could not be reached (down, restarting, the network), so that
    trying again later is the answer: a connection that broke under a statement (SQLAlchemy
    invalidates it), or one that could not be made. A statement the database refused
    (a deadlock, a timeout, SQLite's lock) is not that."""
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or (isinstance(error, OperationalError) and error.statement is None)
        or lost_connection(getattr(error.orig, "sqlstate", None) or ""))


def lost_connection(sqlstate: str) -> bool:
    """PostgreSQL's own word for it, whatever the driver made of the connection: class 08
    (connection exception), or the server shutting down or terminating the session
    (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now). A proxy in
    front of the database may pass these on a connection it keeps open."""
    return sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}


def reason(error: BaseException) -> str:
    """The driver's first line, without SQLAlchemy's statement and links."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]


class Reachability:
    """Whether the database answered last time, logged once when it goes away and once
    when it is back, however many requests or ticks fail in between."""

    def __init__(self, log: logging.Logger, who: str):
        self.log, self.who, self.down_since = log, who, None
        self.lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        with self.lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.log.warning("%s: the database is unreachable (%s); retrying", self.who, reason(error))

    def succeeded(self) -> None:
        if self.down_since is None:  # the usual case, without taking the lock
            return
        with self.lock:
            if self.down_since is not None:
                self.log.warning("%s: the database is reachable again, after %.0f s", self.who,
                                 time.monotonic() - self.down_since)
                self.down_since = None
