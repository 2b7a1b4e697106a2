"""Beat's liveness: a silent reconciler is reported once per silence, by whichever process
looks first, and every interface says since when. Beat really dying is the chaos tests'
(``test_lost_services.py``); here the heartbeat's clock is moved instead."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from pipeline.database import transaction
from pipeline.domain.models import Heartbeat, utcnow
from pipeline.operations import facade, queries
from pipeline.recovery import heartbeat
from tests.support import race

pytestmark = pytest.mark.usefixtures("home")

#: Longer than the silence after which a reconciler counts as not running.
LONG_AGO = timedelta(hours=1)


def reconciler_ran(at: datetime, host: str = "beat-host") -> None:
    with transaction() as session:
        heartbeat.record(session, host)
        session.execute(update(Heartbeat).values(at=at))


def silence_alerts() -> list[str]:
    return [
        a["message"] for a in queries.list_alerts() if a["message"].startswith("reconciler not")
    ]


def test_a_reconciler_that_ran_lately_is_running() -> None:
    reconciler_ran(utcnow())
    health = facade.reconciler_health()
    assert health["running"] and health["host"] == "beat-host"
    assert health["message"].startswith("reconciler ran at ")
    assert not heartbeat.report_silence(watching_since=utcnow() - LONG_AGO)
    assert silence_alerts() == []


def test_a_silent_reconciler_is_reported_once_per_silence() -> None:
    stopped = utcnow() - LONG_AGO
    reconciler_ran(stopped)
    since = stopped.isoformat(timespec="seconds")
    expected = f"reconciler not running since {since}: lost work is not recovered; is beat running?"

    assert heartbeat.report_silence(watching_since=stopped)
    assert not heartbeat.report_silence(watching_since=stopped), "one alert per silence"
    assert silence_alerts() == [expected]
    assert facade.reconciler_health() == {
        "running": False,
        "last_run": since,
        "host": "beat-host",
        "message": expected,
    }

    # The alert was raised minutes after beat stopped; beat came back later, and stopped
    # again: a new silence, a new alert.
    with transaction() as session:
        session.execute(update(Heartbeat).values(alerted_at=stopped + timedelta(minutes=5)))
    reconciler_ran(stopped + timedelta(minutes=10))
    assert heartbeat.report_silence(watching_since=stopped)
    assert len(silence_alerts()) == 2


def test_a_reconciler_that_never_ran_is_reported_once_watched_long_enough() -> None:
    assert facade.reconciler_health()["message"] == "reconciler has not run yet: is beat running?"
    assert not heartbeat.report_silence(watching_since=utcnow()), "too soon to tell"
    watching_since = utcnow() - LONG_AGO
    assert heartbeat.report_silence(watching_since=watching_since)
    assert silence_alerts() == [
        f"reconciler not running since {watching_since.isoformat(timespec='seconds')}:"
        " lost work is not recovered; is beat running?"
    ]


def test_many_processes_looking_at_once_raise_one_alert() -> None:
    """The API and every worker look once an interval: the first to look raises it."""
    reconciler_ran(utcnow() - LONG_AGO)
    race(lambda: heartbeat.report_silence(watching_since=utcnow() - LONG_AGO))
    assert len(silence_alerts()) == 1
