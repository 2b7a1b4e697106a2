"""Leases: how the monitor tells work that is slow from work whose worker is gone.

A running subtask's lease is its ``heartbeat_at``, renewed by the supervising worker
process (``algorithms.Heartbeat``). A marshal or store, which runs in the worker itself
and may take minutes on a large task, holds a lease on its task's step instead: a thread
renews the task's ``updated_at`` while the step works. A step whose lease is older than
``stale_after`` lost its worker, and the monitor starts it again.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from sqlalchemy import update

from config.settings import get_settings
from pipeline.database import transaction
from pipeline.models import Task, utcnow
from pipeline.states import PState

log = logging.getLogger(__name__)

#: Renewals per lease period: two may be missed (a database hiccup) before the lease lapses.
RENEWALS_PER_LEASE = 3


def renewal_interval() -> float:
    """Seconds between renewals of a step lease, well inside the monitor's staleness limit."""
    settings = get_settings()
    return min(settings.lease_seconds, settings.stale_after) / RENEWALS_PER_LEASE


class StepLease:
    """Keeps a task's claim on ``step`` fresh while a marshal or store works on it.

    Parameters:
      task_id: the task whose step is claimed.
      attempt: the attempt that claimed it; a renewal that finds the task at another
        attempt, step or with its error flag set changes nothing.
      step: the P-state the claim is on (MARSHALING or STORING).
      interval: seconds between renewals (``renewal_interval()`` when not given).

    A failed renewal is logged, not raised: the step's own work goes on, and at worst the
    monitor starts the step again under a fence that makes this one's result a no-op.
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
