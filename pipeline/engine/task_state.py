"""The one mutator of a task's state: ``move`` applies an event of the lifecycle's table
(``pipeline.domain.lifecycle``) to a locked task, in the caller's transaction, with its
history row and, when the move can change it, the instance state its tasks imply.

Beside it: the fence every message passes (``is_current``), a history line that moves
nothing (``note``), and the subtasks a restart or resubmit runs again
(``reset_subtasks``). Every change of a task's P-state, error flag or attempt happens
here, inside one transaction together with its subtask counts.

The task row also keeps the counts ``/metrics`` reads (its subtasks by state, their
redispatches, their run times, its restarts), changed here in the transaction that
changes what they count (``count_subtasks`` and the functions after it), so a scrape
sums them over the tasks and reads no subtask row and no history line.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session

from pipeline.database import one_of
from pipeline.domain import lifecycle, run_times
from pipeline.domain.lifecycle import Event, IllegalTransition, PState
from pipeline.domain.models import (
    InstanceNode,
    PipelineInstance,
    Subtask,
    Task,
    TaskEvent,
    utcnow,
)
from pipeline.domain.states import InstanceState, NodeState, SubtaskState, derive_instance_state
from pipeline.messaging.messages import stage_message
from pipeline.messaging.outbox import Outbox

log = logging.getLogger(__name__)

HOST = socket.gethostname()


def is_current(task: Task, attempt: int, *steps: PState, allow_error: bool = False) -> bool:
    """The fence: does a message for ``attempt`` expecting ``steps`` still apply to ``task``?"""
    current = (
        task.attempt == attempt
        and (allow_error or not task.error)
        and (not steps or task.p_state in steps)
    )
    if not current:
        log.info(
            "stale message for task %s (attempt %s, expected %s): task is at attempt %s, %s",
            task.id,
            attempt,
            "/".join(steps) or "any step",
            task.attempt,
            lifecycle.state_label(task.p_state, task.error),
        )
    return current


def move(
    session: Session,
    task: Task,
    event: Event,
    message: str = "",
    host: str = "",
    *,
    instance: PipelineInstance | None = None,
    refresh: bool = True,
) -> PState:
    """Apply ``event`` to the locked ``task``: its new step, attempt and error flag as the
    lifecycle says, and a line in its history. A move that can change the instance state
    refreshes ``instance`` (locked by the caller), unless ``refresh`` is False: a caller
    moving many tasks of it refreshes it once. Returns the new step; raises
    ``IllegalTransition`` for an event the table does not allow."""
    rule = lifecycle.RULES[event]
    source, error = task.p_state, task.error
    target = lifecycle.next_state(task, event)
    if rule.new_attempt:
        task.attempt += 1
    if rule.error is True:
        task.error, task.error_message = True, message
        message = f"error: {message}"
    elif rule.error is False:
        task.error, task.error_message = False, ""
    task.p_state = target
    if rule.requires == lifecycle.Requires.RESTARTABLE:
        task.rerun = False  # restarted: no longer waiting to be
    if event == Event.MARSHALED:  # it consumes its parents' current outputs now
        task.stale, task.stale_reason = False, ""
    if host:
        task.worker_host = host
    note(session, task, message, host)
    if refresh and lifecycle.changes_instance(source, target, rule, error):
        if instance is None:
            raise IllegalTransition(f"{event.value!r} of task {task.id} needs its instance locked")
        refresh_instance_state(session, instance)
    return target


def mark_stale(session: Session, task: Task, reason: str, rerun: bool = False) -> None:
    """Mark the locked, COMPLETE ``task`` stale for ``reason`` (a line in its history);
    with ``rerun``, it waits to run again (``pipeline restart --downstream``). The caller
    refreshes the instance's state."""
    if not task.stale:
        note(session, task, f"stale: {reason}")
    task.stale, task.stale_reason = True, reason
    task.rerun = task.rerun or rerun


def wait_to_rerun(session: Session, task: Task, message: str) -> None:
    """The locked ``task`` runs again from the beginning once every task it consumes from
    is current (``engine.staleness.rerun_ready``)."""
    task.rerun = True
    note(session, task, message)


