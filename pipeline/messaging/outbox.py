"""The outbox: every message the pipeline sends, named, numbered and published after commit.

A transaction that calls for messages collects them in an ``Outbox`` (``transaction()``
yields both); they are published only once it has committed, so a worker never receives
work the database does not know about yet, and a transaction rolled back sends nothing.
A message lost between commit and publish leaves its task waiting in its step, which
beat's monitor finds (``pipeline.recovery``).

Every message carries its task's attempt number (the fence: a message of an older attempt
is a no-op). A subtask message's Celery id is planned before it is sent and recorded on
each subtask it carries, so a halt can revoke it and the in-flight scan can look for it
(``message_of`` reads it back).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from pipeline.database import masked
from pipeline.database import transaction as database_transaction
from pipeline.domain.lifecycle import Stage
from pipeline.domain.models import Subtask, Task
from pipeline.errors import Unreachable
from pipeline.messaging.celery_app import DEFAULT_QUEUE, celery_app
from pipeline.settings import get_settings

MARSHAL = "pipeline.stage.marshal"
EXECUTE = "pipeline.stage.execute"
SUBTASK = "pipeline.stage.subtask"
#: One message carrying a batch of a task's subtasks (see ``batch_size``).
SUBTASKS = "pipeline.stage.subtasks"
#: One message carrying the one subtask each of several tasks of one instance's node: how
#: a restart of many small tasks sends their subtasks (see ``Outbox.subtasks_of``).
GROUP = "pipeline.stage.subtask_group"
GROUP_PREFIX = "group-"
MONITOR = "pipeline.stage.monitor"
STORE = "pipeline.stage.store"
#: One message carrying the messages of many tasks, published on by a worker.
FAN_OUT = "pipeline.stage.fan_out"
#: The message of each stage of the chain.
STAGE_MESSAGES = {
    Stage.MARSHAL: MARSHAL,
    Stage.EXECUTE: EXECUTE,
    Stage.MONITOR: MONITOR,
    Stage.STORE: STORE,
}
#: The stages a worker runs itself, right after the stage of the same task that called for
#: them, instead of publishing their message (see ``continuing``).
CONTINUED = frozenset({EXECUTE, MONITOR, STORE})
#: Messages a caller publishes itself; more are handed to workers (see ``_handed_on``) ...
DIRECT_SEND_LIMIT = 20
#: ... in fan-out messages of at most this many each.
FAN_OUT_SIZE = 200
#: What each argument of a message is, so Flower's task list reads ``task=4, attempt=2``
#: rather than ``[4, 2]``.
ARGUMENT_NAMES = {
    SUBTASK: ("task", "attempt", "subtask", "dispatch"),
    SUBTASKS: ("task", "attempt", "subtasks"),
    GROUP: ("subtasks",),
    FAN_OUT: ("messages",),
}
STAGE_ARGUMENT_NAMES = ("task", "attempt")
#: Priority of subtask messages when the execution settings give none (0 runs first).
DEFAULT_PRIORITY = 5
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
#: Retries of a publish before the broker counts as unreachable.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}

#: A stage message: its name, its arguments and the task's execution settings.
StageMessage = tuple[str, list[Any], dict[str, Any]]
#: A planned subtask message: its Celery id and the (index, dispatch number) pairs it carries.
Message = tuple[str, list[tuple[int, int]]]
#: What ``_publish`` sends: name, arguments, options and Celery id (None: Celery picks one).
_Publication = tuple[str, list[Any], dict[str, Any], str | None]


# -- message ids -----------------------------------------------------------------------------


def subtask_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The Celery id of one dispatch of a subtask, known in advance so halt can revoke it.

    Unique across attempts: workers remember revoked ids for hours, and a restarted task's
    messages must not share one with a halted attempt's.
    """
    return f"subtask-{task_id}-{attempt}-{index}-{number}"


def batch_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The Celery id of a batch message, named after its first subtask's dispatch (unique
    for the same reasons as ``subtask_message_id``)."""
    return f"subtasks-{task_id}-{attempt}-{index}-{number}"


def group_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The Celery id of a ``GROUP`` message, named after its first subtask's dispatch."""
    return f"{GROUP_PREFIX}{task_id}-{attempt}-{index}-{number}"


def is_shared(message_id: str) -> bool:
    """Does this message carry other tasks' subtasks too (a ``GROUP``)?"""
    return message_id.startswith(GROUP_PREFIX)


def message_of(task_id: int, attempt: int, subtask: Subtask) -> str:
    """The id of the message carrying an in-flight subtask: the one recorded when it was
    dispatched (a batch message carries many), else its one-subtask message's id."""
    return subtask.message_id or subtask_message_id(
        task_id, attempt, subtask.index, subtask.dispatch
    )


