"""Which subtask messages are in flight: waiting on the broker, or held by a live worker.

Resume-monitoring compares this with the subtasks the database says are queued or
running; a subtask whose message is in neither place was lost (a worker killed, a
broker restarted without its queue) and is dispatched again.
"""

from __future__ import annotations

import json

import redis

from config.settings import get_settings
from workers.app import app

#: kombu's Redis transport keeps priority N of queue Q in the list "Q\x06\x16N" (N > 0).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_LEVELS = range(1, 10)
#: Seconds to wait for the workers' replies.
INSPECT_TIMEOUT = 1.0


def queued_message_ids(queue: str) -> set[str]:
    """Celery task ids of the messages waiting in ``queue`` on the Redis broker."""
    client = redis.Redis.from_url(get_settings().broker)
    keys = [queue, *(f"{queue}{PRIORITY_SEPARATOR}{level}" for level in PRIORITY_LEVELS)]
    found = set()
    for key in keys:
        for raw in client.lrange(key, 0, -1):
            try:
                found.add(json.loads(raw)["headers"]["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return found


def held_by_workers() -> set[str]:
    """Celery task ids that live workers are running or have reserved."""
    inspector = app.control.inspect(timeout=INSPECT_TIMEOUT)
    found = set()
    for replies in (inspector.active() or {}, inspector.reserved() or {}):
        for held in replies.values():
            found.update(message["id"] for message in held)
    return found


def live_message_ids(queue: str) -> set[str]:
    """Every message of ``queue`` still somewhere alive.

    The queue is read before the workers are asked: a message only moves from the queue
    to a worker, so reading in this order never misses one in transit.
    """
    queued = queued_message_ids(queue)
    return queued | held_by_workers()
