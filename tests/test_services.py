"""Alerts that name the real cause: beat's reconciler, finding the broker or the database
out of reach, raises an alert of that cause (once while it lasts, cleared when it ends),
not a silence blamed on beat."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import Unreachable
from pipeline.messaging.broker import CeleryPublisher
from pipeline.messaging.memory import MemoryPublisher
from pipeline.messaging.publisher import use_publisher
from pipeline.operations import queries
from pipeline.recovery import heartbeat
from pipeline.recovery.services import ServiceWatch
from tests.support import free_port, point_here

pytestmark = pytest.mark.usefixtures("home")


def service_alerts() -> list[tuple[str, str, bool]]:
    return [
        (a["severity"], a["message"], a["cleared_at"] is not None)
        for a in queries.list_alerts()
        if "unreachable" in a["message"]
    ]


def test_a_broker_out_of_reach_is_its_own_alert_raised_once_and_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIPELINE_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("PIPELINE_BROKER_TIMEOUT", "1")
    point_here()
    runs: list[int] = []
    watch = ServiceWatch(lambda: runs.append(1))
    previous = use_publisher(CeleryPublisher())
    try:
        for _ in range(2):
            with pytest.raises(Unreachable):
                watch.run_once()
    finally:
        use_publisher(previous)
    [(severity, message, cleared)] = service_alerts()
    assert severity == "error" and message.startswith("broker unreachable at redis://127.0.0.1:")
    assert message.endswith(": nothing is sent") and not cleared
    assert heartbeat.reconciler_health().running, "beat is not blamed"
    assert runs == []

    use_publisher(MemoryPublisher())
    try:
        watch.run_once()
    finally:
        use_publisher(previous)
    assert [cleared for *_, cleared in service_alerts()] == [True]
    assert runs == [1]


def test_a_database_out_of_reach_is_alerted_once_it_is_back(home: Path) -> None:
    down = {"yes": True}

    def work() -> None:
        if down["yes"]:
            raise Unreachable("database unreachable at sqlite:///x: disk I/O error")

    watch = ServiceWatch(work)
    previous = use_publisher(MemoryPublisher())
    try:
        watch.run_once()
        watch.run_once()
        assert service_alerts() == [], "nowhere to write it while it is down"
        down["yes"] = False
        watch.run_once()
    finally:
        use_publisher(previous)
    [(severity, message, cleared)] = service_alerts()
    assert severity == "error" and cleared
    assert message.startswith("database unreachable at sqlite:///x: disk I/O error from ")
    assert message.endswith("nothing was recovered meanwhile")
