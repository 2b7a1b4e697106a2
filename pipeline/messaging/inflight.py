"""Which subtask messages are in flight: waiting on the broker, or held by a live worker.

Resume-monitoring compares this with the subtasks the database says are queued or
running; a subtask whose message is in neither place was lost (a worker killed, a
broker restarted without its queue) and is dispatched again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from kombu.exceptions import OperationalError as BrokerError

from pipeline.database import masked
from pipeline.errors import Unreachable
from pipeline.messaging.celery_app import broker_client, celery_app
from pipeline.settings import get_settings

#: kombu's Redis transport keeps priority N of queue Q in the list "Q\x06\x16N" (N > 0).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_LEVELS = range(1, 10)
#: Seconds to wait for the workers' replies.
INSPECT_TIMEOUT = 1.0


def queued_message_ids(queue: str) -> set[str]:
    """Celery task ids of the messages waiting in ``queue`` on the Redis broker."""
    client = broker_client()
    keys = [queue, *(f"{queue}{PRIORITY_SEPARATOR}{level}" for level in PRIORITY_LEVELS)]
    found = set()
    for key in keys:
        for raw in client.lrange(key, 0, -1):
            try:
                found.add(json.loads(raw)["headers"]["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return found


@dataclass(frozen=True)
class InFlight:
    """Message ids alive somewhere, and the workers that answered when asked."""

    message_ids: set[str]
    workers: set[str]


def held_by_workers() -> tuple[set[str], set[str]]:
    """Celery task ids that live workers are running or have reserved, and who answered."""
    inspector = celery_app().control.inspect(timeout=INSPECT_TIMEOUT)
    found, answered = set(), set()
    for replies in (inspector.active() or {}, inspector.reserved() or {}):
        for worker, held in replies.items():
            answered.add(worker)
            found.update(message["id"] for message in held)
    return found, answered


def in_flight(queue: str) -> InFlight:
    """Every message of ``queue`` still somewhere alive."""
    return in_flight_of([queue])


def in_flight_of(queues: Iterable[str]) -> InFlight:
    """Every message of ``queues`` still somewhere alive, the workers asked once whatever
    the number of queues (each question waits ``INSPECT_TIMEOUT`` for the slowest worker).

    The queues are read before the workers are asked: a message only moves from a queue
    to a worker, so reading in this order never misses one in transit.
    """
    try:
        queued = set().union(*(queued_message_ids(queue) for queue in queues))
        held, answered = held_by_workers()
    except (redis.RedisError, BrokerError) as exc:
        url = masked(get_settings().broker)
        raise Unreachable(f"broker unreachable at {url}: {exc}") from None
    return InFlight(queued | held, answered)
