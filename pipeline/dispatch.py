"""Sending the stage messages of a task's chain; every message carries the task's attempt.

Messages are sent only after the transaction that called for them has committed, so a
worker never receives work the database does not know about yet. A message lost
between commit and send leaves the task waiting in its step, which the monitor finds.
"""

from __future__ import annotations

from collections.abc import Iterable
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
ARGUMENT_NAMES = {SUBTASK: ("task", "attempt", "subtask", "dispatch")}
STAGE_ARGUMENT_NAMES = ("task", "attempt")
#: Priority of subtask messages when the execution settings give none (0 runs first).
DEFAULT_PRIORITY = 5
#: Retries of a publish before the broker counts as unreachable.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


def subtask_message_id(task_id: int, attempt: int, index: int, number: int) -> str:
    """The Celery task id of one dispatch of a subtask, known in advance so halt can revoke it.

    Unique across attempts: workers remember revoked ids for hours, and a restarted task's
    messages must not share one with a halted attempt's.
    """
    return f"subtask-{task_id}-{attempt}-{index}-{number}"


def check_broker() -> None:
    """Raise ``Unreachable`` unless the broker accepts a connection."""
    url = get_settings().broker
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
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
    return ", ".join(f"{key}={value}" for key, value in zip(names, args, strict=False))


def send(name: str, args: list[Any], execution: dict[str, Any]) -> None:
    send_many(name, [args], execution)


def send_many(name: str, arg_lists: Iterable[list[Any]], execution: dict[str, Any]) -> None:
    """Publish one message per argument list on the node's queue over one connection."""
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
    try:
        with app.producer_or_acquire() as producer:
            for args in arg_lists:
                message_id = None
                if name == SUBTASK:
                    message_id = subtask_message_id(*args)
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
