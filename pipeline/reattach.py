"""Reattaching monitoring to an executing task: keep live work, dispatch lost work again.

The database says which subtasks are queued or running; the broker and the workers say
which of their messages still exist. A subtask whose message is in neither place was
lost (a broker restarted without its queue, a message dropped) and is dispatched again
under a new dispatch number. Used on demand by the resume-monitoring restart mode and
by beat's monitor for executing tasks that have gone quiet.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import dispatch, inflight
from pipeline.alerts import WARNING, raise_alert
from pipeline.database import transaction
from pipeline.engine import assign_messages
from pipeline.errors import Refused
from pipeline.models import Subtask
from pipeline.states import EXECUTION_STEPS, PState, SubtaskState
from pipeline.tasks import in_flight_subtasks, lock_task_only, message_id, record


@dataclass(frozen=True)
class Reattached:
    alive: int
    lost: list[int]

    @property
    def summary(self) -> str:
        return f"{self.alive} alive, {len(self.lost)} lost"


def reattach(
    task_id: int, attempt: int, live: inflight.InFlight, note: str, quiet: bool = False
) -> Reattached:
    """Check every in-flight subtask of the task against ``live`` (read from its queue).

    ``note`` prefixes the history entry; with ``quiet`` (beat's routine check) the history
    is written only when something was lost.
    """
    with transaction() as session:
        task = lock_task_only(session, task_id)
        if task.attempt != attempt or task.error or task.p_state not in EXECUTION_STEPS:
            raise Refused(f"task {task_id} changed while monitoring was resumed: try again")
        in_flight = in_flight_subtasks(session, task_id)
        lost = [s for s in in_flight if _lost(task_id, attempt, s, live)]
        for subtask in lost:
            subtask.state, subtask.dispatch = SubtaskState.QUEUED, subtask.dispatch + 1
        session.flush()
        queued = [(s.index, s.dispatch) for s in lost]
        execution = dict(task.execution)
        resend = assign_messages(session, task_id, attempt, queued, execution, task.total_subtasks)
        finished = (
            not in_flight and task.completed_subtasks + task.failed_subtasks >= task.total_subtasks
        )
        result = Reattached(len(in_flight) - len(lost), [s.index for s in lost])
        step = PState.ALGORITHM_COMPLETE if finished else PState(task.p_state)
        if lost or finished or not quiet:
            record(session, task, step, f"{note}, {result.summary}")
        if lost:
            raise_alert(
                session,
                task,
                WARNING,
                f"{len(lost)} subtask messages lost ({note}): dispatched again",
            )
    if resend:
        dispatch.send_subtasks(task_id, attempt, resend, execution)
    if finished:
        dispatch.send(dispatch.MONITOR, [task_id, attempt], execution)
    return result


def _lost(task_id: int, attempt: int, subtask: Subtask, live: inflight.InFlight) -> bool:
    """Is the subtask's message nowhere alive?

    A running subtask whose worker did not answer in time is given the benefit of the
    doubt: dispatching it again could run it twice at once in the same directory (its
    lease decides, see ``engine.reclaim_lost``).
    """
    if message_id(task_id, attempt, subtask) in live.message_ids:
        return False
    return subtask.state == SubtaskState.QUEUED or subtask.worker_host in live.workers
