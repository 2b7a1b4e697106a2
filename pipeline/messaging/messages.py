"""What the pipeline sends: each message's name, how its id is made, and how Flower shows
its arguments. A ``Message`` is plain data, planned by the engine and published by a
``Publisher`` (``pipeline.messaging.publisher``); nothing here touches the broker or the
database.

Every message carries its task's attempt number (the fence: a message of an older attempt
is a no-op). A subtask message's id is known before it is sent and recorded on each
subtask it carries, so a halt can revoke it and the in-flight scan can look for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.domain.lifecycle import Stage

#: The message of each stage of a task's chain (a new stage of the lifecycle has its own).
STAGE_MESSAGES: dict[Stage, str] = {stage: f"pipeline.stage.{stage.value}" for stage in Stage}
MARSHAL = STAGE_MESSAGES[Stage.MARSHAL]
EXECUTE = STAGE_MESSAGES[Stage.EXECUTE]
MONITOR = STAGE_MESSAGES[Stage.MONITOR]
STORE = STAGE_MESSAGES[Stage.STORE]
SUBTASK = "pipeline.stage.subtask"
#: One message carrying a batch of a task's subtasks (``engine.dispatch.batch_size``).
SUBTASKS = "pipeline.stage.subtasks"
#: One message carrying the one subtask each of several tasks of one instance's node: how
#: a restart of many small tasks sends their subtasks.
GROUP = "pipeline.stage.subtask_group"
GROUP_PREFIX = "group-"
#: Submit a task attempt's job arrays to its batch system (``engine.batch.submit``).
BATCH_SUBMIT = "pipeline.stage.batch_submit"
#: One message carrying the messages of many tasks, published on by a worker.
FAN_OUT = "pipeline.stage.fan_out"
#: Beat's reconciler, run every ``reconcile_interval`` (``pipeline.recovery.reconcile``).
RECONCILE = "pipeline.reconcile"
#: What each argument of a message is, so Flower's task list reads ``task=4, attempt=2``
#: rather than ``[4, 2]``.
ARGUMENT_NAMES = {
    SUBTASK: ("task", "attempt", "subtask", "dispatch"),
    SUBTASKS: ("task", "attempt", "subtasks"),
    GROUP: ("subtasks",),
    FAN_OUT: ("messages",),
}
STAGE_ARGUMENT_NAMES = ("task", "attempt")


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish: the Celery task it runs, its JSON arguments, its queue and
    priority (0 first), its id when planned in advance (else the broker picks one), and
    its hard time limit in seconds (None: no limit)."""

    name: str
    args: list[Any]
    queue: str
    priority: int = 0
    id: str | None = None
    time_limit: float | None = None

    @property
    def label(self) -> str:
        """Its arguments as Flower shows them (``arguments_label``)."""
        return arguments_label(self.name, self.args)

    def as_list(self) -> list[Any]:
        """As JSON, inside a ``FAN_OUT`` message."""
        return [self.name, self.args, self.queue, self.priority, self.id, self.time_limit]

    @classmethod
    def from_list(cls, fields: list[Any]) -> Message:
        return cls(*fields)


@dataclass(frozen=True)
class InFlight:
    """Message ids alive somewhere (waiting on the broker, or held by a worker), and the
    workers that answered when asked."""

    message_ids: set[str]
    workers: set[str]


#: Each stage's priority (0 first): a task under way (its execution, monitor and store)
#: goes before tasks not started yet (their marshal), and both before the subtasks
#: already queued: a 10,000-task marshal does not hold up the stores of tasks that ran.
STAGE_PRIORITIES = {Stage.MARSHAL: 1, Stage.EXECUTE: 0, Stage.MONITOR: 0, Stage.STORE: 0}


def stage_message(stage: Stage, task_id: int, attempt: int, queue: str) -> Message:
    """The message of a stage of ``attempt`` of a task, at the stage's priority
    (``STAGE_PRIORITIES``)."""
    return Message(STAGE_MESSAGES[stage], [task_id, attempt], queue, STAGE_PRIORITIES[stage])


def subtask_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The id of one dispatch of a subtask, known in advance so halt can revoke it.

    Unique across attempts: workers remember revoked ids for hours, and a restarted task's
    messages must not share one with a halted attempt's.
    """
    return f"subtask-{task_id}-{attempt}-{index}-{number}"


def batch_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The id of a batch message, named after its first subtask's dispatch (unique for the
    same reasons as ``subtask_message_id``)."""
    return f"subtasks-{task_id}-{attempt}-{index}-{number}"


def group_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The id of a ``GROUP`` message, named after its first subtask's dispatch."""
    return f"{GROUP_PREFIX}{task_id}-{attempt}-{index}-{number}"


def is_shared(message_id: str) -> bool:
    """Does this message carry other tasks' subtasks too (a ``GROUP``)?"""
    return message_id.startswith(GROUP_PREFIX)


def arguments_label(name: str, args: list[Any]) -> str:
    """The arguments of a message as Flower shows them: ``task=4, attempt=2``."""
    names = ARGUMENT_NAMES.get(name, STAGE_ARGUMENT_NAMES)
    return ", ".join(
        # A batch's (subtask, dispatch) pairs or a fan-out's messages: how many, not which.
        f"{key}={len(value)}" if isinstance(value, list) else f"{key}={value}"
        for key, value in zip(names, args, strict=False)
    )
