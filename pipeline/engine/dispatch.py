"""The Celery executor (``lifecycle.Executor.CELERY``): a node's subtasks go out as
messages to the workers. Which subtasks go in which message is decided here, each message
planned with its id before it is sent and that id written on every subtask it carries
(so a halt can revoke it and the in-flight scan can look for it), in the transaction that
queues them; ``pipeline.messaging`` only names and publishes them.

A small task sends a message per subtask; a big one sends batches (``batch_size``); many
tasks of one instance's node that each queue one subtask (a restart of many small
tasks) share ``GROUP`` messages. A node's ``max_workers`` (Ziggy's ``maxWorkers``) caps
how many of a task's subtasks run at once: they go out in at most that many messages,
each running its subtasks one after another, so no count of running subtasks needs
keeping (nor mending after a worker dies).

An executor's module offers ``queue_subtasks`` (send the NEW ones out), ``redispatch``
(send lost ones again), ``alive`` and ``lost`` (what is still out there) and
``withdraw`` (a halt): see ``pipeline.engine.executors``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from pipeline.database import update_rows
from pipeline.domain.definitions import stored_node
from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import Event
from pipeline.domain.models import PipelineInstance, Subtask, Task
from pipeline.domain.states import SubtaskState
from pipeline.domain.words import counted
from pipeline.engine.executors import end_with_none_left, mark_queued
from pipeline.engine.task_state import dispatch_again, move
from pipeline.messaging.messages import (
    GROUP,
    SUBTASK,
    SUBTASKS,
    InFlight,
    Message,
    batch_message_id,
    group_message_id,
    is_shared,
    subtask_message_id,
)
from pipeline.messaging.outbox import Outbox
from pipeline.messaging.publisher import publisher

#: Without a ``batch_size`` setting, a task sends about this many subtask messages, so that
#: up to this many worker processes share it and each message's cost is spread over many
#: subtasks ...
AUTO_BATCH_MESSAGES = 100
#: ... with at most this many subtasks per message, so a batch whose worker dies costs
#: little to redo; a task of fewer than 2 x AUTO_BATCH_MESSAGES subtasks sends one each.
AUTO_BATCH_MAX = 100
#: How long a finished subtask keeps trying to record its outcome (a database restart).
RECORD_OUTCOME_FOR_SECONDS = 300.0
#: Extra seconds past the subtask timeout before Celery itself kills a stuck worker process:
#: longer than the outcome may take to record, so Celery never cuts that short.
HARD_LIMIT_GRACE = RECORD_OUTCOME_FOR_SECONDS + 60.0
#: A planned subtask message: its id and the (index, dispatch number) pairs it carries.
Planned = tuple[str, list[tuple[int, int]]]


def batch_size(settings: ExecutionSettings, subtasks: int) -> int:
    """Subtasks per message: the setting, else one each for small tasks and up to
    ``AUTO_BATCH_MAX`` for big ones (per-message overhead dominates a short subtask)."""
    if settings.batch_size:
        return settings.batch_size
    return max(1, min(AUTO_BATCH_MAX, subtasks // AUTO_BATCH_MESSAGES))


def plan_messages(
    task_id: int, attempt: int, queued: Sequence[tuple[int, int]], size: int
) -> list[Planned]:
    """Group queued (index, dispatch number) pairs into messages of ``size`` subtasks.

    A message of one subtask keeps the one-subtask message and id it always had.
    """
    planned = []
    for start in range(0, len(queued), size):
        pairs = [(int(index), int(number)) for index, number in queued[start : start + size]]
        make_id = subtask_message_id if len(pairs) == 1 else batch_message_id
        planned.append((make_id(task_id, attempt, *pairs[0]), pairs))
    return planned


def message_of(task_id: int, attempt: int, subtask: Subtask) -> str:
    """The id of the message carrying an in-flight subtask: the one recorded when it was
    dispatched (a batch message carries many), else its one-subtask message's id."""
    return subtask.message_id or subtask_message_id(
        task_id, attempt, subtask.index, subtask.dispatch
    )


def redispatch(session: Session, task: Task, subtasks: Sequence[Subtask], messages: Outbox) -> None:
    """Send these lost subtasks of the locked task out again, each under a new dispatch
    number (a late outcome of the lost run is then ignored)."""
    dispatch_again(session, task, subtasks)
    if subtasks:
        subtask_messages(session, [(task, [(s.index, s.dispatch) for s in subtasks])], messages)


def alive(queues: Iterable[str]) -> InFlight:
    """What of these queues' work is still somewhere: on the broker, or held by a worker."""
    return publisher().in_flight(queues)


def lost(task: Task, subtasks: Sequence[Subtask], live: InFlight) -> list[Subtask]:
    """The task's in-flight subtasks whose messages are nowhere alive.

    A running subtask whose worker did not answer in time is given the benefit of the
    doubt: dispatching it again could run it twice at once in the same directory (its
    lease decides, see ``pipeline.recovery.reclaim``).
    """
    return [
        subtask
        for subtask in subtasks
        if message_of(task.id, task.attempt, subtask) not in live.message_ids
        and (subtask.state == SubtaskState.QUEUED or subtask.worker_host in live.workers)
    ]


def withdraw(task: Task, subtasks: Sequence[Subtask], messages: Outbox) -> None:
    """Revoke the messages carrying these subtasks of a halted task (one id per message:
    a batch carries many). A message other tasks share is left to run: this task's
    subtask in it is skipped (stale), or stopped at its next lease renewal if running."""
    carrying = {message_of(task.id, task.attempt, subtask) for subtask in subtasks}
    messages.revoke(sorted(m for m in carrying if not is_shared(m)))


