"""A broker in this process's memory: a real ``Publisher`` whose queue is a list, for the
fast tests (and for anyone who wants to drive the stages without Redis). What is
published goes through JSON as on the wire; a revoked message leaves the queue; what is in
flight is what is queued. Nothing runs by itself: whoever holds it takes messages off
``queue`` and runs them (``tests.support.InProcessWorker``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace

from pipeline.messaging.messages import InFlight, Message


class MemoryPublisher:
    """A ``Publisher`` over a list: ``queue`` (waiting, oldest first), ``published`` (every
    message ever published) and ``revoked`` (every id revoked)."""

    def __init__(self) -> None:
        self.queue: list[Message] = []
        self.published: list[Message] = []
        self.revoked: list[str] = []

    def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            wire = replace(
                message, args=json.loads(json.dumps(message.args)), id=message.id or _new_id()
            )
            self.queue.append(wire)
            self.published.append(wire)

    def revoke(self, message_ids: Sequence[str]) -> None:
        self.revoked.extend(message_ids)
        gone = set(message_ids)
        self.queue = [m for m in self.queue if m.id not in gone]

    def check(self) -> None:
        """It always answers."""

    def consumed_queues(self) -> set[str] | None:
        """No workers to ask: it cannot tell."""
        return None

    def workers(self) -> dict[str, dict[str, object]] | None:
        """No workers to ask: it cannot tell."""
        return None

    def queue_depths(self, queues: Iterable[str]) -> dict[str, int]:
        return {queue: sum(m.queue == queue for m in self.queue) for queue in queues}

    def persistence_problem(self) -> str | None:
        """Nothing on disk."""
        return None

    def in_flight(self, queues: Iterable[str]) -> InFlight:
        wanted = set(queues)
        return InFlight({m.id for m in self.queue if m.queue in wanted and m.id}, set())


def _new_id() -> str:
    return uuid.uuid4().hex
