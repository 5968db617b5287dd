"""Waking the dispatcher at once, instead of at its next poll.

The dispatcher waits between ticks (Dispatcher.pause) for at most its poll interval,
and less when something is there to do:

- a job was submitted, or a cancel requested: the API says so after its commit,
  - in the same process (`crossfold serve`): through a Wakeup the API and the dispatcher
    share (an in-process signal);
  - in any process, on PostgreSQL: `announce` NOTIFYs CHANNEL in the committing
    transaction (PostgreSQL delivers it on commit, and drops it on rollback), and the
    dispatcher's Listener, a connection of its own that LISTENs, wakes its Wakeup;
- one of the dispatcher's fold tasks returned (Cluster.wait_any, in Dispatcher.pause);
- the dispatcher itself collected folds: the room they held goes to queued jobs at once.

SQLite has no such channel between processes: `crossfold api` and `crossfold dispatcher`
on SQLite find each other's work by polling alone. The poll stays everywhere as the
fallback: for what no one announces (a job put back until later), and while the
Listener reconnects after a database restart.
"""
from __future__ import annotations

import logging
import threading

import psycopg
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from services.database import CONNECT_TIMEOUT_S, Reachability

log = logging.getLogger(__name__)

CHANNEL = "crossfold_jobs"
RECONNECT_S = 1.0  # a lost listening connection is made again after this
LISTEN_SLICE_S = 1.0  # how often the listener looks whether it was stopped
# A listening connection is silent: TCP keepalives find a peer that is gone without a
# word (a network cut) in about 20 s, instead of never.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 2}


class Wakeup:
    """A signal that ends the dispatcher's wait. Notifications that arrive while it
    ticks are not lost: the next wait returns at once (the signal stays set until then)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def notify(self) -> None:
        self.event.set()

    def wait(self, timeout_s: float) -> bool:
        """Whether it was notified, within `timeout_s`; it is then reset. A notification
        landing between the wait and the reset is not needed again: it was sent after a
        commit, which the tick that follows sees."""
        if not self.event.wait(timeout_s):
            return False
        self.event.clear()
        return True


def announce(session: Session) -> None:
    """Tell every listening dispatcher, when this transaction commits, that the queue
    changed. PostgreSQL only; on SQLite, nothing (see the module's docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, "")))


def listener_for(engine: Engine, wakeup: Wakeup) -> Listener | None:
    """A started Listener on the engine's database, when it is PostgreSQL."""
    if engine.dialect.name != "postgresql":
        return None
    # The engine's own URL (user, password, host, options) as psycopg reads it.
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return Listener(conninfo, wakeup).start()


class Listener:
    """A connection of its own, outside the engine's pool, that LISTENs on CHANNEL in a
    daemon thread and wakes `wakeup` at each notification. When the database goes away
    (a restart) it connects again every RECONNECT_S, saying so once in the log, and wakes
    the dispatcher each time it is listening again: what was committed while no one
    listened is looked at then. Meanwhile the dispatcher polls."""

    def __init__(self, conninfo: str, wakeup: Wakeup):
        self.conninfo, self.wakeup = conninfo, wakeup
        self.listening = threading.Event()  # set while LISTEN is in force
        self.stopped = threading.Event()
        self.database = Reachability(log, "job listener")
        self.thread = threading.Thread(target=self.run, daemon=True, name="crossfold-listener")

    def start(self) -> Listener:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, within LISTEN_SLICE_S."""
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.listen()
            except Exception as error:
                self.lost(error)
            finally:
                self.listening.clear()
            self.stopped.wait(RECONNECT_S)

    def lost(self, error: Exception) -> None:
        """Say why it stopped listening (it tries again), once while the database is gone."""
        if self.stopped.is_set():
            return  # its connection closed under it as the service stops: nothing to say
        if isinstance(error, psycopg.OperationalError):
            self.database.failed(error)
        else:
            log.exception("the job listener failed; listening again in %.0f s", RECONNECT_S)

    def listen(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                             **KEEPALIVES) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self.database.succeeded()
            self.wakeup.notify()  # for what was committed before this LISTEN
            self.listening.set()
            while not self.stopped.is_set():
                for _ in connection.notifies(timeout=LISTEN_SLICE_S):
                    self.wakeup.notify()
