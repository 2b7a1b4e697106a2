"""Reattaching monitoring to an executing task: keep live work, dispatch lost work again.

The database says which subtasks are queued or running; the broker and the workers say
which of their messages still exist (``Publisher.in_flight``). A subtask whose
message is in neither place was lost (a broker restarted without its queue, a message
dropped) and is dispatched again under a new dispatch number. Used on demand by the
resume-monitoring restart mode and by beat's reconciler for executing tasks gone quiet.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.domain.lifecycle import EXECUTION_STEPS, Event
from pipeline.domain.models import Task
from pipeline.engine.alerts import WARNING, raise_alert
from pipeline.engine.executors import executor, in_flight_subtasks
from pipeline.engine.locks import lock_task_only
from pipeline.engine.task_state import is_current, move, send_waiting
from pipeline.engine.task_state import note as add_note
from pipeline.errors import Refused
from pipeline.messaging import outbox
from pipeline.messaging.messages import InFlight
from pipeline.messaging.outbox import Outbox


@dataclass(frozen=True)
class Reattached:
    alive: int
    lost: list[int]

    @property
    def summary(self) -> str:
        return f"{self.alive} alive, {len(self.lost)} lost"


def reattach(
    task_id: int, attempt: int, live: InFlight, note: str, quiet: bool = False
) -> Reattached:
    """``reattach_locked`` in a transaction of its own; Refused if the task moved on."""
    with outbox.transaction() as (session, messages):
        task = lock_task_only(session, task_id)
        if not is_current(task, attempt, *EXECUTION_STEPS):
            raise Refused(f"task {task_id} changed while monitoring was resumed: try again")
        return reattach_locked(session, task, live, note, messages, quiet)


def reattach_locked(
    session: Session, task: Task, live: InFlight, note: str, messages: Outbox, quiet: bool = False
) -> Reattached:
    """Check every in-flight subtask of the locked, executing ``task`` against ``live`` (read
    from its queue), and dispatch the lost ones again.

    ``note`` prefixes the history entry; with ``quiet`` (beat's routine check) the history
    is written only when something was lost.
    """
    in_flight = in_flight_subtasks(session, task.id)
    running_on = executor(task.settings.executor)
    lost = running_on.lost(task, in_flight, live)
    running_on.redispatch(session, task, lost, messages)
    finished = (
        not in_flight and task.completed_subtasks + task.failed_subtasks >= task.total_subtasks
    )
    result = Reattached(len(in_flight) - len(lost), [s.index for s in lost])
    if finished:
        move(session, task, Event.ENDED, f"{note}, {result.summary}")
    elif lost or not quiet:
        add_note(session, task, f"{note}, {result.summary}")
    if lost:
        alert = f"{len(lost)} subtask messages lost ({note}): dispatched again"
        raise_alert(session, task, WARNING, alert)
    if finished:
        send_waiting(messages, task)
    return result
