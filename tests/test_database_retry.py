"""The one retry policy for database work: lost races and connections run again, bugs do not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.database import retrying
from pipeline.errors import Unreachable


class ServerError(Exception):
    """What psycopg raises: the SQLSTATE in ``sqlstate``."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server said {sqlstate}")
        self.sqlstate = sqlstate


def flaky(errors: list[Exception]) -> tuple[list[int], object]:
    """A unit of work that fails with each of ``errors`` in turn, then succeeds."""
    calls: list[int] = []

    @retrying(seconds=10)
    def work() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    return calls, work


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("UPDATE tasks", {}, ServerError("40P01")),  # deadlock_detected
        OperationalError("UPDATE tasks", {}, ServerError("40001")),  # serialization_failure
        OperationalError("SELECT 1", {}, ServerError("08006"), connection_invalidated=True),
        Unreachable("database unreachable at postgresql://..."),
    ],
    ids=["deadlock", "serialization", "connection", "unreachable"],
)
def test_a_lost_race_or_connection_runs_the_work_again(error: Exception) -> None:
    calls, work = flaky([error, error])
    assert work() == "done"
    assert len(calls) == 3


def test_an_error_that_would_repeat_is_raised_at_once() -> None:
    violation = IntegrityError("INSERT INTO tasks", {}, ServerError("23505"))
    calls, work = flaky([violation])
    with pytest.raises(IntegrityError):
        work()
    assert len(calls) == 1
