"""The ledger of task states: row locks, the fence, the history of transitions, and the
instance state they imply.

Every change of a task's P-state or error flag happens inside one transaction together
with its subtask counts, its history row and the instance state it implies. Rows are
locked instance first, then task, in every transaction that takes both, so two workers
never deadlock on them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.models import (
    InstanceNode,
    PipelineInstance,
    Subtask,
    Task,
    TaskEvent,
    utcnow,
)
from pipeline.domain.states import (
    IN_FLIGHT,
    InstanceState,
    NodeState,
    PState,
    SubtaskState,
    derive_instance_state,
)
from pipeline.errors import NotFound

log = logging.getLogger(__name__)

HOST = socket.gethostname()
#: Tasks a restart may take: the error flag set, or COMPLETE with failed subtasks.
RESTARTABLE = Task.error | ((Task.p_state == PState.COMPLETE) & (Task.failed_subtasks > 0))
#: Tasks still moving through their steps, which a halt may stop.
RUNNING = ~Task.error & (Task.p_state != PState.COMPLETE)


def lock_rows(session: Session, model: Any, row_ids: Collection[int]) -> dict[int, Any]:
    """Lock these rows of ``model`` (instances or tasks) in one statement, in id order: the
    order every transaction takes rows of one kind in, so two never deadlock."""
    rows = session.scalars(
        select(model)
        .where(model.id.in_(sorted(row_ids)))
        .order_by(model.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {row.id: row for row in rows}


def _locked(session: Session, model: Any, row_id: int) -> Any:
    return lock_rows(session, model, [row_id]).get(row_id)


def lock_instance(session: Session, instance_id: int) -> PipelineInstance:
    instance = _locked(session, PipelineInstance, instance_id)
    if instance is None:
        raise NotFound(f"unknown instance {instance_id}")
    return instance


@contextmanager
def locked_instance(instance_id: int) -> Iterator[tuple[Session, PipelineInstance]]:
    """A transaction holding the lock of one instance row."""
    with transaction() as session:
        yield session, lock_instance(session, instance_id)


def lock_task(session: Session, task_id: int) -> tuple[PipelineInstance, Task]:
    """Lock a task and its instance (in that order of rows: instance, then task)."""
    instance_id = session.scalar(select(Task.instance_id).where(Task.id == task_id))
    if instance_id is None:
        raise NotFound(f"unknown task {task_id}")
    instance = lock_instance(session, instance_id)
    return instance, _locked(session, Task, task_id)


def lock_task_only(session: Session, task_id: int) -> Task:
    """Lock just the task row, for subtask outcomes that cannot change the instance state."""
    task = _locked(session, Task, task_id)
    if task is None:
        raise NotFound(f"unknown task {task_id}")
    return task


def in_flight_subtasks(session: Session, task_id: int) -> list[Subtask]:
    """Subtasks the database believes are on the broker or on a worker."""
    return list(
        session.scalars(
            select(Subtask).where(
                Subtask.task_id == task_id,
                Subtask.state.in_(list(IN_FLIGHT)),
            )
        )
    )


def is_current(task: Task, attempt: int, *steps: PState, allow_error: bool = False) -> bool:
    """The fence: does a message for ``attempt`` expecting ``steps`` still apply to ``task``?"""
    current = (
        task.attempt == attempt
        and (allow_error or not task.error)
        and (not steps or task.p_state in steps)
    )
    if not current:
        log.info(
            "stale message for task %s (attempt %s, expected %s): task is at attempt %s, %s%s",
            task.id,
            attempt,
            "/".join(steps) or "any step",
            task.attempt,
            task.p_state,
            " with error" if task.error else "",
        )
    return current


def record(
    session: Session, task: Task, p_state: PState, message: str = "", host: str = ""
) -> None:
    """Move ``task`` to ``p_state`` and add the transition to its history."""
    task.p_state = p_state
    task.updated_at = utcnow()
    if host:
        task.worker_host = host
    note(session, task, message, host)


def note(session: Session, task: Task, message: str, host: str = "") -> None:
    """Add a line to ``task``'s history without moving it."""
    session.add(
        TaskEvent(
            task_id=task.id,
            p_state=task.p_state,
            error=task.error,
            attempt=task.attempt,
            host=host or HOST,
            message=message,
        )
    )


def start_again(
    session: Session,
    task: Task,
    step: PState,
    reset: Collection[SubtaskState],
    message: str,
    host: str = "",
) -> None:
    """Put ``task`` back to ``step`` under a new attempt, so every message of the old one is
    stale: its subtasks in ``reset`` states go back to NEW to run again (the counts of those
    states with them), and its error flag is cleared. The caller sends the step's message
    and refreshes the instance state."""
    if reset:
        session.execute(
            update(Subtask)
            .where(Subtask.task_id == task.id, Subtask.state.in_(list(reset)))
            .values(state=SubtaskState.NEW)
            # No subtask objects are loaded alongside: matching them costs more than the update.
            .execution_options(synchronize_session=False)
        )
    if SubtaskState.COMPLETE in reset:
        task.completed_subtasks = 0
    if SubtaskState.FAILED in reset:
        task.failed_subtasks = 0
    task.error, task.error_message = False, ""
    task.attempt += 1
    record(session, task, step, message, host)


def fail(
    session: Session,
    instance: PipelineInstance,
    task: Task,
    message: str,
    host: str = "",
    refresh: bool = True,
) -> None:
    """Set the error flag, P-state frozen where it failed, and update the instance state
    (unless ``refresh`` is False: a caller failing many tasks of it refreshes it once)."""
    task.error = True
    task.error_message = message
    record(session, task, PState(task.p_state), f"error: {message}", host)
    if refresh:
        refresh_instance_state(session, instance)


def refresh_instance_state(session: Session, instance: PipelineInstance) -> InstanceState:
    """Set the instance state its nodes and tasks imply (a TRANSITION_FAILED state stays)."""
    session.flush()
    if instance.state == InstanceState.TRANSITION_FAILED:
        return InstanceState.TRANSITION_FAILED
    tasks = select(Task).where(Task.instance_id == instance.id)
    # One query, not four: this runs in every transaction that moves a task's step.
    any_error, any_active, any_started, any_node_left = session.execute(
        select(
            exists(tasks.where(Task.error)),
            exists(tasks.where(~Task.error, Task.p_state != PState.COMPLETE)),
            exists(tasks.where(Task.p_state != PState.INITIALIZING)),
            exists(
                select(InstanceNode).where(
                    InstanceNode.instance_id == instance.id, InstanceNode.state != NodeState.DONE
                )
            ),
        )
    ).one()
    state = derive_instance_state(
        all_nodes_done=not any_node_left,
        any_error=bool(any_error),
        any_active=bool(any_active),
        any_started=bool(any_started),
    )
    if state == InstanceState.INITIALIZED and instance.state != InstanceState.INITIALIZED:
        state = InstanceState.PROCESSING  # restarted back to its first step: still under way
    if instance.state != state:
        instance.state = state
        instance.updated_at = utcnow()
    return state
