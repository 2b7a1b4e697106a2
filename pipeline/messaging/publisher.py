"""The one door to the broker: a ``Publisher`` publishes messages, revokes them, says
whether the broker answers and what is in flight. A process uses one (``publisher()``):
Celery on Redis (``pipeline.messaging.broker``) unless told otherwise; the fast tests
install the in-memory one (``pipeline.messaging.memory``) through ``use_publisher``, so
they exercise the same calls production makes, not a patched private function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from pipeline.messaging.messages import InFlight, Message


class Publisher(Protocol):
    def publish(self, messages: Sequence[Message]) -> None:
        """Publish these messages, in order; ``Unreachable`` if the broker refuses."""

    def revoke(self, message_ids: Sequence[str]) -> None:
        """Drop these messages from their queues and terminate the worker processes
        running them (a halt); ``Unreachable`` if the broker refuses."""

    def check(self) -> None:
        """Raise ``Unreachable`` unless the broker answers within ``broker_timeout``."""

    def in_flight(self, queues: Iterable[str]) -> InFlight:
        """Every message of ``queues`` still somewhere alive."""

    def consumed_queues(self) -> set[str] | None:
        """The queues some live worker consumes (None: this publisher cannot tell)."""

    def workers(self) -> dict[str, dict[str, object]] | None:
        """Each live worker's queues and pool size, by name (None: cannot tell)."""

    def queue_depths(self, queues: Iterable[str]) -> dict[str, int]:
        """How many messages wait in each of ``queues``."""

    def persistence_problem(self) -> str | None:
        """Why the broker cannot write its data to disk (a full disk: it then refuses new
        messages), or None when it can or does not say."""


_current: Publisher | None = None


def publisher() -> Publisher:
    """This process's publisher: the one installed, else Celery's (made on first use)."""
    global _current
    if _current is None:
        from pipeline.messaging.broker import CeleryPublisher

        _current = CeleryPublisher()
    return _current


def use_publisher(chosen: Publisher | None) -> Publisher | None:
    """Install ``chosen`` as this process's publisher (None: Celery's, at next use);
    returns the one it replaces, to put back."""
    global _current
    previous, _current = _current, chosen
    return previous
