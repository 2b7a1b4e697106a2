"""The broker as the pipeline meets it: Celery on Redis. ``CeleryPublisher`` publishes and
revokes messages, checks that the broker answers, and finds which messages are in flight
(waiting in a queue, or held by a live worker); ``broker_client`` is a plain Redis client
of the same server (beat's reconciler keeps its lock there).

A broker that cannot be reached is ``Unreachable``, named with its URL's password masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pipeline.database import masked, scrubbed
from pipeline.errors import Unreachable
from pipeline.messaging.celery_app import broker_tls, celery_app
from pipeline.messaging.messages import FAN_OUT, InFlight, Message
from pipeline.settings import get_settings

if TYPE_CHECKING:
    from celery.app.control import Inspect
    from redis import Redis

#: Messages a caller publishes itself; more are handed to workers (see ``handed_on``) ...
DIRECT_SEND_LIMIT = 20
#: ... in fan-out messages of at most this many each.
FAN_OUT_SIZE = 200
#: Retries of a publish before the broker counts as unreachable.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}
#: What Redis says of its last writes to disk, each ``ok`` or ``err``.
PERSISTENCE_STATUS = (
    "aof_last_write_status",
    "aof_last_bgrewrite_status",
    "rdb_last_bgsave_status",
)
#: kombu's Redis transport keeps priority N of queue Q in the list "Q\x06\x16N" (N > 0).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_LEVELS = range(1, 10)
#: Seconds to wait for the workers' replies.
INSPECT_TIMEOUT = 1.0


class CeleryPublisher:
    """The ``Publisher`` of a process that talks to the real broker."""

    def publish(self, messages: Sequence[Message]) -> None:
        """Publish over one connection, more than ``DIRECT_SEND_LIMIT`` handed on to the
        workers in fan-out messages (see ``handed_on``); nothing at all for none."""
        if messages:
            publish_now(handed_on(messages))

    def revoke(self, message_ids: Sequence[str]) -> None:
        try:
            celery_app().control.revoke(list(message_ids), terminate=True, signal="SIGTERM")
        except _broker_errors() as exc:
            raise unreachable(exc) from None

    def check(self) -> None:
        check_broker()

    def in_flight(self, queues: Iterable[str]) -> InFlight:
        """Every message of ``queues`` still somewhere alive, the workers asked once
        whatever the number of queues (each question waits ``INSPECT_TIMEOUT`` for the
        slowest worker).

        The queues are read before the workers are asked: a message only moves from a
        queue to a worker, so reading in this order never misses one in transit.
        """
        try:
            queued = set().union(*(self.queued_ids(queue) for queue in queues))
            held, answered = self.held_by_workers()
        except _broker_errors() as exc:
            raise unreachable(exc) from None
        return InFlight(queued | held, answered)

    def consumed_queues(self) -> set[str] | None:
        """The queues the workers that answer within ``INSPECT_TIMEOUT`` consume."""
        try:
            with _inspector() as inspector:
                replies = inspector.active_queues()
        except _broker_errors() as exc:
            raise unreachable(exc) from None
        return {queue["name"] for queues in (replies or {}).values() for queue in queues}

    def workers(self) -> dict[str, dict[str, object]] | None:
        """The queues and pool size of each worker that answers within ``INSPECT_TIMEOUT``,
        asked on a connection of its own (see ``_inspector``)."""
        try:
            with _inspector() as inspector:
                queues, stats = inspector.active_queues() or {}, inspector.stats() or {}
        except _broker_errors() as exc:
            raise unreachable(exc) from None
        return {
            node: {
                "queues": sorted(queue["name"] for queue in queues.get(node, [])),
                "concurrency": stats.get(node, {}).get("pool", {}).get("max-concurrency"),
            }
            for node in sorted(set(queues) | set(stats))
        }

    def persistence_problem(self) -> str | None:
        """What Redis's ``INFO persistence`` says failed last (its append-only file or its
        snapshot not written: with a full disk it answers MISCONF to every write)."""
        try:
            info = broker_client().info("persistence")
        except _broker_errors() as exc:
            raise unreachable(exc) from None
        failed = [f"{key} {info[key]}" for key in PERSISTENCE_STATUS if info.get(key, "ok") != "ok"]
        return ", ".join(failed) or None

    def queue_depths(self, queues: Iterable[str]) -> dict[str, int]:
        """The messages waiting in each queue (its lists of every priority), in one round
        trip."""
        names = list(queues)
        try:
            with broker_client().pipeline(transaction=False) as asking:
                for queue in names:
                    for key in _priority_keys(queue):
                        asking.llen(key)
                lengths = asking.execute()
        except _broker_errors() as exc:
            raise unreachable(exc) from None
        per_queue = len(PRIORITY_LEVELS) + 1
        return {
            queue: sum(lengths[n * per_queue : (n + 1) * per_queue])
            for n, queue in enumerate(names)
        }

    def queued_ids(self, queue: str) -> set[str]:
        """Celery task ids of the messages waiting in ``queue`` on the Redis broker."""
        client = broker_client()
        keys = _priority_keys(queue)
        found = set()
        for key in keys:
            for raw in client.lrange(key, 0, -1):
                try:
                    found.add(json.loads(raw)["headers"]["id"])
                except (ValueError, KeyError, TypeError):
                    continue
        return found

    def held_by_workers(self) -> tuple[set[str], set[str]]:
        """Celery task ids that live workers are running or have reserved, and who
        answered."""
        with _inspector() as inspector:
            asked = (inspector.active() or {}, inspector.reserved() or {})
        found, answered = set(), set()
        for replies in asked:
            for worker, held in replies.items():
                answered.add(worker)
                found.update(message["id"] for message in held)
        return found, answered


@contextmanager
def _inspector() -> Iterator[Inspect]:
    """An inspector of the workers on a connection of its own, closed after: a broadcast's
    replies left on a pooled connection broke the next broadcast read from it (kombu's
    BRPOP reader: in beat's process, the reconciler's lost work then stayed lost)."""
    app = celery_app()
    with app.connection_for_write() as connection:
        yield app.control.inspect(timeout=INSPECT_TIMEOUT, connection=connection)


def _priority_keys(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s messages, one per priority."""
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{level}" for level in PRIORITY_LEVELS)]


