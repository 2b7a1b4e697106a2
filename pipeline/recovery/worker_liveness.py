"""Workers' signs of life: each worker records a heartbeat once an interval and removes it
when it shuts down; the reconciler raises an alert for a worker whose heartbeat stopped
without a shutdown (killed, its host lost): "worker W silent since T", once per silence,
cleared when it beats again. That tells a worker gone from beat gone or the broker down.

A worker also hears its pool: a pool process gone (killed, out of memory) is replaced
by Celery with only a log line, so the worker says it in one alert, counting, until an
operator acknowledges it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from pipeline.database import transaction
from pipeline.domain.models import Heartbeat, utcnow
from pipeline.engine import alerts
from pipeline.recovery.heartbeat import SILENT_INTERVALS
from pipeline.settings import Settings

log = logging.getLogger(__name__)
PREFIX = "worker:"


def beat(node: str, host: str) -> None:
    """Record that worker ``node`` (``name@host``) is alive; logged, never raised."""
    name = PREFIX + node
    try:
        with transaction() as session:
            updated = session.execute(
                update(Heartbeat).where(Heartbeat.name == name).values(at=utcnow(), host=host)
            )
            if not updated.rowcount:
                session.add(Heartbeat(name=name, at=utcnow(), host=host))
    except Exception:
        log.exception("could not record worker %s's heartbeat", node)


def leave(node: str) -> None:
    """Worker ``node`` shuts down: its silence from now on is no alert."""
    try:
        with transaction() as session:
            session.execute(delete(Heartbeat).where(Heartbeat.name == PREFIX + node))
    except Exception:
        log.exception("could not record worker %s's shutdown", node)


@dataclass
class PoolWatch:
    """The pool processes of one worker that died, as Celery's pool reports them."""

    node: str
    died: int = 0
    first: datetime | None = None

    def died_now(self, pid: int, how: str) -> None:
        """A pool process died (``how``: its exit status): said in the worker's alert."""
        self.died += 1
        self.first = self.first or utcnow()
        message = (
            f"worker {self.node}: {self.died} pool process(es) died since"
            f" {self.first:%Y-%m-%d %H:%M:%S} UTC (last pid {pid}, {how}); Celery started"
            " others, and the reconciler dispatches again what they ran"
        )
        alerts.tell(f"pool:{self.node}", alerts.WARNING, message)


class PoolDeaths(logging.Handler):
    """Hears the prefork pool's own line for a process that exited unasked ("Process
    'ForkPoolWorker-1' pid:17744 exited with 'signal 9 (SIGKILL)'", logged by billiard on
    the ``multiprocessing`` logger with its name, pid and status as arguments): every
    death, even of a process that lived a moment, where looking at the pool's pids now
    and then missed those."""

    #: billiard's message for a pool process that exited unasked.
    EXITED = "Process %r pid:%r exited with %r"

    def __init__(self, watch: PoolWatch) -> None:
        super().__init__(logging.ERROR)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.EXITED and isinstance(record.args, tuple) and len(record.args) == 3:
            _, pid, how = record.args
            self.watch.died_now(int(pid), str(how))


def silent_after(settings: Settings) -> timedelta:
    return timedelta(
        seconds=max(settings.stale_after, SILENT_INTERVALS * settings.reconcile_interval)
    )


def watch(settings: Settings) -> list[str]:
    """Raise the alert of each worker silent since ``silent_after`` (once per silence) and
    clear those of workers that beat again; the silent workers' names."""
    cutoff = utcnow() - silent_after(settings)
    silent = []
    with transaction() as session:
        rows = session.scalars(select(Heartbeat).where(Heartbeat.name.startswith(PREFIX)))
        for row in rows:
            node, cause = row.name.removeprefix(PREFIX), row.name
            if row.at < cutoff:
                silent.append(node)
                if row.alerted_at is None:
                    row.alerted_at = utcnow()
                    alerts.raise_once(
                        session,
                        cause,
                        alerts.ERROR,
                        f"worker {node} silent since {row.at:%Y-%m-%d %H:%M:%S} UTC: it stopped"
                        " without shutting down (killed, or its host is down); its subtasks are"
                        " dispatched again once their leases end",
                    )
            elif row.alerted_at is not None:
                row.alerted_at = None
                alerts.clear(session, cause)
    return silent
