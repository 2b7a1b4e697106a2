"""What beat's reconciler tells about the services it depends on, each as an alert of its
own cause rather than a silence blamed on beat: the broker unreachable (raised once while
it lasts, cleared when it answers again) and the database unreachable (its alert can only
be written once the database is back: it then says from when to when).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from pipeline.database import masked, transaction
from pipeline.domain.models import utcnow
from pipeline.engine import alerts
from pipeline.engine.task_state import HOST
from pipeline.errors import Unreachable
from pipeline.messaging.publisher import publisher
from pipeline.recovery import heartbeat
from pipeline.settings import get_settings

log = logging.getLogger(__name__)

BROKER, DATABASE = "service:broker", "service:database"
PERSISTENCE = "service:broker-persistence"


class ServiceWatch:
    """Runs ``work`` (a reconciler run) once per ``run_once``, after asking the broker;
    an unreachable broker or database becomes its alert (module docstring)."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.database_down: tuple[datetime, str] | None = None

    def run_once(self) -> None:
        try:
            self._broker()
            self.work()
        except Unreachable as exc:
            if str(exc).startswith("database unreachable"):
                if self.database_down is None:
                    self.database_down = (utcnow(), str(exc))
                log.error("reconciler: %s", exc)
                return
            raise
        self._database_back()

    def _broker(self) -> None:
        try:
            publisher().check()
        except Unreachable as exc:
            with transaction() as session:
                # Beat is alive: its silence is the broker's, and the alert says so.
                heartbeat.record(session, HOST)
                if alerts.raise_once(session, BROKER, alerts.ERROR, f"{exc}: nothing is sent"):
                    log.error("reconciler: %s", exc)
            raise
        problem = publisher().persistence_problem()
        with transaction() as session:
            alerts.clear(session, BROKER)
            if problem is None:
                alerts.clear(session, PERSISTENCE)
            elif alerts.raise_once(
                session,
                PERSISTENCE,
                alerts.ERROR,
                f"broker at {masked(get_settings().broker)} cannot write to its disk ({problem}):"
                " it refuses new messages until it can; free space where it keeps its data",
            ):
                log.error("reconciler: the broker cannot write to its disk (%s)", problem)

    def _database_back(self) -> None:
        if self.database_down is None:
            return
        since, message = self.database_down
        self.database_down = None
        back = utcnow()
        with transaction() as session:
            alerts.raise_once(
                session,
                DATABASE,
                alerts.ERROR,
                f"{message} from {since:%Y-%m-%d %H:%M:%S} to {back:%H:%M:%S} UTC"
                f" ({(back - since).total_seconds():.0f} s): nothing was recovered meanwhile",
            )
            alerts.clear(session, DATABASE)
