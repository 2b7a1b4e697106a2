"""Sending the stage messages of a task's chain; every message carries the task's attempt.

Messages are sent only after the transaction that called for them has committed, so a
worker never receives work the database does not know about yet. A message lost
between commit and send leaves the task waiting in its step, which the monitor finds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from kombu.exceptions import OperationalError as BrokerError

from config.settings import get_settings
from pipeline.database import masked
from pipeline.errors import Unreachable
from workers.app import app

MARSHAL = "pipeline.stage.marshal"
EXECUTE = "pipeline.stage.execute"
SUBTASK = "pipeline.stage.subtask"
#: One message carrying the stage messages of many tasks, sent on by a worker.
FAN_OUT = "pipeline.stage.fan_out"
#: Stage messages a caller sends itself; more go through a worker (see ``send_stages``).
DIRECT_SEND_LIMIT = 20
#: One message carrying a batch of a task's subtasks (see ``batch_size``).
SUBTASKS = "pipeline.stage.subtasks"
MONITOR = "pipeline.stage.monitor"
STORE = "pipeline.stage.store"
#: How long a finished subtask keeps trying to record its outcome (a database restart).
RECORD_OUTCOME_FOR_SECONDS = 300.0
#: Extra seconds past the subtask timeout before Celery itself kills a stuck worker process:
#: longer than the outcome may take to record, so Celery never cuts that short.
HARD_LIMIT_GRACE = RECORD_OUTCOME_FOR_SECONDS + 60.0
#: The stage message that moves a task waiting in each P-state: what a restart sends to
#: start a rebuilt chain, and what the monitor re-sends when the first one was lost.
STAGE_FOR_STEP = {
    "INITIALIZING": MARSHAL,
    "ALGORITHM_SUBMITTING": EXECUTE,
    "ALGORITHM_COMPLETE": MONITOR,
    "STORING": STORE,
}
#: What each argument of a stage message is, so Flower's task list reads
#: ``task=4, attempt=2`` rather than ``[4, 2]``.
ARGUMENT_NAMES = {
    SUBTASK: ("task", "attempt", "subtask", "dispatch"),
    SUBTASKS: ("task", "attempt", "subtasks"),
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
#: The stages a worker runs itself, right after the stage of the same task that called for
#: them, instead of sending their message (see ``continuing``).
CONTINUED = frozenset({EXECUTE, MONITOR, STORE})
#: A stage message to send: its name, its arguments and the task's execution settings.
StageMessage = tuple[str, list[Any], dict[str, Any]]
#: Retries of a publish before the broker counts as unreachable.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


def subtask_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The Celery task id of one dispatch of a subtask, known in advance so halt can revoke it.

    Unique across attempts: workers remember revoked ids for hours, and a restarted task's
    messages must not share one with a halted attempt's.
    """
    return f"subtask-{task_id}-{attempt}-{index}-{number}"


