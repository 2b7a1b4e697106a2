"""When beat's monitor last ran, kept on the broker's Redis server.

The monitor stays out of Flower's task list (it runs every few seconds and would bury the
pipeline's own tasks), so its last run is recorded here instead, for the console and
Prometheus (``pipeline_monitor_last_run_age_seconds``): a monitor that stopped running
(beat gone) shows as an age that keeps growing.
"""

from __future__ import annotations

import time

from pipeline.messaging.celery_app import broker_client

#: Redis key holding the Unix time of the monitor's last completed run.
LAST_RUN_KEY = "pipeline:monitor-last-run"


def record_run(at: float | None = None) -> None:
    """Note that the monitor has just finished a run."""
    broker_client().set(LAST_RUN_KEY, repr(time.time() if at is None else at))


def last_run() -> float | None:
    """Unix time of the monitor's last completed run; None if it never ran on this broker,
    or the broker cannot be asked (a page or a scrape shows it unknown rather than failing)."""
    from redis import RedisError

    try:
        found = broker_client().get(LAST_RUN_KEY)
    except RedisError:
        return None
    return float(found) if found else None
