"""The baseline: a bare Celery app with a no-op task, on the benchmark's Redis.

Configured as plainly as Celery allows (JSON, a Redis result backend to await results),
so its figures are what Celery itself costs per message on this machine.
"""

from __future__ import annotations

import os

from celery import Celery

#: Environment variable naming the broker (and result backend) URL.
BROKER_ENV = "BENCH_RAW_BROKER"
QUEUE = "bench-raw"
NOOP = "bench.noop"

app = Celery("bench-raw")
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)


@app.task(name=NOOP)
def noop(*_: object) -> None:
    """Nothing: one message's round trip is the whole cost."""
