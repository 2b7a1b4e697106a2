"""Reclaiming work whose lease lapsed: the worker (or its host) holding it is gone.

A running subtask renews its lease while its algorithm runs, and a marshal renews its
step's lease while it builds the task directory (``pipeline.engine.leases``). Beat's
reconciler finds the leases that lapsed and calls these, each under the task's lock and
fence, so work that was only slow, not lost, is left alone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from pipeline.domain.lifecycle import EXECUTION_STEPS, Event, PState
from pipeline.domain.models import Subtask
from pipeline.domain.states import SubtaskState
from pipeline.engine.alerts import ERROR, WARNING, raise_alert
from pipeline.engine.executors import executor
from pipeline.engine.leases import Claim
from pipeline.engine.locks import lock_task, lock_task_only
from pipeline.engine.runner import SubtaskOutcome
from pipeline.engine.stages import finish_subtasks
from pipeline.engine.task_state import is_current, move, send_waiting
from pipeline.engine.task_state import note as add_note
from pipeline.messaging import outbox
from pipeline.messaging.publisher import publisher
from pipeline.settings import get_settings

#: The error of a subtask whose worker was lost more often than it may be dispatched again.
WORKER_LOST = "worker lost"


def reclaim_lost(task_id: int, index: int, number: int, lease_expired_before: datetime) -> str:
    """A running subtask whose lease expired lost its worker: run it again, or fail it.

    It is dispatched again while its automatic retries last (``lost_subtask_retries``),
    under a new dispatch number so a late outcome from the lost run is ignored; then it
    fails with reason 'worker lost'. Returns what was done.
    """
    with outbox.transaction() as (session, messages):
        task = lock_task_only(session, task_id)
        subtask = session.scalars(
            select(Subtask).where(Subtask.task_id == task_id, Subtask.index == index)
        ).one()
        lost = (
            not task.error
            and task.p_state in EXECUTION_STEPS
            and subtask.state == SubtaskState.RUNNING
            and subtask.dispatch == number
            and subtask.heartbeat_at is not None
            and subtask.heartbeat_at < lease_expired_before
        )
        if not lost:
            return "alive"
        attempt = task.attempt
        again = subtask.attempts <= get_settings().lost_subtask_retries
        if again:
            executor(task.settings.executor).redispatch(session, task, [subtask], messages)
            note = f"subtask {index}: worker lost, dispatched again"
            task.lost_work_recoveries += 1
            add_note(session, task, note)
            worker = subtask.worker_host or "?"
            alert = f"subtask {index}: worker {worker} lost, dispatched again"
            raise_alert(session, task, WARNING, alert)
        else:
            alert = f"subtask {index}: worker lost {subtask.attempts} times, failed"
            raise_alert(session, task, ERROR, alert)
    if again:
        return "redispatched"
    lost_run = Claim(task_id, attempt, index, number)
    finished = finish_subtasks([(lost_run, SubtaskOutcome(False, WORKER_LOST))])
    if finished.messages:
        publisher().publish(finished.messages)
    return "failed"


def marshal_again(task_id: int, attempt: int, lease_expired_before: datetime) -> bool:
    """A marshal whose lease expired lost its worker mid-step: marshal under a new attempt.

    The new attempt gets a task directory of its own, so a marshal that was only slow,
    not dead, can neither clear the new one's files nor record its subtasks (its attempt
    no longer matches). Returns whether the task was marshaled again.
    """
    with outbox.transaction() as (session, messages):
        instance, task = lock_task(session, task_id)
        if not (
            is_current(task, attempt, PState.MARSHALING) and task.updated_at < lease_expired_before
        ):
            return False
        message = f"marshaling lost on {task.worker_host or '?'}, marshaling again"
        move(session, task, Event.MARSHAL_LOST, f"{message} (reconciler)", instance=instance)
        task.lost_work_recoveries += 1
        raise_alert(session, task, WARNING, message)
        send_waiting(messages, task)
    return True