def batch_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The Celery task id of a batch message, named after its first subtask's dispatch
    (unique for the same reasons as ``subtask_message_id``)."""
    return f"subtasks-{task_id}-{attempt}-{index}-{number}"


def batch_size(execution: dict[str, Any], subtasks: int) -> int:
    """Subtasks per message: the setting, else one each for small tasks and up to
    ``AUTO_BATCH_MAX`` for big ones (per-message overhead dominates a short subtask)."""
    chosen = execution.get("batch_size")
    if chosen:
        return int(chosen)
    return max(1, min(AUTO_BATCH_MAX, subtasks // AUTO_BATCH_MESSAGES))


#: A subtask message: its id and the (index, dispatch number) pairs it carries.
Message = tuple[str, list[tuple[int, int]]]


def plan_messages(
    task_id: int, attempt: int, queued: list[tuple[int, int]], size: int
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


def send_subtasks(
    task_id: int, attempt: int, messages: list[Message], execution: dict[str, Any]
) -> None:
    """Publish planned subtask messages: one-subtask ones as ``SUBTASK``, batches as
    ``SUBTASKS`` (whose hard time limit allows for every subtask it carries)."""
    single = [[task_id, attempt, *pairs[0]] for _, pairs in messages if len(pairs) == 1]
    if single:
        send_many(SUBTASK, single, execution)
    batches = [(message_id, pairs) for message_id, pairs in messages if len(pairs) > 1]
    if not batches:
        return
    timeout = float(execution.get("subtask_timeout", 3600))
    options = _options(SUBTASK, execution)
    _publish(
        (
            SUBTASKS,
            [task_id, attempt, [list(pair) for pair in pairs]],
            {**options, "time_limit": timeout * len(pairs) + HARD_LIMIT_GRACE},
            message_id,
        )
        for message_id, pairs in batches
    )


def check_broker() -> None:
    """Raise ``Unreachable`` unless the broker answers.

    Checked on a connection of the pool the messages are then published on: a warm one
    costs one round trip, where a new connection costs several (about 4 ms a submit).
    """
    url = get_settings().broker
    try:
        with app.pool.acquire(block=True, timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
            # A pooled connection may have outlived a broker restart: ask, do not assume.
            client = getattr(connection.default_channel, "client", None)
            if client is not None:  # Redis; other transports answered ensure_connection
                client.ping()
    except Exception as exc:  # kombu raises several types for a refused connection
        raise Unreachable(f"broker unreachable at {masked(url)}: {exc}") from None


def revoke(message_ids: list[str]) -> None:
    """Drop queued messages and terminate the worker processes running them."""
    if not message_ids:
        return
    try:
        app.control.revoke(message_ids, terminate=True, signal="SIGTERM")
    except (BrokerError, redis.RedisError) as exc:
        url = masked(get_settings().broker)
        raise Unreachable(f"broker unreachable at {url}: {exc}") from None


def arguments_label(name: str, args: list[Any]) -> str:
    """The arguments of a stage message as Flower shows them: ``task=4, attempt=2``."""
    names = ARGUMENT_NAMES.get(name, STAGE_ARGUMENT_NAMES)
    return ", ".join(
        # A batch's (subtask, dispatch) pairs or a fan-out's messages: how many, not which.
        f"{key}={len(value)}" if isinstance(value, list) else f"{key}={value}"
        for key, value in zip(names, args, strict=False)
    )


def send_stages(messages: list[StageMessage], direct: bool = False) -> None:
    """Publish (stage, arguments, execution settings) messages: the chains a bulk restart
    rebuilds, each with its own task's settings.

    Each publish is a broker round trip (a few milliseconds), so more than
    ``DIRECT_SEND_LIMIT`` messages are handed to a worker in ``FAN_OUT`` messages, one per
    queue, and the caller (an operator's restart of 1,000 tasks) returns at once. Should a
    fan-out message be lost, the tasks wait in their step and the monitor re-sends their
    messages, as for any lost stage message.
    """
    if not direct and len(messages) > DIRECT_SEND_LIMIT:
        by_queue: dict[str, list[Any]] = {}
        for message in messages:
            by_queue.setdefault(message[2].get("queue") or "default", []).append(message)
        messages = [(FAN_OUT, [group], {"queue": queue}) for queue, group in by_queue.items()]
    _publish((name, args, _options(name, execution), None) for name, args, execution in messages)


#: The stages held back by the ``continuing`` block around the running stage, if any.
_held: ContextVar[list[StageMessage] | None] = ContextVar("held", default=None)


@contextmanager
def continuing() -> Iterator[list[StageMessage]]:
    """Within the block, a ``CONTINUED`` stage is held back, not sent: the worker runs it
    itself once the stage that called for it has returned.

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


def send(name: str, args: list[Any], execution: dict[str, Any]) -> None:
    held = _held.get()
    if held is not None and name in CONTINUED:
        held.append((name, args, execution))
        return
    send_many(name, [args], execution)


def send_many(name: str, arg_lists: Iterable[list[Any]], execution: dict[str, Any]) -> None:
    """Publish one message per argument list on the node's queue over one connection."""
    options = _options(name, execution)
    _publish(
        (name, args, options, subtask_message_id(*args) if name == SUBTASK else None)
        for args in arg_lists
    )


def _publish(messages: Iterable[tuple[str, list[Any], dict[str, Any], str | None]]) -> None:
    """Publish (name, arguments, options, message id) messages over one connection; the
    arguments labelled for Flower. A broker that refuses them is ``Unreachable``."""
    try:
        with app.producer_or_acquire() as producer:
            for name, args, options, message_id in messages:
                app.send_task(
                    name,
                    args=args,
                    argsrepr=arguments_label(name, args),
                    producer=producer,
                    task_id=message_id,
                    **options,
                )
    except (BrokerError, redis.RedisError) as exc:
        url = masked(get_settings().broker)
        raise Unreachable(f"broker unreachable at {url}: {exc}") from None


def _options(name: str, execution: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "queue": execution.get("queue") or "default",
        # A stage's bookkeeping must not wait behind the subtasks already queued.
        "priority": execution.get("priority", DEFAULT_PRIORITY) if name == SUBTASK else 0,
        "retry": True,
        "retry_policy": PUBLISH_RETRY,
        # Stage results are never read: do not subscribe to them on the result backend.
        "ignore_result": True,
    }
    if name == SUBTASK:
        timeout = float(execution.get("subtask_timeout", 3600))
        options["time_limit"] = timeout + HARD_LIMIT_GRACE
    return options
