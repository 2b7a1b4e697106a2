"""Beat's liveness: the reconciler records a heartbeat at each run, and any process notices
when it stops.

Beat's reconciler is all that recovers lost work (a killed worker's subtasks, a message a
broker lost). When beat dies, or was never started on any host, nothing fails: work just
sits, and no command said why. So each reconciler run records when and where it ran, and the
processes that are always up (the HTTP API, every worker) look at that record once an
interval: one whose reconciler is silent for ``SILENT_INTERVALS`` intervals raises one alert
per silence ("reconciler not running since T"), and ``cluster status``, the API's health
route and the console show the same sentence.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.models import Alert, Heartbeat, utcnow
from pipeline.engine.alerts import ERROR
from pipeline.settings import get_settings

log = logging.getLogger(__name__)
#: The heartbeat's name for beat's reconciler.
RECONCILER = "reconciler"
#: A reconciler silent for this many of its intervals is not running.
SILENT_INTERVALS = 3


@dataclass(frozen=True)
class ReconcilerHealth:
    """When the reconciler last ran and where; ``running`` unless it is silent too long."""

    running: bool
    last_run: datetime | None
    host: str

    @property
    def message(self) -> str:
        if self.last_run is None:
            return "reconciler has not run yet: is beat running?"
        at = self.last_run.isoformat(timespec="seconds")
        if not self.running:
            return (
                f"reconciler not running since {at}: lost work is not recovered; is beat running?"
            )
        return f"reconciler ran at {at} on {self.host}"


def record(session: Session, host: str) -> None:
    """Record, in the caller's transaction, that the reconciler runs now on ``host``."""
    updated = session.execute(
        update(Heartbeat).where(Heartbeat.name == RECONCILER).values(at=utcnow(), host=host)
    )
    if not updated.rowcount:
        session.add(Heartbeat(name=RECONCILER, at=utcnow(), host=host))


def silent_after() -> timedelta:
    return timedelta(seconds=SILENT_INTERVALS * get_settings().reconcile_interval)


def reconciler_health() -> ReconcilerHealth:
    with transaction() as session:
        heartbeat = session.get(Heartbeat, RECONCILER)
        if heartbeat is None or not heartbeat.host:
            return ReconcilerHealth(False, None, "")
        running = heartbeat.at > utcnow() - silent_after()
        return ReconcilerHealth(running, heartbeat.at, heartbeat.host)


def report_silence(watching_since: datetime) -> bool:
    """Raise the alert of a silent reconciler unless one was raised for this silence already
    (by this process or another: the claim on the heartbeat row is one conditional
    update); whether this call raised it.

    A reconciler that never ran has no row: the watcher's own start stands in for its last
    run, so a cluster whose beat was never started is reported too.
    """
    cutoff = utcnow() - silent_after()
    if watching_since > cutoff:
        return False  # not watched long enough to tell
    _claim_never_run(watching_since)
    with transaction() as session:
        claimed = session.execute(
            update(Heartbeat)
            .where(
                Heartbeat.name == RECONCILER,
                Heartbeat.at < cutoff,
                or_(Heartbeat.alerted_at.is_(None), Heartbeat.alerted_at < Heartbeat.at),
            )
            .values(alerted_at=utcnow())
            .returning(Heartbeat.at)
        ).scalar_one_or_none()
        if claimed is None:
            return False
        session.add(Alert(severity=ERROR, message=ReconcilerHealth(False, claimed, "").message))
        return True


def _claim_never_run(watching_since: datetime) -> None:
    """The row of a reconciler that never ran, dated from when this process began watching
    (another process may have made it meanwhile: then theirs stands)."""
    with suppress(IntegrityError), transaction() as session:
        if session.get(Heartbeat, RECONCILER) is None:
            session.add(Heartbeat(name=RECONCILER, at=watching_since, host=""))


class SilenceWatch(threading.Thread):
    """A daemon thread that reports a silent reconciler once an interval (the HTTP API runs
    one; a worker looks on its own timer, ``workers.app.WorkerWatch``).

    Parameters:
      interval: seconds between looks (the reconciler's interval by default).
    """

    def __init__(self, interval: float | None = None) -> None:
        super().__init__(name="reconciler-silence-watch", daemon=True)
        self.interval = interval or get_settings().reconcile_interval
        self.since = utcnow()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            look(self.since)

    def stop(self) -> None:
        self.stopped.set()


def look(watching_since: datetime) -> None:
    """One look, logged rather than raised: a watcher must outlive a database outage."""
    try:
        if report_silence(watching_since):
            log.error("beat's reconciler is silent: alert raised")
    except Exception:
        log.exception("could not check beat's reconciler heartbeat")
