"""SQLite's write lock, as the processes of one home share it."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

#: How long the other writer holds the lock: SQLite's own busy handler would have slept
#: 1, 2, 5, 10, 15, 20, 25 and 25 ms by then (103 ms), and would sleep 25 more.
HELD_SECONDS = 0.11
#: How late the waiting transaction may begin once the lock is free.
LATE_SECONDS = 0.01


def test_a_transaction_begins_as_soon_as_another_processs_write_ends(home: Path) -> None:
    """A transaction that waits for another connection's write transaction begins within
    milliseconds of its end, not at the next step of SQLite's own backoff (which sleeps
    up to 100 ms a try, the lock long free)."""
    from pipeline.database import transaction

    database = home / "pipeline.db"
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    waiting, begun = threading.Event(), []

    def wait_to_write() -> None:
        waiting.set()
        with transaction() as session:
            session.execute(text("SELECT 1"))  # the transaction begins with its first statement
            begun.append(time.monotonic())

    waiter = threading.Thread(target=wait_to_write)
    waiter.start()
    assert waiting.wait(10)
    time.sleep(HELD_SECONDS)  # the other writer's work, the lock held
    assert not begun, "began while another transaction held the lock"
    other.execute("COMMIT")
    ended = time.monotonic()
    waiter.join(10)
    other.close()
    assert begun and begun[0] - ended < LATE_SECONDS, (begun, ended)


def test_a_transaction_that_waits_too_long_for_the_lock_is_refused_as_before(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the busy timeout, a transaction that could not begin fails with SQLAlchemy's
    ``database is locked``, as it always did (``retrying`` does not run it again)."""
    from pipeline import database

    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    other = sqlite3.connect(home / "pipeline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with (
            pytest.raises(OperationalError, match="database is locked") as refused,
            database.transaction() as session,
        ):
            session.execute(text("SELECT 1"))
        assert not database.is_retryable(refused.value)
    finally:
        other.close()