def batch_size(execution: Mapping[str, Any], subtasks: int) -> int:
    """Subtasks per message: the setting, else one each for small tasks and up to
    ``AUTO_BATCH_MAX`` for big ones (per-message overhead dominates a short subtask)."""
    chosen = execution.get("batch_size")
    if chosen:
        return int(chosen)
    return max(1, min(AUTO_BATCH_MAX, subtasks // AUTO_BATCH_MESSAGES))


def plan_messages(
    task_id: int, attempt: int, queued: Sequence[tuple[int, int]], size: int
) -> list[Message]:
    """Group queued (index, dispatch number) pairs into messages of ``size`` subtasks.

    A message of one subtask keeps the one-subtask message and id it always had.
    """
    messages = []
    for start in range(0, len(queued), size):
        pairs = [(int(index), int(number)) for index, number in queued[start : start + size]]
        make_id = subtask_message_id if len(pairs) == 1 else batch_message_id
        messages.append((make_id(task_id, attempt, *pairs[0]), pairs))
    return messages


def arguments_label(name: str, args: list[Any]) -> str:
    """The arguments of a message as Flower shows them: ``task=4, attempt=2``."""
    names = ARGUMENT_NAMES.get(name, STAGE_ARGUMENT_NAMES)
    return ", ".join(
        # A batch's (subtask, dispatch) pairs or a fan-out's messages: how many, not which.
        f"{key}={len(value)}" if isinstance(value, list) else f"{key}={value}"
        for key, value in zip(names, args, strict=False)
    )


# -- the outbox ------------------------------------------------------------------------------


class Outbox:
    """The messages one transaction calls for, published by ``publish`` once it committed."""

    def __init__(self) -> None:
        self._stages: list[StageMessage] = []
        self._subtasks: list[tuple[int, int, list[Message], dict[str, Any]]] = []
        self._groups: list[tuple[str, list[list[int]], dict[str, Any]]] = []
        self._revoked: list[str] = []

    def stage(self, name: str, task_id: int, attempt: int, execution: Mapping[str, Any]) -> None:
        """A stage message (marshal, execute, monitor, store) for ``attempt`` of the task."""
        self._stages.append((name, [task_id, attempt], dict(execution)))

    def subtasks(self, session: Session, task: Task, queued: Sequence[tuple[int, int]]) -> int:
        """Messages for the task's queued (index, dispatch number) pairs (see ``subtasks_of``);
        returns how many."""
        return self.subtasks_of(session, [(task, queued)])[0]

    def subtasks_of(
        self, session: Session, queued: Sequence[tuple[Task, Sequence[tuple[int, int]]]]
    ) -> list[int]:
        """Messages for each task's queued (index, dispatch number) pairs, at its attempt:
        grouped as ``batch_size`` says (from the task's subtask count, so lost subtasks go
        again in batches like those that first carried them), each subtask's row recording
        the id of the message that carries it, for every task in one statement. Returns how
        many messages each task gets."""
        rows, counts = [], []
        # Tasks that each queue one subtask, by instance, node and execution settings.
        lone: dict[tuple[int, str, str], tuple[dict[str, Any], list[list[int]]]] = {}
        for task, pairs in queued:
            size = batch_size(task.execution, task.total_subtasks)
            planned = plan_messages(task.id, task.attempt, pairs, size)
            counts.append(len(planned))
            if len(pairs) == 1 and not task.execution.get("batch_size"):
                key = (task.instance_id, task.node, json.dumps(task.execution, sort_keys=True))
                entries = lone.setdefault(key, (dict(task.execution), []))[1]
                entries.append([task.id, task.attempt, *pairs[0]])
                continue
            if planned:
                self._subtasks.append((task.id, task.attempt, planned, dict(task.execution)))
            rows += [
                {"row_task": task.id, "row_index": index, "row_message": message_id}
                for message_id, batch in planned
                for index, _ in batch
            ]
        for execution, entries in lone.values():
            rows += self._group(entries, execution)
        if rows:  # an executemany of no rows would run once, with no values
            table = Subtask.__table__
            session.execute(
                update(table)
                .where(
                    table.c.task_id == bindparam("row_task"),
                    table.c.index == bindparam("row_index"),
                )
                .values(message_id=bindparam("row_message")),
                rows,
            )
        return counts

    def _group(self, entries: list[list[int]], execution: dict[str, Any]) -> list[dict[str, Any]]:
        """Plan the messages of tasks that each queue one subtask, of one instance's node:
        together in ``GROUP`` messages when they are many (``batch_size`` of their count),
        else one each. Returns their subtask rows' message ids."""
        size = batch_size({}, len(entries))
        rows = []
        for start in range(0, len(entries), size):
            group = entries[start : start + size]
            if len(group) == 1:
                task_id, attempt, index, number = group[0]
                planned = plan_messages(task_id, attempt, [(index, number)], 1)
                self._subtasks.append((task_id, attempt, planned, execution))
                message_id = planned[0][0]
            else:
                message_id = group_message_id(*group[0])
                self._groups.append((message_id, group, execution))
            rows += [
                {"row_task": e[0], "row_index": e[2], "row_message": message_id} for e in group
            ]
        return rows

    def revoke(self, message_ids: Sequence[str]) -> None:
        """Drop these messages from the queues and terminate the worker processes running
        them (a halt)."""
        self._revoked.extend(message_ids)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Drop the messages called for within the block if it raises, as a savepoint
        rolled back drops its rows (``with session.begin_nested(), outbox.savepoint()``)."""
        marks = len(self._stages), len(self._subtasks), len(self._groups), len(self._revoked)
        try:
            yield
        except BaseException:
            del self._stages[marks[0] :], self._subtasks[marks[1] :], self._groups[marks[2] :]
            del self._revoked[marks[3] :]
            raise

    def publish(self) -> None:
        """Publish everything, over one connection; raises ``Unreachable`` if the broker
        refuses. Within a ``continuing`` block a ``CONTINUED`` stage is held back instead."""
        held = _held.get()
        stages = []
        for message in self._stages:
            if held is not None and message[0] in CONTINUED:
                held.append(message)
            else:
                stages.append(message)
        publications = [
            *_subtask_publications(self._subtasks),
            *_group_publications(self._groups),
            *_stage_publications(stages),
        ]
        if publications:
            _publish(_handed_on(publications))
        if self._revoked:
            _revoke(self._revoked)


@contextmanager
def transaction() -> Iterator[tuple[Session, Outbox]]:
    """A database transaction and the outbox of its messages, published once it commits
    (and dropped if it rolls back)."""
    outbox = Outbox()
    with database_transaction() as session:
        yield session, outbox
    outbox.publish()


#: The stages held back by the ``continuing`` block around the running stage, if any.
_held: ContextVar[list[StageMessage] | None] = ContextVar("held", default=None)


@contextmanager
def continuing() -> Iterator[list[StageMessage]]:
    """Within the block, a ``CONTINUED`` stage is held back, not published: the worker runs
    it itself once the stage that called for it has returned.

    Each message costs a publish and a hop through the broker (about 2 ms on an idle
    machine, much more under load), and execute, monitor and store are short steps of the
    same task on the same queue: a one-subtask task's chain takes two messages, not five.
    The state changes stay what they were, one transaction each, so a worker that dies
    between two of them leaves the task waiting in its step, for the monitor to re-send
    its message as it does for any lost one.
    """
    held: list[StageMessage] = []
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)


def hand_over_held() -> None:
    """Publish the stages held so far by the ``continuing`` block around the running stage,
    for any worker to run: a message that still has other tasks' subtasks to run would
    otherwise hold a finished task's store until its end. With the broker out of reach
    they stay held, and this worker runs them at the end."""
    held = _held.get()
    if not held:
        return
    waiting = list(held)
    held.clear()
    try:
        publish_stages(waiting)
    except Unreachable:
        held[:0] = waiting


def publish_stages(messages: Sequence[StageMessage]) -> None:
    """Publish stage messages now (each with its own task's settings), outside any
    transaction: a worker continuing a stage hands one back to the broker this way."""
    publications = _stage_publications(messages)
    if publications:
        _publish(_handed_on(publications))


def publish_handed_on(publications: Sequence[Sequence[Any]]) -> None:
    """Publish what a ``FAN_OUT`` message carries (run by the worker that received it)."""
    _publish([tuple(publication) for publication in publications])  # type: ignore[misc]


# -- publishing ------------------------------------------------------------------------------


def _stage_publications(messages: Sequence[StageMessage]) -> list[_Publication]:
    return [(name, args, _options(name, execution), None) for name, args, execution in messages]


def _handed_on(publications: list[_Publication]) -> list[_Publication]:
    """More than ``DIRECT_SEND_LIMIT`` publications are handed to workers in ``FAN_OUT``
    messages of at most ``FAN_OUT_SIZE``, by queue, each published on by the worker that
    takes it.

    Each publish is a broker round trip (a few milliseconds under load): an operator's
    restart of 1,000 tasks returns at once, and several workers share the publishing.
    Should a fan-out message be lost, its tasks wait in their step, or their subtasks
    wait queued, and the monitor sends their messages again, as for any lost one.
    """
    if len(publications) <= DIRECT_SEND_LIMIT:
        return publications
    by_queue: dict[str, list[_Publication]] = {}
    for publication in publications:
        by_queue.setdefault(publication[2]["queue"], []).append(publication)
    return [
        (FAN_OUT, [group[start : start + FAN_OUT_SIZE]], _options(FAN_OUT, {"queue": queue}), None)
        for queue, group in by_queue.items()
        for start in range(0, len(group), FAN_OUT_SIZE)
    ]


def _subtask_publications(
    planned: list[tuple[int, int, list[Message], dict[str, Any]]],
) -> list[_Publication]:
    """One-subtask messages as ``SUBTASK``, batches as ``SUBTASKS`` (whose hard time limit
    allows for every subtask they carry), each under its planned id."""
    publications: list[_Publication] = []
    for task_id, attempt, messages, execution in planned:
        for message_id, pairs in messages:
            options = _carrying(execution, len(pairs))
            if len(pairs) == 1:
                publications.append((SUBTASK, [task_id, attempt, *pairs[0]], options, message_id))
                continue
            args = [task_id, attempt, [list(pair) for pair in pairs]]
            publications.append((SUBTASKS, args, options, message_id))
    return publications


def _group_publications(
    groups: list[tuple[str, list[list[int]], dict[str, Any]]],
) -> list[_Publication]:
    """``GROUP`` messages, whose hard time limit allows for every subtask they carry."""
    return [
        (GROUP, [entries], _carrying(execution, len(entries)), message_id)
        for message_id, entries, execution in groups
    ]


def _carrying(execution: Mapping[str, Any], subtasks: int) -> dict[str, Any]:
    """The options of a message carrying ``subtasks`` subtasks: its hard time limit allows
    each its timeout, and the outcomes time to be recorded."""
    timeout = float(execution.get("subtask_timeout", 3600))
    return {**_options(SUBTASK, execution), "time_limit": timeout * subtasks + HARD_LIMIT_GRACE}


def _publish(publications: Sequence[_Publication]) -> None:
    """Publish over one connection, the arguments labelled for Flower. A broker that
    refuses them is ``Unreachable``."""
    app = celery_app()
    try:
        with app.producer_or_acquire() as producer:
            for name, args, options, message_id in publications:
                app.send_task(
                    name,
                    args=args,
                    argsrepr=arguments_label(name, args),
                    producer=producer,
                    task_id=message_id,
                    **options,
                )
    except _broker_errors() as exc:
        raise _unreachable(exc) from None


def _options(name: str, execution: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "queue": execution.get("queue") or DEFAULT_QUEUE,
        # A stage's bookkeeping must not wait behind the subtasks already queued.
        "priority": execution.get("priority", DEFAULT_PRIORITY) if name == SUBTASK else 0,
        "retry": True,
        "retry_policy": PUBLISH_RETRY,
        # Stage results are never read: do not subscribe to them on the result backend.
        "ignore_result": True,
    }


def _revoke(message_ids: list[str]) -> None:
    try:
        celery_app().control.revoke(message_ids, terminate=True, signal="SIGTERM")
    except _broker_errors() as exc:
        raise _unreachable(exc) from None


def _broker_errors() -> tuple[type[Exception], ...]:
    """What kombu and redis raise for a broker that cannot be reached (imported only when
    one was raised: an except clause is evaluated then)."""
    import redis
    from kombu.exceptions import OperationalError

    return (OperationalError, redis.RedisError)


def _unreachable(exc: Exception) -> Unreachable:
    return Unreachable(f"broker unreachable at {masked(get_settings().broker)}: {exc}")


def check_broker() -> None:
    """Raise ``Unreachable`` unless the broker answers within ``broker_timeout`` (a host that
    accepts the connection and never answers included). Call it outside any transaction.

    Checked on a connection of the pool the messages are then published on: a warm one
    costs one round trip, where a new connection costs several (about 4 ms a submit).
    """
    timeout = get_settings().broker_timeout
    try:
        with celery_app().pool.acquire(block=True, timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout)
            # A pooled connection may have outlived a broker restart: ask, do not assume.
            client = getattr(connection.default_channel, "client", None)
            if client is not None:  # Redis; other transports answered ensure_connection
                client.ping()
    except Exception as exc:  # kombu raises several types for a refused connection
        raise _unreachable(exc) from None
