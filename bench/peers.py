"""The peer figure a is held against beside raw Celery: Dramatiq, the fastest Python task
queue measured on these machines, with a no-op actor on the benchmark's Redis.

Set up as plainly as Dramatiq allows, like ``bench/raw.py`` for Celery: its Redis broker,
the Results middleware (a Redis result backend, to await every message), Dramatiq's
defaults otherwise. ``harness.dramatiq_worker`` runs it; ``figures.dramatiq_throughput``
sends the messages and awaits their results.

Dramatiq is the ``bench`` extra (``pip install -e '.[bench]'``; ``make bench`` installs
it). Without it this module still imports, and ``python -m bench`` measures figure a
without its Dramatiq ratio, saying so.
"""

from __future__ import annotations

import os

try:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend
except ImportError:  # the bench extra is not installed
    dramatiq = None

#: Environment variable naming the Redis URL (broker and result backend) of the worker.
BROKER_ENV = "BENCH_DRAMATIQ_BROKER"
QUEUE = "bench-dramatiq"


def available() -> bool:
    """Whether Dramatiq is installed (the ``bench`` extra)."""
    return dramatiq is not None


def setup(url: str | None = None) -> dramatiq.Actor:
    """The broker and result backend on ``url`` (else ``$BENCH_DRAMATIQ_BROKER``), and the
    no-op actor declared on them. The ``dramatiq`` command calls it in each of its
    processes (``dramatiq bench.peers:setup``), the benchmark in its own."""
    url = url or os.environ[BROKER_ENV]
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    dramatiq.set_broker(broker)
    return dramatiq.actor(noop, actor_name="noop", queue_name=QUEUE, store_results=True)


def noop() -> None:
    """Nothing: one message's round trip is the whole cost."""
