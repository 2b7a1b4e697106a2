"""Workers' signs of life: each worker records a heartbeat once an interval and removes it
when it shuts down; the reconciler raises an alert for a worker whose heartbeat stopped
without a shutdown (killed, its host lost): "worker W silent since T", once per silence,
cleared when it beats again. That tells a worker gone from beat gone or the broker down.
"""

from __future__ import annotations

import logging
from datetime import timedelta

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
