"""Halting tasks: queued work dropped, running subtasks revoked, the error flag set.

Halting bumps the task's attempt, so every message of its chain already on the broker or
on a worker becomes a no-op, and terminates the worker processes running its subtasks
(their algorithms die with them). A message that carries other tasks' subtasks too
(a ``GROUP``) is not terminated: the worker running it skips this task's subtask
once a record of outcomes or a lease renewal shows it the halt, or stops it at its next
lease renewal if it is running (``stages.run_subtasks``). The task keeps its P-state, gets the error
flag and the halted mark, and can be restarted in any mode.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from pipeline.database import transaction
from pipeline.domain.lifecycle import Event, PState, state_label
from pipeline.domain.models import PipelineInstance, Task
from pipeline.domain.states import SubtaskState
from pipeline.engine.executors import executor, in_flight_subtasks
from pipeline.engine.locks import lock_task
from pipeline.engine.task_state import move, set_subtask_states
from pipeline.errors import NotFound, Refused, Unreachable
from pipeline.messaging.outbox import Outbox, send
from pipeline.operations.outcomes import Outcome, Report

HALTED = "halted by operator"
#: The outcome's mode for a halt.
HALT = "halt"


def halt(task_ids: Sequence[int]) -> Report:
    """Halt each task; refusals (unknown, already stopped, complete) are reported."""
    outcomes = []
    for task_id in task_ids:
        try:
            outcomes.append(_halt_one(task_id))
        except (Refused, NotFound) as exc:
            outcomes.append(Outcome.refused(task_id, HALT, exc))
    return Report(outcomes)


def _halt_one(task_id: int) -> Outcome:
    messages = Outbox()
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if task.error:
            label = state_label(task.p_state, task.error)
            raise Refused(f"task {task_id} is already stopped ({label})")
        if task.p_state == PState.COMPLETE:
            raise Refused(f"task {task_id} is complete: nothing to halt")
        in_flight = in_flight_subtasks(session, task_id)
        executor(task.settings.executor).withdraw(task, in_flight, messages)
        set_subtask_states(task, in_flight, SubtaskState.NEW)
        task.halted = True
        move(session, task, Event.HALTED, HALTED, instance=instance)
        step = task.p_state
    message = f"halted at {step}"
    try:
        send(messages)
    except Unreachable as exc:  # the halt holds: every message of the old attempt is stale
        message += f"; running subtasks not terminated ({exc})"
    return Outcome(task_id, HALT, True, message, step, [s.index for s in in_flight])


def halt_instance(instance_id: int) -> Report:
    """Halt every task of the instance that is still running."""
    with transaction() as session:
        if session.get(PipelineInstance, instance_id) is None:
            raise NotFound(f"unknown instance {instance_id}")
        running = list(
            session.scalars(
                select(Task.id)
                .where(Task.instance_id == instance_id, Task.running)
                .order_by(Task.id)
            )
        )
    if not running:
        raise Refused(f"instance {instance_id} has no running tasks")
    return halt(running)
