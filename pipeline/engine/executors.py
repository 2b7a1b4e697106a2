"""Where a task's subtasks run is its executor's business (``lifecycle.Executor``, chosen
by the execution settings): each executor is one module of the engine, named in the
lifecycle (``lifecycle.EXECUTORS``), that offers what ``ExecutorModule`` lists. Everything
else (the stages, restarts, halts, recovery) asks the task's executor through here, so a
new executor is an entry in the lifecycle and a module of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Protocol, cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import EXECUTORS, Event
from pipeline.domain.models import Subtask, Task
from pipeline.domain.states import IN_FLIGHT, SubtaskState
from pipeline.engine.task_state import move, send_waiting, subtasks_queued
from pipeline.messaging.messages import InFlight
from pipeline.messaging.outbox import Outbox


class ExecutorModule(Protocol):
    """What an executor's module offers (``lifecycle.EXECUTORS`` names the modules)."""

    def queue_subtasks(
        self, session: Session, tasks: Sequence[Task], messages: Outbox, host: str = ""
    ) -> None:
        """Send out the NEW subtasks of these locked tasks (each in ALGORITHM_SUBMITTING)
        and move each task on: ALGORITHM_QUEUED, or ALGORITHM_COMPLETE with none left."""

    def redispatch(
        self, session: Session, task: Task, subtasks: Sequence[Subtask], messages: Outbox
    ) -> None:
        """Send these lost subtasks of the locked task out again."""

    def alive(self, queues: Iterable[str]) -> InFlight:
        """What of this work is still somewhere (asked outside any transaction)."""

    def lost(self, task: Task, subtasks: Sequence[Subtask], live: InFlight) -> list[Subtask]:
        """Of these in-flight subtasks of the task, those ``live`` does not account for."""

    def withdraw(self, task: Task, subtasks: Sequence[Subtask], messages: Outbox) -> None:
        """Stop these in-flight subtasks of a task being halted."""


#: Task ids per statement when queueing many tasks' subtasks (SQLite's limit on a
#: statement's parameters is far above it).
QUEUE_CHUNK = 500


def mark_queued(
    session: Session, tasks: Sequence[Task], written: bool = True
) -> dict[int, list[tuple[int, int]]]:
    """Mark the NEW subtasks of these locked tasks QUEUED under a new dispatch number, in
    a few statements for all of them; each task's queued (index, dispatch number) pairs.
    Unless ``written``, their rows are left for the caller to write, in its transaction
    (``dispatch.subtask_messages`` writes them with their message ids, one statement)."""
    queued: dict[int, list[tuple[int, int]]] = {task.id: [] for task in tasks}
    ids = list(queued)
    for start in range(0, len(ids), QUEUE_CHUNK):
        chunk = ids[start : start + QUEUE_CHUNK]
        new = (Subtask.task_id.in_(chunk), Subtask.state == SubtaskState.NEW)
        if written:  # the rows it changed, returned by the UPDATE itself: one statement
            rows = session.execute(
                update(Subtask)
                .where(*new)
                .values(state=SubtaskState.QUEUED, dispatch=Subtask.dispatch + 1)
                .returning(Subtask.task_id, Subtask.index, Subtask.dispatch)
                .execution_options(synchronize_session=False)
            )
        else:
            rows = session.execute(
                select(Subtask.task_id, Subtask.index, Subtask.dispatch + 1).where(*new)
            )
        for task_id, index, number in rows:
            queued[task_id].append((index, number))
    for task in tasks:
        queued[task.id].sort()
        subtasks_queued(task, [number for _, number in queued[task.id]])
    return queued


def end_with_none_left(session: Session, task: Task, messages: Outbox, host: str) -> None:
    """A task in ALGORITHM_SUBMITTING with no subtask left to run: on to monitor."""
    move(session, task, Event.ENDED, "no subtasks left to run", host)
    send_waiting(messages, task)


def in_flight_subtasks(session: Session, task_id: int) -> list[Subtask]:
    """The task's subtasks the database believes are out with its executor."""
    return list(
        session.scalars(
            select(Subtask).where(Subtask.task_id == task_id, Subtask.state.in_(list(IN_FLIGHT)))
        )
    )


def executor(name: str) -> ExecutorModule:
    """The executor of this name (an execution setting's ``executor``)."""
    return cast(ExecutorModule, importlib.import_module(EXECUTORS[name]))


def alive(settings: Iterable[ExecutionSettings]) -> dict[str, InFlight]:
    """What is still out with the executors these settings name, by executor: each asked
    once, for every queue of theirs (asked outside any transaction)."""
    queues: dict[str, set[str]] = {}
    for found in settings:
        queues.setdefault(found.executor, set()).add(found.queue)
    return {name: executor(name).alive(sorted(names)) for name, names in queues.items()}


def queue_subtasks(
    session: Session, tasks: Sequence[Task], messages: Outbox, host: str = ""
) -> None:
    """Send out the NEW subtasks of these locked tasks, each through its executor, those
    of one executor together."""
    by_executor: dict[str, list[Task]] = {}
    for task in tasks:
        by_executor.setdefault(task.settings.executor, []).append(task)
    for name, chosen in by_executor.items():
        executor(name).queue_subtasks(session, chosen, messages, host)