def send_waiting(messages: Outbox, task: Task) -> None:
    """The message of the stage that takes ``task`` on from the step it now waits in
    (``lifecycle.WAITING``), for its current attempt, on its queue."""
    stage = lifecycle.WAITING[task.p_state]
    messages.add(stage_message(stage, task.id, task.attempt, task.settings.queue))


def note(session: Session, task: Task, message: str, host: str = "") -> None:
    """Add a line to ``task``'s history without moving it. The task had news: its
    ``updated_at`` is now (beat's reconciler leaves a task with news alone a while)."""
    task.updated_at = utcnow()
    line = {
        "task_id": task.id,
        "p_state": task.p_state,
        "error": task.error,
        "attempt": task.attempt,
        "host": host or HOST,
        "message": message,
    }
    in_bulk = session.info.get(HISTORY_IN_BULK)
    if in_bulk is None:
        session.add(TaskEvent(**line))
    else:
        in_bulk.append({**line, "at": task.updated_at})


#: Where a session keeps the history lines noted within ``history_in_bulk``.
HISTORY_IN_BULK = "history_in_bulk"


@contextmanager
def history_in_bulk(session: Session) -> Iterator[None]:
    """The history lines noted within the block (``note``, ``move``) written together as
    it ends, with one statement, rather than as an object each: a restart of 1,000 tasks
    notes 2,000, and the ORM's object cost five times the statement's share (about 60
    against 11 ms a thousand), inside the transaction that holds the tasks' locks (and
    on SQLite the one write lock every worker waits for). What was noted before is
    flushed first, so a task's lines keep their order. Not for a block holding a
    savepoint: a line noted in one rolled back would stay."""
    session.flush()
    lines: list[dict[str, Any]] = []
    session.info[HISTORY_IN_BULK] = lines
    try:
        yield
    finally:
        del session.info[HISTORY_IN_BULK]
    if lines:
        session.execute(insert(TaskEvent), lines)


def note_unloaded(
    session: Session, task_id: int, p_state: PState, attempt: int, message: str
) -> None:
    """``note`` for a task the caller has not loaded (the reconciler's bulk reads): a line
    in its history at ``p_state`` and ``attempt``, without the error flag."""
    session.add(
        TaskEvent(
            task_id=task_id,
            p_state=p_state,
            error=False,
            attempt=attempt,
            host=HOST,
            message=message,
        )
    )


def reset_subtasks(session: Session, task: Task, states: Collection[SubtaskState]) -> None:
    """Put the task's subtasks in ``states`` back to NEW, to run again, with the counts of
    those states (once a restart or a resubmit has moved the task: whether it may be
    restarted reads its failed count)."""
    reset_counts(task, states)
    reset_rows(session, [task.id], states)


def reset_counts(task: Task, states: Collection[SubtaskState]) -> None:
    """The locked task's counts of subtasks in ``states`` once they are NEW again (their
    rows: ``reset_rows``, in the same transaction)."""
    for state in states:
        if state in SUBTASK_COUNTS:
            setattr(task, SUBTASK_COUNTS[state], 0)  # every subtask in it is NEW now


def reset_rows(session: Session, task_ids: list[int], states: Collection[SubtaskState]) -> None:
    """The subtasks in ``states`` of these locked tasks back to NEW, with one statement
    for many tasks (a restart of 1,000 tasks: one, not 1,000)."""
    if not states:
        return
    for start in range(0, len(task_ids), TASKS_PER_QUERY):
        session.execute(
            update(Subtask)
            .where(
                one_of(session, Subtask.task_id, task_ids[start : start + TASKS_PER_QUERY]),
                Subtask.state.in_(list(states)),
            )
            .values(state=SubtaskState.NEW)
            # No subtask objects are loaded alongside: matching them costs more than the
            # update.
            .execution_options(synchronize_session=False)
        )


#: Tasks whose subtasks one statement resets.
TASKS_PER_QUERY = 500


#: The task's column counting its subtasks in each state (NEW: the rest of the total).
SUBTASK_COUNTS: dict[str, str] = {
    SubtaskState.QUEUED: "queued_subtasks",
    SubtaskState.RUNNING: "running_subtasks",
    SubtaskState.COMPLETE: "completed_subtasks",
    SubtaskState.FAILED: "failed_subtasks",
}


