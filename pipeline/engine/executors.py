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

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import EXECUTORS
from pipeline.domain.models import Subtask, Task
from pipeline.domain.states import IN_FLIGHT
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
