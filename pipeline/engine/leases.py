"""Leases: how beat's reconciler tells work that is slow from work whose worker is gone.

A running subtask's lease is its ``heartbeat_at``, renewed by the supervising worker
process (``LeaseRenewal``), never by the algorithm. A marshal or store, which runs in the
worker itself and may take minutes on a large task, holds a lease on its task's step
instead (``StepLease``): a thread renews the task's ``updated_at`` while the step works.
A lease older than its limit lost its worker, and the reconciler starts the work again
(``pipeline.recovery.reclaim``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import NamedTuple

from sqlalchemy import tuple_, update

from pipeline.database import transaction
from pipeline.domain.lifecycle import PState
from pipeline.domain.models import Subtask, Task, utcnow
from pipeline.domain.states import SubtaskState
from pipeline.settings import get_settings

log = logging.getLogger(__name__)

#: Renewals per lease period: two may be missed (a database hiccup) before the lease lapses.
RENEWALS_PER_LEASE = 3


def renewal_interval() -> float:
    """Seconds between renewals of a step lease, well inside the reconciler's staleness limit."""
    settings = get_settings()
    return min(settings.lease_seconds, settings.stale_after) / RENEWALS_PER_LEASE


class Claim(NamedTuple):
    """One dispatch of a subtask, as its message carries it and a worker claims it: the
    task, the task's attempt, the subtask's index and its dispatch number."""

    task_id: int
    attempt: int
    index: int
    number: int

    @property
    def subtask(self) -> tuple[int, int]:
        """The subtask it claims: (task, index)."""
        return self.task_id, self.index


def renew_subtask_leases(claims: Sequence[Claim]) -> set[tuple[int, int]]:
    """Renew the leases of the subtasks a worker claimed with one message (one statement,
    no task lock); the (task, index) of those still running: the others are no longer
    this worker's (halted, restarted or reclaimed meanwhile), and need not run."""
    with transaction() as session:
        renewed = session.execute(
            update(Subtask)
            .where(
                tuple_(Subtask.task_id, Subtask.index, Subtask.dispatch).in_(
                    [(c.task_id, c.index, c.number) for c in claims]
                ),
                Subtask.state == SubtaskState.RUNNING,
            )
            .values(heartbeat_at=utcnow())
            .returning(Subtask.task_id, Subtask.index)
        )
        return {(task_id, index) for task_id, index in renewed}


class LeaseRenewal:
    """Renews running subtasks' leases from the supervising process, never the algorithm.

    Parameters:
      renew: records the heartbeat (a database update); its errors are logged, not raised,
        so a database hiccup never kills a running algorithm. It returns False when the
        work is no longer this worker's (``stopped``): a halt could not terminate it, since
        its message carries other tasks' subtasks too (a ``GROUP``).
      interval: seconds between renewals; the supervising loops wake at least this often.
    """

    def __init__(self, renew: Callable[[], bool | None], interval: float) -> None:
        self.renew = renew
        self.interval = interval
        self.stopped = False
        self._next = time.monotonic() + interval

    def tick(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        try:
            self.stopped = self.renew() is False
        except Exception:  # noqa: BLE001 - see the class docstring
            log.exception("heartbeat not recorded")


#: A heartbeat that never renews anything (tests, one-off runs).
NO_RENEWAL = LeaseRenewal(lambda: None, 3600.0)


class StepLease:
    """Keeps a task's claim on ``step`` fresh while a marshal or store works on it.

    Parameters:
      task_id: the task whose step is claimed.
      attempt: the attempt that claimed it; a renewal that finds the task at another
        attempt, step or with its error flag set changes nothing.
      step: the P-state the claim is on (MARSHALING or STORING).
      interval: seconds between renewals (``renewal_interval()`` when not given).

    A failed renewal is logged, not raised: the step's own work goes on, and at worst the
    reconciler starts the step again under a fence that makes this one's result a no-op.
    """

    def __init__(
        self, task_id: int, attempt: int, step: PState, interval: float | None = None
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.step = step
        self.interval = interval or renewal_interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True)

    def __enter__(self) -> StepLease:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - see the class docstring
                log.exception("task %s: lease on %s not renewed", self.task_id, self.step)

    def renew(self) -> None:
        with transaction() as session:
            session.execute(
                update(Task)
                .where(
                    Task.id == self.task_id,
                    Task.attempt == self.attempt,
                    Task.p_state == self.step,
                    ~Task.error,
                )
                .values(updated_at=utcnow())
            )