def count_subtasks(task: Task, source: str, target: str, count: int = 1) -> None:
    """``count`` of the locked task's subtasks went from state ``source`` to ``target``."""
    for state, change in ((source, -count), (target, count)):
        column = SUBTASK_COUNTS.get(state)
        if column is not None:
            setattr(task, column, getattr(task, column) + change)


def subtasks_made(task: Task, count: int) -> None:
    """The locked task's subtask rows were made afresh (marshaling): ``count`` of them,
    all NEW, never dispatched nor run."""
    task.total_subtasks, task.completed_subtasks, task.failed_subtasks = count, 0, 0
    task.queued_subtasks = task.running_subtasks = task.redispatches = 0
    for column in ("runs", "run_micros", *run_times.BUCKET_COLUMNS):
        setattr(task, column, 0)


def subtasks_queued(task: Task, numbers: Sequence[int]) -> None:
    """NEW subtasks of the locked task were queued under these dispatch numbers (those
    above 1 dispatched before)."""
    count_subtasks(task, SubtaskState.NEW, SubtaskState.QUEUED, len(numbers))
    task.redispatches += sum(1 for number in numbers if number > 1)


def dispatch_again(session: Session, task: Task, subtasks: Sequence[Subtask]) -> None:
    """Put these lost, in-flight subtasks of the locked task back on the queue under a new
    dispatch number each (a late outcome of the lost run is then ignored)."""
    for subtask in subtasks:
        count_subtasks(task, subtask.state, SubtaskState.QUEUED)
        subtask.state, subtask.dispatch = SubtaskState.QUEUED, subtask.dispatch + 1
    task.redispatches += len(subtasks)
    session.flush()


def set_subtask_states(task: Task, subtasks: Iterable[Subtask], state: SubtaskState) -> None:
    """Put these loaded subtasks of the locked task in ``state``."""
    for subtask in subtasks:
        count_subtasks(task, subtask.state, state)
        subtask.state = state


def count_runs(
    task: Task, runs: Iterable[tuple[datetime | None, datetime | None]], sign: int = 1
) -> None:
    """Runs of the locked task's subtasks, as (start, end), ended (or, with ``sign`` -1,
    forgotten: a subtask claimed to run again); those without both are none."""
    for start, end in runs:
        if start and end:
            run_times.count(task, (end - start).total_seconds(), sign)


def count_restart(task: Task, mode: str) -> None:
    """The locked task was restarted in ``mode`` (a ``restart:`` line in its history)."""
    task.restarts = {**(task.restarts or {}), mode: (task.restarts or {}).get(mode, 0) + 1}


def refresh_instance_state(session: Session, instance: PipelineInstance) -> InstanceState:
    """Set the instance state its nodes and tasks imply (a TRANSITION_FAILED state stays)."""
    session.flush()
    if instance.state == InstanceState.TRANSITION_FAILED:
        return InstanceState.TRANSITION_FAILED
    tasks = select(Task).where(Task.instance_id == instance.id)
    # One query, not four: this runs in every transaction that moves a task's step.
    any_error, any_active, any_started, any_node_left, any_stale = session.execute(
        select(
            exists(tasks.where(Task.error)),
            exists(tasks.where(Task.running)),
            exists(tasks.where(Task.p_state != PState.INITIALIZING)),
            exists(
                select(InstanceNode).where(
                    InstanceNode.instance_id == instance.id, InstanceNode.state != NodeState.DONE
                )
            ),
            exists(tasks.where(Task.stale)),
        )
    ).one()
    state = derive_instance_state(
        all_nodes_done=not any_node_left,
        any_error=bool(any_error),
        any_active=bool(any_active),
        any_started=bool(any_started),
        any_stale=bool(any_stale),
    )
    if state == InstanceState.INITIALIZED and instance.state != InstanceState.INITIALIZED:
        state = InstanceState.PROCESSING  # restarted back to its first step: still under way
    if instance.state != state:
        instance.state = state
        instance.updated_at = utcnow()
    return state
