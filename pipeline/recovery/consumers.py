"""Queues nobody consumes: work routed to a queue no live worker listens on waits for
ever, and nothing else would say why. The reconciler asks the workers which queues they
consume whenever work has waited ``stale_after`` on some queue; a queue with waiting work
and no consumer is an alert naming it and how to serve it, raised once while it lasts and
cleared when a worker consumes it (or nothing waits on it any more, however recently sent).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, case, cast, func, literal, select

from pipeline.database import transaction
from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import EXECUTION_STEPS, WAITING
from pipeline.domain.models import Alert, Task
from pipeline.engine import alerts
from pipeline.errors import Unreadable
from pipeline.messaging.publisher import publisher
from pipeline.recovery.isolation import decode_execution

#: The cause of a queue's alert: this prefix and the queue's name.
CAUSE = "queue:"


@dataclass
class Waiting:
    """The tasks waiting on one queue."""

    tasks: int = 0
    #: Of them, those with no news since the cutoff asked for.
    stale: int = 0
    oldest: datetime | None = None


def waiting_tasks(cutoff: datetime | None = None) -> dict[str, Waiting]:
    """The tasks waiting on each queue (in a step whose message a worker of the queue
    takes, or executing): how many, how many had no news since ``cutoff``, and when the
    oldest last had news. Grouped by their stored settings in the database, so that each
    distinct settings text is decoded once (10,000 tasks of one node share one)."""
    stale = case((Task.updated_at < cutoff, 1), else_=0) if cutoff is not None else literal(0)
    execution = cast(Task.execution, Text)
    with transaction() as session:
        groups = session.execute(
            select(execution, func.count(), func.sum(stale), func.min(Task.updated_at))
            .where(Task.p_state.in_([*WAITING, *EXECUTION_STEPS]), ~Task.error)
            .group_by(execution)
        ).all()
    by_queue: dict[str, Waiting] = {}
    for stored, count, stale_count, oldest in groups:
        try:
            queue = ExecutionSettings.stored(decode_execution(stored)).queue
        except Unreadable:
            continue  # the reconciler fails that task on its own
        found = by_queue.setdefault(queue, Waiting())
        found.tasks += count
        found.stale += int(stale_count or 0)
        found.oldest = oldest if found.oldest is None else min(found.oldest, oldest)
    return by_queue


def waiting_queues(cutoff: datetime) -> tuple[Counter[str], set[str]]:
    """How many tasks have waited since before ``cutoff`` on each queue, and every queue
    some task waits on now, however recently it was sent there."""
    waiting = waiting_tasks(cutoff)
    return Counter({q: w.stale for q, w in waiting.items() if w.stale}), set(waiting)


#: When the workers were last asked, and what they said (this process's): asked at most
#: once every ``stale_after`` (each asking waits a second for the slowest worker).
_asked: tuple[float, set[str] | None] = (float("-inf"), None)


def watch(cutoff: datetime, every: float) -> set[str]:
    """Raise and clear the queues' alerts (module docstring), asking the workers at most
    once every ``every`` seconds; the queues with waiting work and no consumer."""
    global _asked
    waiting, waited_on = waiting_queues(cutoff)
    if not waiting:
        consumed: set[str] | None = set()
    elif time.monotonic() - _asked[0] < every:
        consumed = _asked[1]
    else:
        consumed = publisher().consumed_queues()
        _asked = (time.monotonic(), consumed)
    if consumed is None:
        return set()
    unconsumed = {queue for queue in waiting if queue not in consumed}
    with transaction() as session:
        for queue in sorted(unconsumed):
            count = waiting[queue]
            alerts.raise_once(
                session,
                f"{CAUSE}{queue}",
                alerts.ERROR,
                f"no worker consumes queue {queue!r}: {count} task{'s' if count > 1 else ''}"
                f" wait{'' if count > 1 else 's'} on it (start one: pipeline worker --queues"
                f" {queue})",
            )
        open_causes = session.scalars(
            select(Alert.cause).where(Alert.cause.startswith(CAUSE), Alert.cleared_at.is_(None))
        ).all()
        for cause in open_causes:
            queue = cause.removeprefix(CAUSE)
            # A task sent there again lately waits all the same: only a consumer, or
            # nothing waiting at all, ends the episode.
            if queue not in unconsumed and (queue in consumed or queue not in waited_on):
                alerts.clear(session, cause)
    return unconsumed
