"""Where a task's subtasks run is its executor's business (``lifecycle.Executor``, chosen
by the execution settings): each executor is one module of the engine, named in the
lifecycle (``lifecycle.EXECUTORS``), that offers what ``Executor`` lists. Everything
else (the stages, restarts, halts, recovery) asks the task's executor through here, so a
new executor is an entry in the lifecycle and a module of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Protocol, cast

from sqlalchemy.orm import Session

from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import EXECUTORS
from pipeline.domain.models import Subtask, Task
from pipeline.messaging.messages import InFlight
from pipeline.messaging.outbox import Outbox


class Executor(Protocol):
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


def executor(settings: ExecutionSettings) -> Executor:
    """The executor these execution settings name."""
    return cast(Executor, importlib.import_module(EXECUTORS[settings.executor]))


def queue_subtasks(
    session: Session, tasks: Sequence[Task], messages: Outbox, host: str = ""
) -> None:
    """Send out the NEW subtasks of these locked tasks, each through its executor, those
    of one executor together."""
    by_executor: dict[str, list[Task]] = {}
    for task in tasks:
        by_executor.setdefault(task.settings.executor, []).append(task)
    for chosen in by_executor.values():
        executor(chosen[0].settings).queue_subtasks(session, chosen, messages, host)