def queue_subtasks(
    session: Session, tasks: Sequence[Task], messages: Outbox, host: str = ""
) -> None:
    """Queue the subtasks that have not run (NEW) of these locked tasks, each in
    ALGORITHM_SUBMITTING at its attempt, on the task's queue (see ``subtask_messages``).
    Each task goes to ALGORITHM_QUEUED, or, with nothing left to run, to
    ALGORITHM_COMPLETE and monitor.

    Done in the transaction that put the tasks in ALGORITHM_SUBMITTING (marshaling, a
    restart, an automatic resubmit), for all its tasks in a few statements: a restart of
    1,000 tasks queues their subtasks in one transaction rather than in 1,000 messages'.
    """
    queued = mark_queued(session, tasks, written=False)  # written with their message ids
    waiting = [task for task in tasks if queued[task.id]]
    sent = subtask_messages(session, [(task, queued[task.id]) for task in waiting], messages)
    for task, count in zip(waiting, sent, strict=True):
        note = f"{counted(len(queued[task.id]), 'subtask')} queued in {counted(count, 'message')}"
        move(session, task, Event.QUEUED, note, host)
    for task in tasks:
        if not queued[task.id]:
            end_with_none_left(session, task, messages, host)


def subtask_messages(
    session: Session, queued: Sequence[tuple[Task, Sequence[tuple[int, int]]]], messages: Outbox
) -> list[int]:
    """Messages for each task's queued (index, dispatch number) pairs, at its attempt:
    grouped as ``batch_size`` says (from the task's subtask count, so lost subtasks go
    again in batches like those that first carried them), each subtask's row written
    QUEUED under its dispatch number with the id of the message that carries it, for every
    task in one statement. Returns how many messages each task gets."""
    rows, counts = [], []
    # Tasks that each queue one subtask, by instance, node and execution settings.
    lone: dict[tuple[int, str, str], tuple[ExecutionSettings, list[list[int]]]] = {}
    limits = _MaxWorkers(session)
    for task, pairs in queued:
        settings = task.settings
        size = batch_size(settings, task.total_subtasks)
        most = limits.of(task)
        if most:  # at most ``most`` messages: that many subtasks at once
            size = max(size, math.ceil(len(pairs) / most))
        planned = plan_messages(task.id, task.attempt, pairs, size)
        counts.append(len(planned))
        if len(pairs) == 1 and not settings.batch_size:
            key = (task.instance_id, task.node, json.dumps(task.execution, sort_keys=True))
            lone.setdefault(key, (settings, []))[1].append([task.id, task.attempt, *pairs[0]])
            continue
        messages.add(*_subtask_messages(task.id, task.attempt, planned, settings))
        rows += [
            _queued_row(task.id, index, number, message_id)
            for message_id, batch in planned
            for index, number in batch
        ]
    for settings, entries in lone.values():
        rows += _group(entries, settings, messages)
    update_rows(session, Subtask.__table__, ("task_id", "index"), rows)
    return counts


def _queued_row(task_id: int, index: int, number: int, message_id: str) -> dict[str, Any]:
    """A subtask's row queued under dispatch ``number`` in the message ``message_id``."""
    return {
        "task_id": task_id,
        "index": index,
        "state": SubtaskState.QUEUED.value,
        "dispatch": number,
        "message_id": message_id,
    }


class _MaxWorkers:
    """Each task's node's ``max_workers``, read once per instance and node."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.known: dict[tuple[int, str], int | None] = {}

    def of(self, task: Task) -> int | None:
        key = (task.instance_id, task.node)
        if key not in self.known:
            instance = self.session.get(PipelineInstance, task.instance_id)
            self.known[key] = stored_node(instance.definition, task.node).max_workers
        return self.known[key]


def _group(
    entries: list[list[int]], settings: ExecutionSettings, messages: Outbox
) -> list[dict[str, Any]]:
    """Plan the messages of tasks that each queue one subtask, of one instance's node:
    together in ``GROUP`` messages when they are many (``batch_size`` of their count),
    else one each. Returns their subtask rows' message ids."""
    size = batch_size(ExecutionSettings.stored({}), len(entries))
    rows = []
    for start in range(0, len(entries), size):
        group = entries[start : start + size]
        if len(group) == 1:
            task_id, attempt, index, number = group[0]
            planned = plan_messages(task_id, attempt, [(index, number)], 1)
            messages.add(*_subtask_messages(task_id, attempt, planned, settings))
            message_id = planned[0][0]
        else:
            message_id = group_message_id(*group[0])
            messages.add(_carrying(GROUP, [group], settings, len(group), message_id))
        rows += [_queued_row(e[0], e[2], e[3], message_id) for e in group]
    return rows


def _subtask_messages(
    task_id: int, attempt: int, planned: list[Planned], settings: ExecutionSettings
) -> list[Message]:
    """One-subtask messages as ``SUBTASK``, batches as ``SUBTASKS``, each under its id."""
    found = []
    for message_id, pairs in planned:
        if len(pairs) == 1:
            args: list[Any] = [task_id, attempt, *pairs[0]]
            found.append(_carrying(SUBTASK, args, settings, 1, message_id))
        else:
            args = [task_id, attempt, [list(pair) for pair in pairs]]
            found.append(_carrying(SUBTASKS, args, settings, len(pairs), message_id))
    return found


def _carrying(
    name: str, args: list[Any], settings: ExecutionSettings, subtasks: int, message_id: str
) -> Message:
    """A message carrying ``subtasks`` subtasks, at the task's priority: its hard time limit
    allows each its timeout, and the outcomes time to be recorded."""
    time_limit = settings.subtask_timeout * subtasks + HARD_LIMIT_GRACE
    return Message(name, args, settings.queue, settings.priority, message_id, time_limit)