def publish_now(messages: Sequence[Message]) -> None:
    """Publish over one connection, as they are, the arguments labelled for Flower (what
    a ``FAN_OUT`` message's worker does with what it carries). A broker that refuses them
    is ``Unreachable``."""
    app = celery_app()
    try:
        with app.producer_or_acquire() as producer:
            for message in messages:
                app.send_task(
                    message.name,
                    args=message.args,
                    argsrepr=message.label,
                    producer=producer,
                    task_id=message.id,
                    queue=message.queue,
                    priority=message.priority,
                    time_limit=message.time_limit,
                    retry=True,
                    retry_policy=PUBLISH_RETRY,
                    # The pipeline's database, not Celery's result backend, is the record.
                    ignore_result=True,
                )
    except _broker_errors() as exc:
        raise unreachable(exc) from None


def handed_on(messages: Sequence[Message]) -> Sequence[Message]:
    """More than ``DIRECT_SEND_LIMIT`` messages are handed to workers in ``FAN_OUT``
    messages of at most ``FAN_OUT_SIZE``, by queue, each published on by the worker that
    takes it.

    Each publish is a broker round trip (a few milliseconds under load): an operator's
    restart of 1,000 tasks returns at once, and several workers share the publishing.
    Should a fan-out message be lost, its tasks wait in their step, or their subtasks
    wait queued, and the reconciler sends their messages again, as for any lost one.
    """
    if len(messages) <= DIRECT_SEND_LIMIT:
        return messages
    by_queue: dict[str, list[Message]] = {}
    for message in messages:
        by_queue.setdefault(message.queue, []).append(message)
    return [
        Message(FAN_OUT, [[m.as_list() for m in group[start : start + FAN_OUT_SIZE]]], queue)
        for queue, group in by_queue.items()
        for start in range(0, len(group), FAN_OUT_SIZE)
    ]


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
        # A pooled connection can be in a bad state of its own (in Flower's process, a
        # health check answered out of turn): a connection of its own asks again.
        try:
            if not broker_client().ping():
                raise unreachable(exc) from None
        except Unreachable:
            raise
        except Exception:
            raise unreachable(exc) from None


def broker_client() -> Redis:
    """A client of the broker's Redis server (the reconciler's lock, the queues' contents),
    every call within ``broker_timeout``."""
    import redis

    settings = get_settings()
    timeout = settings.broker_timeout
    return redis.Redis.from_url(
        settings.broker,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **(broker_tls(settings) or {}),
    )


def _broker_errors() -> tuple[type[Exception], ...]:
    """What kombu and redis raise for a broker that cannot be reached (imported only when
    one was raised: an except clause is evaluated then)."""
    import redis
    from kombu.exceptions import OperationalError

    return (OperationalError, redis.RedisError)


def unreachable(exc: Exception) -> Unreachable:
    broker = get_settings().broker
    said = scrubbed(str(exc), broker)
    if said.startswith("MISCONF"):  # it answers, but refuses every write
        return Unreachable(f"broker at {masked(broker)} cannot write to its disk: {said}")
    return Unreachable(f"broker unreachable at {masked(broker)}: {said}")
