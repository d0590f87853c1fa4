"""How idle workers and waiters hear of work: the wake-up shared by this process's workers, and on
PostgreSQL the notification channels and the thread that ``LISTEN``s on them.

Idle workers wake through ``LISTEN``/``NOTIFY`` on PostgreSQL (sent in the transaction that
queues a task, not by a trigger) and fall back to polling; on SQLite they poll with backoff, and
tasks queued by the same process wake them at once.

Every task recorded in a final status is published to the backend's ``completions`` after the
commit, so ``Processor.wait`` in this process returns at once. On PostgreSQL the recording
statement also notifies the ``imageproc_done`` channel with the task's id, and one listening
connection per backend (the same one that wakes idle workers) publishes what other processes
finished; on SQLite, ends recorded by another process are found by the waiters' short poll
(:data:`SQLITE_WAIT_POLL`).
"""

from __future__ import annotations

import logging
import threading
from typing import Final

import sqlalchemy as sa

from imageproc.delivery._completions import Completions

__all__ = [
    "CHANNEL",
    "DONE_CHANNEL",
    "LISTEN_TIMEOUT",
    "SQLITE_WAIT_POLL",
    "UNHEARD_POLL",
    "Listener",
    "Wakeup",
]

logger = logging.getLogger("imageproc.sql")

CHANNEL = "imageproc_tasks"
#: Notified with a task's id when it ends (PostgreSQL).
DONE_CHANNEL = "imageproc_done"
#: Seconds between a waiter's reads of its task where ends are not pushed: SQLite written by
#: another process, or PostgreSQL while the listener is not connected.
SQLITE_WAIT_POLL: Final = 0.1
UNHEARD_POLL: Final = 0.25
#: PostgreSQL, listening: a waiter still reads its task this often, for ends nobody notified
#: (a row changed by hand in SQL, a pooler in transaction mode that drops LISTEN).
_SAFETY_POLL: Final = 5.0
#: Seconds a first waiter waits for the listener to connect before it falls back to polling.
LISTEN_TIMEOUT: Final = 5.0


class Wakeup:
    """Wakes idle workers: after a commit that queued work (this process), or on a notification
    (PostgreSQL). Each thread notes the wake-up count when it claims, so a wake-up that arrives
    between its empty claim and its wait is not missed. Between wake-ups, waits poll, backing off
    from 50 ms to the poll interval while the queue stays empty."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self._generation = 0
        self._local = threading.local()

    def wake(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def mark(self) -> None:
        """Note the wake-up count as this thread starts a claim."""
        self._local.seen = self._generation

    def claimed(self) -> None:
        """This thread found work: poll eagerly again next time the queue runs dry."""
        self._local.backoff = _FIRST_POLL

    def wait(self, timeout: float, poll_interval: float) -> None:
        backoff = getattr(self._local, "backoff", _FIRST_POLL)
        self._local.backoff = min(backoff * 2, poll_interval)
        with self._changed:
            seen = getattr(self._local, "seen", self._generation)
            self._changed.wait_for(lambda: self._generation != seen, timeout=min(timeout, backoff))
            self._local.seen = self._generation


_FIRST_POLL = 0.05


class Listener(threading.Thread):
    """LISTENs on its own autocommit psycopg connection: a queued task wakes idle workers, an
    ended one is published to the waiters. Reconnects with backoff when the server goes away;
    while it is not listening, waiters poll (:data:`UNHEARD_POLL`)."""

    def __init__(self, url: sa.URL, wakeup: Wakeup, completions: Completions) -> None:
        super().__init__(name="imageproc-listener", daemon=True)
        self._conninfo = _libpq_conninfo(url)
        self._wakeup = wakeup
        self._completions = completions
        self._stopping = threading.Event()
        #: Set once the first attempt to listen has ended, listening or not.
        self.tried = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        import psycopg

        delay, reconnecting = 0.1, False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {DONE_CHANNEL}")
                    delay = 0.1
                    self._completions.poll_interval = _SAFETY_POLL  # every end is heard now
                    self.tried.set()
                    if reconnecting:
                        # For anything queued or ended while we were not listening.
                        self._wakeup.wake()
                        self._completions.publish_all()
                    reconnecting = True
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=1.0, stop_after=1):
                            if notice.channel == DONE_CHANNEL:
                                self._completions.publish(((notice.payload, None),))
                            else:
                                self._wakeup.wake()
            except Exception as error:  # psycopg's errors, and anything else: listen again
                reconnecting = True
                self._completions.poll_interval = UNHEARD_POLL
                self.tried.set()
                # Waiters asleep on the push: have them read, and poll until it is back.
                self._completions.publish_all()
                logger.warning("listener lost its connection (%s); retrying", _first_line(error))
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)


def _libpq_conninfo(url: sa.URL) -> str:
    """The libpq connection string of a SQLAlchemy URL, its query (``options``, ``sslmode``, …)
    passed as parameters: rendered as a URL, a space in ``options`` would reach the server as
    ``+``."""
    import psycopg

    query = {
        key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()
    }
    parameters = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        **query,
    }
    return psycopg.conninfo.make_conninfo(
        "", **{key: value for key, value in parameters.items() if value is not None}
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
